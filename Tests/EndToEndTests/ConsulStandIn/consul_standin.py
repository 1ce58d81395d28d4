#!/usr/bin/env python3
"""A stand-in for a Consul agent's HTTP API, for Signpost's tests (Consul itself is not installable here).

It follows Consul's documented behaviour for what Signpost uses:
  PUT  /v1/catalog/register      body as in Consul's docs (Node, Address, Datacenter, NodeMeta, Service, Check(s))
  PUT  /v1/catalog/deregister    {"Node": ..., "ServiceID": ...} or {"Node": ...}
  GET  /v1/catalog/services      {"name": ["tag", ...]}
  GET  /v1/health/service/<name> [{"Node": {...}, "Service": {...}, "Checks": [...]}]
Blocking queries: with ?index=N (N > 0) the request waits until the index exceeds N or ?wait= passes
(default 5m, max 10m, plus up to wait/16 of jitter, as Consul adds), then answers with X-Consul-Index.
ACLs: when started with --token, requests without a matching X-Consul-Token (or ?token=) get 403.

Test controls, not part of Consul: POST /_test/index {"index": N} forces the index (to make it go
backwards or to 0); POST /_test/noblock {"on": true} makes blocking queries return at once with the
same index (a misbehaving server, to exercise rate limiting); GET /_test/requests lists the requests seen; POST /_test/reset-requests clears them.
"""
import argparse
import json
import random
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

lock = threading.Condition()
state = {"index": 10, "nodes": {}, "services": {}, "checks": {}, "noblock": False}
requests_seen = []
TOKEN = None
DC = "dc1"


def bump():
    state["index"] += 1
    lock.notify_all()


def parse_wait(text):
    if not text:
        return 300.0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", text)
    if not m:
        return 300.0
    value = float(m.group(1))
    unit = m.group(2) or "s"
    return min({"ms": value / 1000, "s": value, "m": value * 60}[unit], 600.0)


def catalog_services():
    out = {}
    for svc in state["services"].values():
        tags = out.setdefault(svc["Service"], [])
        for t in svc.get("Tags") or []:
            if t not in tags:
                tags.append(t)
    return out


def health_service(name):
    out = []
    for (node_name, sid), svc in sorted(state["services"].items()):
        if svc["Service"] != name:
            continue
        node = state["nodes"][node_name]
        checks = [c for (n, _), c in sorted(state["checks"].items())
                  if n == node_name and c["ServiceID"] in ("", sid)]
        out.append({
            "Node": {"ID": "", "Node": node_name, "Address": node["Address"], "Datacenter": node["Datacenter"],
                     "TaggedAddresses": {"lan": node["Address"], "wan": node["Address"]},
                     "Meta": node.get("Meta") or {}, "CreateIndex": node["CreateIndex"], "ModifyIndex": node["ModifyIndex"]},
            "Service": {"ID": sid, "Service": svc["Service"], "Tags": svc.get("Tags") or [], "Address": svc.get("Address", ""),
                        "Meta": svc.get("Meta") or {}, "Port": svc.get("Port", 0),
                        "Weights": svc.get("Weights") or {"Passing": 1, "Warning": 1},
                        "EnableTagOverride": False, "CreateIndex": svc["CreateIndex"], "ModifyIndex": svc["ModifyIndex"]},
            "Checks": checks,
        })
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, code, body, index=None):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if index is not None:
            self.send_header("X-Consul-Index", str(index))
            self.send_header("X-Consul-KnownLeader", "true")
            self.send_header("X-Consul-LastContact", "0")
        self.end_headers()
        self.wfile.write(data)

    def authorised(self, query):
        if TOKEN is None:
            return True
        given = self.headers.get("X-Consul-Token") or (query.get("token") or [None])[0]
        return given == TOKEN

    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        with lock:
            requests_seen.append({"path": url.path, "query": {k: v[0] for k, v in query.items()},
                                  "token": self.headers.get("X-Consul-Token"), "time": time.time()})
        if url.path == "/_test/requests":
            with lock:
                return self.reply(200, requests_seen)
        if not self.authorised(query):
            return self.reply(403, "ACL not found")
        if url.path == "/v1/catalog/services":
            make = catalog_services
        elif url.path.startswith("/v1/health/service/"):
            name = url.path[len("/v1/health/service/"):]
            make = lambda: health_service(name)
        else:
            return self.reply(404, "not found")
        if "dc" in query and query["dc"][0] != DC:
            return self.reply(500, "No path to datacenter")
        wanted = int(query.get("index", ["0"])[0] or 0)
        wait = parse_wait(query.get("wait", [""])[0])
        deadline = time.time() + wait + random.uniform(0, wait / 16)
        with lock:
            if wanted > 0:
                while not state["noblock"] and state["index"] <= wanted and time.time() < deadline:
                    lock.wait(timeout=max(0.0, deadline - time.time()))
            body, index = make(), state["index"]
        self.reply(200, body, index)

    def do_PUT(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if not self.authorised(query):
            return self.reply(403, "ACL not found")
        with lock:
            if url.path == "/v1/catalog/register":
                node = body["Node"]
                old = state["nodes"].get(node, {})
                state["nodes"][node] = {"Address": body["Address"], "Datacenter": body.get("Datacenter") or DC,
                                        "Meta": body.get("NodeMeta") or {}, "CreateIndex": old.get("CreateIndex", state["index"] + 1),
                                        "ModifyIndex": state["index"] + 1}
                if body.get("Service"):
                    svc = dict(body["Service"])
                    sid = svc.get("ID") or svc["Service"]
                    svc["CreateIndex"] = state["services"].get((node, sid), {}).get("CreateIndex", state["index"] + 1)
                    svc["ModifyIndex"] = state["index"] + 1
                    state["services"][(node, sid)] = svc
                checks = body.get("Checks") or ([body["Check"]] if body.get("Check") else [])
                for c in checks:
                    cid = c.get("CheckID") or c.get("Name")
                    state["checks"][(node, cid)] = {"Node": node, "CheckID": cid, "Name": c.get("Name", cid),
                                                    "Status": c.get("Status", "critical"), "Notes": "", "Output": "",
                                                    "ServiceID": c.get("ServiceID", ""), "ServiceName": "",
                                                    "ModifyIndex": state["index"] + 1}
                bump()
                return self.reply(200, True)
            if url.path == "/v1/catalog/deregister":
                node = body["Node"]
                if body.get("ServiceID"):
                    state["services"].pop((node, body["ServiceID"]), None)
                    for key in [k for k, c in state["checks"].items() if k[0] == node and c["ServiceID"] == body["ServiceID"]]:
                        del state["checks"][key]
                elif body.get("CheckID"):
                    state["checks"].pop((node, body["CheckID"]), None)
                else:
                    state["nodes"].pop(node, None)
                    for key in [k for k in state["services"] if k[0] == node]:
                        del state["services"][key]
                    for key in [k for k in state["checks"] if k[0] == node]:
                        del state["checks"][key]
                bump()
                return self.reply(200, True)
        self.reply(404, "not found")

    def do_POST(self):
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        with lock:
            if url.path == "/_test/index":
                state["index"] = int(body["index"])
                lock.notify_all()
                return self.reply(200, True)
            if url.path == "/_test/noblock":
                state["noblock"] = bool(body["on"])
                lock.notify_all()
                return self.reply(200, True)
            if url.path == "/_test/reset-requests":
                requests_seen.clear()
                return self.reply(200, True)
        self.reply(404, "not found")


def main():
    global TOKEN, DC
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token")
    ap.add_argument("--dc", default="dc1")
    args = ap.parse_args()
    TOKEN, DC = args.token, args.dc
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
