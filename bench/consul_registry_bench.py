#!/usr/bin/env python3
"""Consul registry benchmark (issues #16 and #22): the watcher against the Consul stand-in, with Consul's default cap
of 200 concurrent connections per client (past it, a 429).

For each size (services x instances; default 2000x5 and 10000x5), in one run:
  1. start the stand-in (Tests/EndToEndTests/ConsulStandIn) with the catalog loaded in bulk, and a release
     `signpost serve --registry consul:…` on free loopback ports; time until Signpost serves the last service;
  2. Signpost's RSS once loaded;
  3. latency: 200 check changes, one at a time, each timed from the write to the first DNS answer that shows it
     (p50, p99, max). A change fails a random passing instance, or brings the failed one back, so at most one
     check is failing at a time: a healthy datacenter;
  4. isolated flips: 100 more such changes, 200 ms apart (not coalesced), without querying. The bytes the stand-in
     sent for them (all of them, and apart from the changed services' own health bodies), and the CPU Signpost spent
     (all threads, less the same time idle), each per flip;
  5. registrations: 10 new instances of existing services on new nodes, then their 10 deregistrations, each timed
     from the write to the answer that shows it, with the bytes per change;
  6. churn: 100 flips a second for 60 s over 1,000 services (a random instance fails, and the oldest failed one
     comes back once 50 are failing). The snapshots published per second (most in any one second, from
     signpost_snapshots_published_total), and once it stops, how long until every one of those services answers
     exactly its passing instances;
  7. the most connections the stand-in saw from Signpost at once, and how many it refused with 429.
Every loop is bounded in count and time, and all traffic stays on 127.0.0.1. The random choices are seeded (16).
"""
import json, os, random, re, socket, subprocess, sys, tempfile, time, urllib.request
from datetime import date
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, cpu_ns
from registry_bench import dns_query, pct, rss_mb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIGNPOST = os.path.join(ROOT, ".build", "release", "signpost")
STANDIN = os.path.join(ROOT, "Tests", "EndToEndTests", "ConsulStandIn", "consul_standin.py")
SEED = 16


def call(url, method="POST", body=None):
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def address(s, j):
    return f"10.{s // 250}.{s % 250}.{j + 1}"


