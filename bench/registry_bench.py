#!/usr/bin/env python3
"""Registry benchmark (issue #3): how fast an etcd change reaches DNS answers, and what it costs.

For each size (services x instances), in one run:
  1. start a fresh etcd and a release `signpost serve --registry etcd:…` on free loopback ports;
  2. load the keys through etcd's JSON gateway, 128 puts per transaction; time until Signpost serves them all;
  3. record Signpost's RSS;
  4. 200 updates, one at a time: put a new instance into a random service, then query Signpost over UDP until
     the new address is in the answer; report p50, p99 and max of put -> visible;
  5. 200 more updates without querying, then the CPU Signpost spent (all threads, from
     /proc/PID/task/*/schedstat, less the same time idle) divided by 200.
Every loop is bounded in count and time, and all traffic stays on 127.0.0.1.
Addresses come from 198.18.0.0/15 (RFC 2544's benchmarking range); they are data only.
"""
import base64, json, os, random, socket, struct, subprocess, sys, tempfile, time, urllib.request
from datetime import date
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, cpu_ns

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIGNPOST = os.path.join(ROOT, ".build", "release", "signpost")




def ip(n):
    return f"198.{18 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"


def b64(s):
    return base64.b64encode(s.encode()).decode()


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def dns_query(sock, port, name, qid):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", 1, 1)
    sock.sendto(q, ("127.0.0.1", port))
    while True:
        data, _ = sock.recvfrom(4096)
        if struct.unpack(">H", data[:2])[0] == qid:
            return data




def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def run(services, instances, work):
    cport, pport, dport = free_port(), free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{cport}"
    etcd = subprocess.Popen(["etcd", "--name", "b", "--data-dir", os.path.join(work, f"etcd-{services}"),
                             "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                             "--listen-peer-urls", f"http://127.0.0.1:{pport}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
                             "--initial-cluster", f"b=http://127.0.0.1:{pport}", "--quota-backend-bytes", str(4 << 30)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    signpost = None
    try:
        for _ in range(200):
            try:
                post(etcd_url + "/v3/kv/range", {"key": b64("x")}); break
            except Exception:
                time.sleep(0.05)
        n = 0
        ops = []
        for s in range(services):
            for i in range(instances):
                value = json.dumps({"Address": ip(n), "Port": 8000 + i, "Tags": ["bench"]})
                ops.append({"requestPut": {"key": b64(f"/services/svc{s}/i{i}"), "value": b64(value)}})
                n += 1
                if len(ops) == 128:
                    post(etcd_url + "/v3/kv/txn", {"success": ops}); ops = []
        if ops:
            post(etcd_url + "/v3/kv/txn", {"success": ops})
        loaded_at = time.time()
        signpost = subprocess.Popen([SIGNPOST, "serve", "--listen", f"127.0.0.1:{dport}", "--catalog", os.path.join(work, "empty"),
                                     "--registry", f"etcd:{etcd_url}", "--log-level", "warning"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sock.settimeout(0.05)
        last = f"svc{services - 1}.service.consul"
        want = socket.inet_aton(ip(n - 1))
        qid = 1
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                qid = (qid + 1) & 0xFFFF
                if want in dns_query(sock, dport, last, qid):
                    break
            except (socket.timeout, ConnectionRefusedError):
                pass
            time.sleep(0.01)
        load_s = time.time() - loaded_at
        sock.settimeout(2)
        time.sleep(1)
        rss = rss_mb(signpost.pid)

        latencies, put_rtts = [], []
        rnd = random.Random(42)
        for u in range(200):
            s = rnd.randrange(services)
            addr = ip(n); n += 1
            t0 = time.perf_counter()
            post(etcd_url + "/v3/kv/put", {"key": b64(f"/services/svc{s}/u{u}"), "value": b64(json.dumps({"Address": addr}))})
            put_rtts.append((time.perf_counter() - t0) * 1000)
            needle = socket.inet_aton(addr)
            while time.perf_counter() - t0 < 2:
                qid = (qid + 1) & 0xFFFF
                if needle in dns_query(sock, dport, f"svc{s}.service.consul", qid):
                    break
            latencies.append((time.perf_counter() - t0) * 1000)

        idle0 = cpu_ns(signpost.pid); time.sleep(2); idle = (cpu_ns(signpost.pid) - idle0) / 2
        c0 = cpu_ns(signpost.pid); t0 = time.time()
        for u in range(200):
            s = rnd.randrange(services)
            post(etcd_url + "/v3/kv/put", {"key": b64(f"/services/svc{s}/w{u}"), "value": b64(json.dumps({"Address": ip(n)}))})
            n += 1
        time.sleep(1)
        spent = cpu_ns(signpost.pid) - c0 - idle * (time.time() - t0)
        return {"services": services, "instances": services * instances, "load_s": load_s, "rss_mb": rss,
                "put_p50": pct(put_rtts, 50), "p50": pct(latencies, 50), "p99": pct(latencies, 99), "max": max(latencies),
                "cpu_us_per_update": max(spent, 0) / 200 / 1000}
    finally:
        for p in (signpost, etcd):
            if p:
                p.terminate()
                try: p.wait(10)
                except subprocess.TimeoutExpired: p.kill()


def main():
    sizes = [(1000, 10), (10000, 10)]
    if len(sys.argv) > 1:
        sizes = [tuple(int(x) for x in a.split("x")) for a in sys.argv[1:]]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        os.makedirs(os.path.join(work, "empty"))
        for s, i in sizes:
            r = run(s, i, work)
            rows.append(r)
            print(json.dumps(r), flush=True)
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
    lines = [f"# Registry benchmark, {date.today()}", "",
             f"`make bench-registry` on {os.cpu_count()} cores ({cpu}), etcd {subprocess.run(['etcd', '--version'], capture_output=True, text=True).stdout.split()[2]}.", "",
             "Latency is from issuing the put to the first DNS answer that contains the change, so it includes etcd's own",
             "put round trip (its median is shown separately).", "",
             "| services × instances | instances | load until served | RSS | etcd put RTT p50 | put → answer p50 | p99 | max | CPU per update |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['services']} × {r['instances'] // r['services']} | {r['instances']:,} | {r['load_s']:.1f} s | {r['rss_mb']:.0f} MB "
                     f"| {r['put_p50']:.1f} ms | {r['p50']:.1f} ms | {r['p99']:.1f} ms | {r['max']:.1f} ms | {r['cpu_us_per_update']:.0f} µs |")
    out = os.path.join(ROOT, "bench", "results", f"registry-{date.today()}.md")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten to {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
