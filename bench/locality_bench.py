#!/usr/bin/env python3
"""Nearest first, measured (issue 24): how many first answers cross zones, with and without `--locality zone`.

Three network namespaces, each joined to this one by a veth pair in its own subnet (10.233.K.0/24), each subnet a
zone (`--client-zone`); `web` has three instances in each zone. From each namespace, QUERIES A queries over one
socket; the zone of each answer's first address is read from the address. Reported per mode:
  - the share of first answers in another zone than the client's;
  - the clients' median and p99 round trip;
  - the busiest instance's share of first answers (even spread: 1/9 = 11.1%);
and the same with zone-a down to one healthy instance (the overload guard: its clients spread over every zone,
instead of all landing on that one instance).
Needs root (ip netns) and a release build. Every loop is bounded in count and time; all traffic stays in the
namespaces this script makes and removes.
"""
import json, os, socket, statistics, struct, subprocess, sys, tempfile, time
from datetime import date

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIGNPOST = os.path.join(ROOT, ".build", "release", "signpost")
QUERIES = int(os.environ.get("BENCH_QUERIES", "3000"))
ZONES = ["zone-a", "zone-b", "zone-c"]
TAG = str(os.getpid() % 100000)

CLIENT = r'''
import json, socket, struct, sys, time
server, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
q = b"".join(bytes([len(l)]) + l.encode() for l in "web.service.consul".split(".")) + b"\0" + struct.pack(">HH", 1, 1)
firsts, rtts = [], []
for i in range(count):
    t0 = time.perf_counter()
    s.sendto(struct.pack(">HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + q, (server, port))
    while True:
        data = s.recv(4096)
        if struct.unpack(">H", data[:2])[0] == i & 0xFFFF: break
    rtts.append((time.perf_counter() - t0) * 1000)
    p = 12 + len(q) + 2
    firsts.append(socket.inet_ntoa(data[p + 10:p + 14]) if struct.unpack(">H", data[6:8])[0] else None)
print(json.dumps({"firsts": firsts, "rtts": rtts}))
'''


def sh(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def namespaces():
    names = [f"sp-lb-{TAG}-{k}" for k in (1, 2, 3)]
    for k, ns in enumerate(names, 1):
        link = f"splb{TAG}x{k}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", link, "type", "veth", "peer", "name", link + "p")
        sh("ip", "link", "set", link + "p", "netns", ns)
        sh("ip", "addr", "add", f"10.233.{k}.1/24", "dev", link)
        sh("ip", "link", "set", link, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"10.233.{k}.2/24", "dev", link + "p")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", link + "p", "up")
    return names


def cleanup(names):
    for k in (1, 2, 3):
        subprocess.run(["ip", "link", "del", f"splb{TAG}x{k}"], stderr=subprocess.DEVNULL)
    for ns in names:
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)


def catalog(work, healthy):
    d = os.path.join(work, "catalog")
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    for z, zone in enumerate(ZONES):
        for k in (1, 2, 3):
            node = f"{zone}-{k}"
            status = "passing" if healthy(zone, k) else "critical"
            json.dump({"Node": node, "Address": f"192.0.2.{10 * (z + 1) + k}", "NodeMeta": {"zone": zone},
                       "Service": {"ID": f"web-{node}", "Service": "web", "Port": 80},
                       "Checks": [{"CheckID": "c", "Status": status, "ServiceID": f"web-{node}"}]},
                      open(os.path.join(d, f"{node}.json"), "w"))
    return d


def zone_of(address):
    return ZONES[int(address.split(".")[-1]) // 10 - 1]


def run(work, names, mode, healthy):
    port = 5300 + os.getpid() % 1000
    cmd = [SIGNPOST, "serve", "--listen", f"127.0.0.1:0", "--catalog", catalog(work, healthy), "--no-forward", "--log-level", "error",
           "--locality", mode] + sum((["--listen", f"10.233.{k}.1:{port}", "--client-zone", f"10.233.{k}.0/24={ZONES[k - 1]}"]
                                      for k in (1, 2, 3)), [])
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        script = os.path.join(work, "client.py")
        open(script, "w").write(CLIENT)
        crossing, rtts, counts, total = 0, [], {}, 0
        for k, ns in enumerate(names):
            out = subprocess.run(["ip", "netns", "exec", ns, "timeout", "120", sys.executable, script, f"10.233.{k + 1}.1", str(port), str(QUERIES)],
                                 capture_output=True, text=True, check=True).stdout
            r = json.loads(out)
            rtts += r["rtts"]
            for first in r["firsts"]:
                total += 1
                counts[first] = counts.get(first, 0) + 1
                crossing += zone_of(first) != ZONES[k]
        rtts.sort()
        return {"mode": mode, "crossing": crossing / total, "p50": statistics.median(rtts), "p99": rtts[int(len(rtts) * 0.99)],
                "busiest": max(counts.values()) / total}
    finally:
        server.terminate()
        server.wait(10)


def main():
    work = tempfile.mkdtemp(prefix="signpost-locality-")
    names = []
    try:
        names = namespaces()
        rows = []
        for label, healthy in [("every instance healthy", lambda z, k: True),
                               ("zone-a down to one instance", lambda z, k: z != "zone-a" or k == 1)]:
            for mode in ("off", "zone"):
                r = run(work, names, mode, healthy)
                r["case"] = label
                rows.append(r)
                print(json.dumps(r), flush=True)
        lines = [f"# Nearest first, {date.today()}", "",
                 f"`python3 bench/locality_bench.py` (root): three network namespaces, one zone each, `web` with three instances per",
                 f"zone; {QUERIES} A queries from each namespace, one at a time. Crossing: first answers in another zone than the",
                 "client's. Busiest: the most-chosen instance's share of first answers (an even spread over nine is 11.1%).", "",
                 "| case | --locality | first answers crossing zones | median | p99 | busiest instance |", "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['case']} | {r['mode']} | {100 * r['crossing']:.1f}% | {r['p50']:.3f} ms | {r['p99']:.3f} ms | {100 * r['busiest']:.1f}% |")
        out = os.path.join(ROOT, "bench", "results", f"locality-{date.today()}.md")
        open(out, "w").write("\n".join(lines) + "\n")
        print("\n".join(lines))
        print(f"\nwritten to {os.path.relpath(out, ROOT)}")
    finally:
        cleanup(names)


if __name__ == "__main__":
    main()