def metric(admin, name):
    with urllib.request.urlopen(admin + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


class Dns:
    def __init__(self, port):
        self.port, self.qid = port, 1
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.5)

    def addresses(self, name):
        """The A records of `name` as a set of packed addresses (empty on NXDOMAIN or a timeout)."""
        self.qid = (self.qid + 1) & 0xFFFF
        try:
            data = dns_query(self.sock, self.port, name, self.qid)
        except (socket.timeout, ConnectionRefusedError):
            return None
        count = int.from_bytes(data[6:8], "big")
        out, i = set(), 12
        while data[i]:
            i += data[i] + 1
        i += 5
        for _ in range(count):
            i += 2 if data[i] & 0xC0 == 0xC0 else 0  # names in answers are compressed pointers here
            rtype, rdlen = int.from_bytes(data[i:i + 2], "big"), int.from_bytes(data[i + 8:i + 10], "big")
            if rtype == 1:
                out.add(data[i + 10:i + 14])
            i += 10 + rdlen
        return out


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
        # The admin port is TCP: a port free for UDP may be held by one of the many TCP connections made here.
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM); probe.bind(("127.0.0.1", 0)); aport = probe.getsockname()[1]; probe.close()
        admin = f"http://127.0.0.1:{aport}"
        t0 = time.time()
        signpost = subprocess.Popen([SIGNPOST, "serve", "--listen", f"127.0.0.1:{dport}", "--catalog", os.path.join(work, "empty"),
                                     "--registry", f"consul:{base}", "--log-level", "warning", "--admin", f"127.0.0.1:{aport}"],
                                    stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, f"signpost-{services}.log"), "w"))
        dns = Dns(dport)

        def alive():
            """Signpost still running; a crash ends the run with its log, rather than 200 probes timing out."""
            if signpost.poll() is not None:
                with open(os.path.join(work, f"signpost-{services}.log")) as f:
                    sys.exit(f"signpost exited with {signpost.returncode}:\n" + f.read()[-4000:])
        want = socket.inet_aton(address(services - 1, instances - 1))
        while time.time() - t0 < 120:
            alive()
            got = dns.addresses(f"svc{services - 1}.service.consul")
            if got and want in got:
                break
            time.sleep(0.01)
        load_s = time.time() - t0
        time.sleep(1)
        rss = rss_mb(signpost.pid)

        rnd = random.Random(SEED)
        failed = []  # (s, j), oldest first

        def set_status(s, j, status):
            call(base + "/_test/set-status", body={"node": f"bulk-{s}-{j}", "check": f"service:svc{s}-{j}", "status": status})

        def flip(limit=1, among=None):
            """Fails a random passing instance, or brings the oldest failed one back once `limit` are failing."""
            if len(failed) >= limit:
                s, j = failed.pop(0)
                set_status(s, j, "passing")
                return s, j, "passing"
            while True:
                s, j = rnd.randrange(among or services), rnd.randrange(instances)
                if (s, j) not in failed:
                    break
            failed.append((s, j))
            set_status(s, j, "critical")
            return s, j, "critical"

        # 3. change -> answer
        latencies = []
        for _ in range(200):
            alive()
            t1 = time.perf_counter()
            s, j, status = flip()
            needle = socket.inet_aton(address(s, j))
            while time.perf_counter() - t1 < 5:
                got = dns.addresses(f"svc{s}.service.consul")
                if got is not None and (needle in got) == (status == "passing"):
                    break
            latencies.append((time.perf_counter() - t1) * 1000)

        # 4. isolated flips: bytes and CPU
        # Idle CPU (the catalog directory's polling, the instance counter) is measured for 3 s before the flips and
        # 3 s after, and its mean taken off: a flip costs less than a 200 ms share of it.
        idle0 = cpu_ns(signpost.pid); time.sleep(3); idle_before = (cpu_ns(signpost.pid) - idle0) / 3
        call(base + "/_test/reset-stats")
        c0 = cpu_ns(signpost.pid); t2 = time.time()
        isolated = 100
        for _ in range(isolated):
            tick = time.time()
            flip()
            time.sleep(max(0.0, 0.2 - (time.time() - tick)))
        time.sleep(0.5)
        window, busy = time.time() - t2, cpu_ns(signpost.pid) - c0
        idle0 = cpu_ns(signpost.pid); time.sleep(3); idle = (idle_before + (cpu_ns(signpost.pid) - idle0) / 3) / 2
        spent = busy - idle * window
        stats = call(base + "/_test/stats", method="GET")
        bodies = stats["by_path"].get("/v1/health/service/", {"bytes": 0, "requests": 0})
        flip_bytes, flip_other = stats["bytes"] / isolated, (stats["bytes"] - bodies["bytes"]) / isolated
        flip_reads = bodies["requests"] / isolated
        while failed:
            flip(limit=0)

        # 5. registrations and deregistrations of instances on new nodes
        call(base + "/_test/reset-stats")
        reg_latencies = []
        for k in range(10):
            alive()
            s = rnd.randrange(services)
            node, sid, ip = f"reg-{k}", f"svc{s}-reg{k}", f"10.250.0.{k + 1}"
            t1 = time.perf_counter()
            call(base + "/v1/catalog/register", "PUT", {"Node": node, "Address": ip, "Service": {"ID": sid, "Service": f"svc{s}", "Port": 8080},
                                                        "Checks": [{"CheckID": f"service:{sid}", "Status": "passing", "ServiceID": sid}]})
            while time.perf_counter() - t1 < 10 and socket.inet_aton(ip) not in (dns.addresses(f"svc{s}.service.consul") or set()):
                pass
            reg_latencies.append((time.perf_counter() - t1) * 1000)
            t1 = time.perf_counter()
            call(base + "/v1/catalog/deregister", "PUT", {"Node": node})
            while time.perf_counter() - t1 < 10 and socket.inet_aton(ip) in (dns.addresses(f"svc{s}.service.consul") or {socket.inet_aton(ip)}):
                pass
            reg_latencies.append((time.perf_counter() - t1) * 1000)
        reg_bytes = call(base + "/_test/stats", method="GET")["bytes"] / 20

        # 6. churn: 100 flips a second for 60 s over 1,000 services, at most 50 failing at once
        churn_services = min(1000, services)
        published = [metric(admin, "signpost_snapshots_published_total")]
        t3 = time.time()
        flips, next_sample = 0, t3 + 1
        while time.time() - t3 < 60 and flips < 6000:
            target = t3 + flips / 100
            if time.time() < target:
                time.sleep(target - time.time())
            flip(limit=50, among=churn_services)
            flips += 1
            if flips % 500 == 0:
                alive()
            if time.time() >= next_sample:
                published.append(metric(admin, "signpost_snapshots_published_total"))
                next_sample += 1
        churn_s = time.time() - t3
        last_flip = time.perf_counter()
        expected = {s: {socket.inet_aton(address(s, j)) for j in range(instances) if (s, j) not in failed} for s in range(churn_services)}
        wrong = set(expected)
        while wrong and time.perf_counter() - last_flip < 10:
            wrong = {s for s in wrong if dns.addresses(f"svc{s}.service.consul") != expected[s]}
        settle_ms = (time.perf_counter() - last_flip) * 1000 if not wrong else float("inf")
        alive()
        per_second = [b - a for a, b in zip(published, published[1:])]
        stats = call(base + "/_test/stats", method="GET")
        return {"services": services, "instances": services * instances, "load_s": load_s, "rss_mb": rss,
                "p50": pct(latencies, 50), "p99": pct(latencies, 99), "max": max(latencies),
                "bytes_per_flip": flip_bytes, "other_bytes_per_flip": flip_other, "reads_per_flip": flip_reads,
                "cpu_us_per_flip": max(spent, 0) / isolated / 1000,
                "registration_p50": pct(reg_latencies, 50), "registration_max": max(reg_latencies), "bytes_per_registration": reg_bytes,
                "churn_flips": flips, "churn_s": churn_s, "published_max_per_s": max(per_second or [0]),
                "published_mean_per_s": (published[-1] - published[0]) / max(len(per_second), 1),
                "churn_settle_ms": settle_ms, "churn_wrong": len(wrong),
                "peak_connections": stats["peak"], "rejected": stats["rejected"], "seed": SEED}
    finally:
        for p in (signpost, standin):
            if p:
                p.terminate()
                try: p.wait(10)
                except subprocess.TimeoutExpired: p.kill()


