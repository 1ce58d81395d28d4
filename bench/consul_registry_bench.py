#!/usr/bin/env python3
"""Consul registry benchmark (issue #16): the watcher against the Consul stand-in, with Consul's default cap of 200
concurrent connections per client (past it, a 429).

For each size (services x instances), in one run:
  1. start the stand-in (Tests/EndToEndTests/ConsulStandIn) with the catalog loaded in bulk, and a release
     `signpost serve --registry consul:…` on free loopback ports; time until Signpost serves the last service;
  2. record Signpost's RSS;
  3. 200 check changes, one at a time (a random instance flips passing <-> critical), each timed from the write to
     the first DNS answer that shows it; report p50, p99 and max;
  4. 200 more changes without querying, then the CPU Signpost spent (all threads, less the same time idle) / 200;
  5. the most connections the stand-in saw from Signpost at once, and how many it refused with 429.
Every loop is bounded in count and time, and all traffic stays on 127.0.0.1.
"""
import json, os, random, re, socket, subprocess, sys, tempfile, time, urllib.request
from datetime import date
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, cpu_ns
from registry_bench import dns_query, pct, rss_mb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIGNPOST = os.path.join(ROOT, ".build", "release", "signpost")
STANDIN = os.path.join(ROOT, "Tests", "EndToEndTests", "ConsulStandIn", "consul_standin.py")


def call(url, method="POST", body=None):
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def address(s, j):
    return f"10.{s // 250}.{s % 250}.{j + 1}"


def run(services, instances, work):
    log = open(os.path.join(work, f"standin-{services}.log"), "w+")
    standin = subprocess.Popen([sys.executable, STANDIN, "--port", "0", "--max-conns", "200"], stdout=log, stderr=log)
    signpost = None
    try:
        port = None
        for _ in range(200):
            log.seek(0)
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read())
            if m:
                port = int(m.group(1)); break
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        call(base + "/_test/bulk", body={"services": services, "instances": instances})
        dport = free_port()
        t0 = time.time()
        signpost = subprocess.Popen([SIGNPOST, "serve", "--listen", f"127.0.0.1:{dport}", "--catalog", os.path.join(work, "empty"),
                                     "--registry", f"consul:{base}", "--log-level", "warning"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sock.settimeout(0.05)
        want = socket.inet_aton(address(services - 1, instances - 1))
        qid = 1
        while time.time() - t0 < 120:
            try:
                qid = (qid + 1) & 0xFFFF
                if want in dns_query(sock, dport, f"svc{services - 1}.service.consul", qid):
                    break
            except (socket.timeout, ConnectionRefusedError):
                pass
            time.sleep(0.01)
        load_s = time.time() - t0
        sock.settimeout(2)
        time.sleep(1)
        rss = rss_mb(signpost.pid)

        rnd = random.Random(16)
        critical = set()

        def flip():
            s, j = rnd.randrange(services), rnd.randrange(instances)
            status = "passing" if (s, j) in critical else "critical"
            (critical.discard if status == "passing" else critical.add)((s, j))
            call(base + "/_test/set-status", body={"node": f"bulk-{s}-{j}", "check": f"service:svc{s}-{j}", "status": status})
            return s, j, status

        latencies = []
        for _ in range(200):
            t1 = time.perf_counter()
            s, j, status = flip()
            needle = socket.inet_aton(address(s, j))
            nonlocal_qid = [qid]
            while time.perf_counter() - t1 < 3:
                nonlocal_qid[0] = (nonlocal_qid[0] + 1) & 0xFFFF
                present = needle in dns_query(sock, dport, f"svc{s}.service.consul", nonlocal_qid[0])
                if present == (status == "passing"):
                    break
            qid = nonlocal_qid[0]
            latencies.append((time.perf_counter() - t1) * 1000)

        idle0 = cpu_ns(signpost.pid); time.sleep(2); idle = (cpu_ns(signpost.pid) - idle0) / 2
        c0 = cpu_ns(signpost.pid); t2 = time.time()
        for _ in range(200):
            flip()
        time.sleep(2)
        spent = cpu_ns(signpost.pid) - c0 - idle * (time.time() - t2)
        stats = call(base + "/_test/stats", method="GET")
        return {"services": services, "instances": services * instances, "load_s": load_s, "rss_mb": rss,
                "p50": pct(latencies, 50), "p99": pct(latencies, 99), "max": max(latencies),
                "cpu_us_per_update": max(spent, 0) / 200 / 1000, "peak_connections": stats["peak"], "rejected": stats["rejected"]}
    finally:
        for p in (signpost, standin):
            if p:
                p.terminate()
                try: p.wait(10)
                except subprocess.TimeoutExpired: p.kill()


def main():
    sizes = [(2000, 5)]
    if len(sys.argv) > 1:
        sizes = [tuple(int(x) for x in a.split("x")) for a in sys.argv[1:]]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        os.makedirs(os.path.join(work, "empty"))
        for s, i in sizes:
            r = run(s, i, work)
            rows.append(r)
            print(json.dumps(r), flush=True)
    lines = [f"# Consul registry benchmark, {date.today()}", "",
             f"`make bench-registry` on {os.cpu_count()} cores, against the Consul stand-in with Consul's default cap of 200",
             "connections per client. A change is a check flipping between passing and critical; latency runs from the",
             "write to the first DNS answer that shows it. The stand-in is Python, so its own time is in these figures.", "",
             "| services × instances | instances | load until served | RSS | change → answer p50 | p99 | max | CPU per update | connections at peak | 429s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['services']} × {r['instances'] // r['services']} | {r['instances']:,} | {r['load_s']:.1f} s | {r['rss_mb']:.0f} MB "
                     f"| {r['p50']:.1f} ms | {r['p99']:.1f} ms | {r['max']:.1f} ms | {r['cpu_us_per_update']:.0f} µs | {r['peak_connections']} | {r['rejected']} |")
    out = os.path.join(ROOT, "bench", "results", f"consul-registry-{date.today()}.md")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten to {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
