#!/usr/bin/env python3
"""A deliberately bad upstream for Signpost's forwarding tests, on 127.0.0.1 only.

--mode mismatch:  answers every query three times: with a wrong ID, then with the right ID but another
                  question, then correctly (A 192.0.2.99). Only the last may be accepted (RFC 5452).
--mode blackhole: reads queries and never answers, printing "query NAME" for each one it gets.
--mode hold:      prints "query NAME" for each query it gets and holds the answers (A 192.0.2.99) until a
                  datagram "release" arrives; then sends them, and answers every later query at once. The
                  test decides when the answer comes, instead of a delay it hopes is long enough.
--mode tcp:       answers every UDP query with TC set and no records; over TCP (same port) answers correctly,
                  any number of queries per connection, printing "connection" for each one accepted.
"""
import argparse, socket, struct, sys, threading, time

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, default=0)
ap.add_argument("--mode", choices=["mismatch", "blackhole", "hold", "tcp"], required=True)
args = ap.parse_args()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", args.port))
PORT = s.getsockname()[1]


def answer_for(q):
    qid = struct.unpack(">H", q[:2])[0]
    end = 12
    while q[end] != 0:
        end += q[end] + 1
    end += 5
    rr = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 99])
    return struct.pack(">HHHHHH", qid, 0x8180, 1, 1, 0, 0) + q[12:end] + rr


def serve_tcp():
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("127.0.0.1", PORT))
    t.listen(16)
    while True:
        conn, _ = t.accept()
        print("connection", flush=True)
        def handle(c):
            buf = b""
            while True:
                data = c.recv(4096)
                if not data:
                    return
                buf += data
                while len(buf) >= 2 and len(buf) >= 2 + struct.unpack(">H", buf[:2])[0]:
                    n = struct.unpack(">H", buf[:2])[0]
                    q, buf = buf[2:2 + n], buf[2 + n:]
                    r = answer_for(q)
                    c.sendall(struct.pack(">H", len(r)) + r)
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if args.mode == "tcp":
    threading.Thread(target=serve_tcp, daemon=True).start()
print(f"listening on 127.0.0.1:{PORT}", flush=True)


def question_end(q):
    i = 12
    while q[i] != 0:
        i += q[i] + 1
    return i + 5


def qname(q):
    labels, i = [], 12
    while i < len(q) and q[i] != 0:
        labels.append(q[i + 1:i + 1 + q[i]].decode("ascii", "replace"))
        i += q[i] + 1
    return ".".join(labels) + "."


held = []  # (reply, address) waiting for "release" in hold mode; None once released
while True:
    q, addr = s.recvfrom(4096)
    if args.mode == "hold" and q == b"release":
        for r, a in held or []:
            s.sendto(r, a)
        held = None
        print("released", flush=True)
        continue
    if len(q) < 12:
        continue
    if args.mode == "blackhole":
        print("query", qname(q), flush=True)
        continue
    qid = struct.unpack(">H", q[:2])[0]
    end = question_end(q)
    question = q[12:end]
    answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 99])
    def reply(rid, qsec):
        return struct.pack(">HHHHHH", rid, 0x8180, 1, 1, 0, 0) + qsec + answer
    if args.mode == "tcp":
        end = question_end(q)
        s.sendto(struct.pack(">HHHHHH", qid, 0x8380, 1, 0, 0, 0) + q[12:end], addr)
        continue
    if args.mode == "hold":
        print("query", qname(q), flush=True)
        if held is None:
            s.sendto(reply(qid, question), addr)
        else:
            held.append((reply(qid, question), addr))
        continue
    other = b"\x05other" + question[question.index(0) - 0:][:0] + question[1 + question[0]:]
    s.sendto(reply(qid ^ 0x5A5A, question), addr)
    s.sendto(reply(qid, other), addr)
    s.sendto(reply(qid, question), addr)