def kb(n):
    return f"{n / 1024:.1f} KB"


def main():
    sizes = [(2000, 5), (10000, 5)]
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        with open(sys.argv[2]) as f:
            return report([json.loads(line) for line in f if line.startswith("{")])
    if len(sys.argv) > 1:
        sizes = [tuple(int(x) for x in a.split("x")) for a in sys.argv[1:]]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        os.makedirs(os.path.join(work, "empty"))
        for s, i in sizes:
            r = run(s, i, work)
            rows.append(r)
            print(json.dumps(r), flush=True)
    report(rows)


def report(rows):
    """The results as markdown, into bench/results/ (also from saved JSON rows: `--report FILE`)."""
    lines = [f"# Consul registry benchmark, {date.today()}", "",
             f"`make bench-registry` on {os.cpu_count()} cores, against the Consul stand-in with Consul's default cap of 200",
             "connections per client. A flip fails one passing instance's check or brings it back (at most one failing at a",
             "time, as in a healthy datacenter); latency runs from the write to the first DNS answer that shows it. Bytes are",
             "what the stand-in sent (headers and bodies); \"besides bodies\" leaves out the changed service's own",
             "`/v1/health/service` body. The stand-in is Python, so its own time is in the latencies and load times,",
             "not in Signpost's CPU. Seed 16.", "",
             "| services × instances | load until served | RSS | change → answer p50 | p99 | max | bytes per isolated flip | besides bodies | service reads per flip | CPU per isolated flip | connections at peak | 429s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['services']} × {r['instances'] // r['services']} | {r['load_s']:.1f} s | {r['rss_mb']:.0f} MB "
                     f"| {r['p50']:.1f} ms | {r['p99']:.1f} ms | {r['max']:.1f} ms | {kb(r['bytes_per_flip'])} | {kb(r['other_bytes_per_flip'])} "
                     f"| {r['reads_per_flip']:.2f} | {r['cpu_us_per_flip']:.0f} µs | {r['peak_connections']} | {r['rejected']} |")
    lines += ["", "Churn (100 flips a second for 60 s over 1,000 services, at most 50 failing at once) and registrations (a new",
              "instance on a new node, then its node deregistered; 10 of each):", "",
              "| services × instances | flips | snapshots published, most in 1 s | mean per s | all answers right after the last flip | registration → answer p50 | max | bytes per registration |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        settle = f"{r['churn_settle_ms']:.0f} ms" if r["churn_wrong"] == 0 else f"{r['churn_wrong']} services still wrong after 10 s"
        lines.append(f"| {r['services']} × {r['instances'] // r['services']} | {r['churn_flips']} in {r['churn_s']:.0f} s "
                     f"| {r['published_max_per_s']:.0f} | {r['published_mean_per_s']:.1f} | {settle} "
                     f"| {r['registration_p50']:.0f} ms | {r['registration_max']:.0f} ms | {kb(r['bytes_per_registration'])} |")
    out = os.path.join(ROOT, "bench", "results", f"consul-registry-{date.today()}.md")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten to {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
