#!/usr/bin/env python3
"""Forwarding benchmark (issue #4): the CPU a cache hit costs, and the latency a cache miss adds.

In one run, each of Signpost, Unbound and dnsmasq forwards `bench.test` to the same knotd upstream (Signpost twice:
with `--upstream`, and through a `--forward-zone`, the split-DNS row):
  1. warm: every one of 1,000 names is asked once (so each becomes a cache entry);
  2. hits: dnsperf (pinned to core 1) replays those names at a fixed rate for a fixed time against the server
     (pinned to core 0); the server's CPU comes from /proc/PID/task/*/schedstat, as µs per answered query;
  3. misses: 200 never-asked names, one at a time; the median round trip, less the median of the same kind of
     query sent to knotd directly, is what a miss adds on top of the upstream.
Then DNS over TLS: Signpost and Unbound each forward `bench.test` over TLS to a third unbound (on core 1) that
terminates TLS in front of the knotd; 200 never-asked names, one at a time, give each one's median miss round trip
and its CPU per miss, in the same run.
Every loop is bounded in count and time; all traffic stays on 127.0.0.1.
"""
import os, socket, statistics, struct, subprocess, sys, tempfile, time
from datetime import date
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, query, cpu_ns, wait_up, user_sys_us, split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIGNPOST = os.path.join(ROOT, ".build", "release", "signpost")
RATE, SECONDS, NAMES, ROUNDS = 20000, 5, 1000, 3










def main():
    work = tempfile.mkdtemp(prefix="signpost-bench-")
    procs = []
    try:
        kport = free_port()
        zone = "$ORIGIN bench.test.\n$TTL 3600\n@ IN SOA ns hostmaster 1 3600 600 86400 300\n@ IN NS ns\nns IN A 127.0.0.1\n"
        zone += "".join(f"h{i} IN A 198.18.{i >> 8}.{i & 255}\n" for i in range(NAMES))
        open(os.path.join(work, "bench.test.zone"), "w").write(zone)
        open(os.path.join(work, "knot.conf"), "w").write(
            f'server:\n    rundir: "{work}"\n    listen: 127.0.0.1@{kport}\ndatabase:\n    storage: "{work}"\n'
            f'zone:\n  - domain: bench.test\n    storage: "{work}"\n    file: "bench.test.zone"\n')
        procs.append(subprocess.Popen(["taskset", "-c", "1", "knotd", "-c", os.path.join(work, "knot.conf")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        assert wait_up(kport, "h0.bench.test"), "knotd did not start"

        servers = {}
        sport = free_port()
        os.makedirs(os.path.join(work, "catalog"))
        servers["Signpost"] = (sport, ["taskset", "-c", "0", SIGNPOST, "serve", "--listen", f"127.0.0.1:{sport}", "--threads", "1",
                                       "--catalog", os.path.join(work, "catalog"), "--upstream", f"127.0.0.1:{kport}",
                                       # bench.test is in test., served locally by default (Unbound below: nodefault)
                                       "--no-local-zones", "--log-level", "error"])
        split_port = free_port()
        servers["Signpost split"] = (split_port, ["taskset", "-c", "0", SIGNPOST, "serve", "--listen", f"127.0.0.1:{split_port}",
                                                  "--threads", "1", "--catalog", os.path.join(work, "catalog"),
                                                  "--forward-zone", f"bench.test=127.0.0.1:{kport}", "--upstream", "127.0.0.1:9",
                                                  "--log-level", "error"])
        uport = free_port()
        open(os.path.join(work, "unbound.conf"), "w").write(
            f'server:\n  interface: 127.0.0.1@{uport}\n  port: {uport}\n  do-daemonize: no\n  use-syslog: no\n  chroot: ""\n'
            f'  username: ""\n  pidfile: ""\n  num-threads: 1\n  access-control: 127.0.0.0/8 allow\n  do-not-query-localhost: no\n'
            f'  module-config: "iterator"\n  qname-minimisation: no\n  msg-cache-size: 32m\n  rrset-cache-size: 64m\n'
            f'  domain-insecure: "bench.test"\n  local-zone: "test." nodefault\n  logfile: ""\n  verbosity: 0\n'
            f'forward-zone:\n  name: "bench.test."\n  forward-addr: 127.0.0.1@{kport}\n')
        servers["Unbound"] = (uport, ["taskset", "-c", "0", "unbound", "-d", "-c", os.path.join(work, "unbound.conf")])
        dport = free_port()
        servers["dnsmasq"] = (dport, ["taskset", "-c", "0", "dnsmasq", "-k", f"--port={dport}", "--listen-address=127.0.0.1",
                                      "--bind-interfaces", "--no-resolv", "--no-hosts", f"--server=/bench.test/127.0.0.1#{kport}",
                                      "--cache-size=10000", "--pid-file=", "--user=root"])
        qfile = os.path.join(work, "queries")
        open(qfile, "w").write("".join(f"h{i}.bench.test A\n" for i in range(NAMES)))

        direct = sorted(r[0] for r in (query(kport, f"x{i}.bench.test") for i in range(200)) if r)
        # All three run side by side (idle ones cost nothing); the hit load goes round them ROUNDS times, and each
        # server's median is reported, so a noisy moment on the machine does not decide the ratio.
        started = {}
        for name, (port, cmd) in servers.items():
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            assert wait_up(port, "h0.bench.test"), f"{name} did not start"
            for i in range(NAMES):
                query(port, f"h{i}.bench.test")
            started[name] = (port, p.pid)  # taskset execs the server, so the PID is the server's
        samples = {name: [] for name in servers}
        for _ in range(ROUNDS):
            for name, (port, pid) in started.items():
                c0 = cpu_ns(pid)
                before = user_sys_us(pid)
                out = subprocess.run(["taskset", "-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", qfile,
                                      "-Q", str(RATE), "-l", str(SECONDS), "-c", "1", "-T", "1", "-t", "2"],
                                     capture_output=True, text=True).stdout
                spent = cpu_ns(pid) - c0
                user, sys_ = split(before, user_sys_us(pid))
                completed = int(next(l for l in out.splitlines() if "Queries completed" in l).split()[2])
                lost = int(next(l for l in out.splitlines() if "Queries lost" in l).split()[2])
                avg = float(next(l for l in out.splitlines() if "Average Latency" in l).split()[3])
                n = max(completed, 1)
                samples[name].append({"completed": completed, "lost": lost, "avg_ms": avg * 1000, "cpu_us": spent / n / 1000,
                                      "user_us": user / n, "sys_us": sys_ / n})
                print(name, samples[name][-1], flush=True)
        rows = []
        for name, (port, pid) in started.items():
            misses = sorted(r[0] for r in (query(port, f"miss{i}.{name.lower()}.bench.test") for i in range(200)) if r)
            runs = sorted(samples[name], key=lambda r: r["cpu_us"])
            median = runs[len(runs) // 2]
            rows.append({"server": name, "completed": sum(r["completed"] for r in runs), "lost": sum(r["lost"] for r in runs),
                         "avg_ms": median["avg_ms"], "cpu_us": median["cpu_us"], "user_us": median["user_us"],
                         "sys_us": median["sys_us"], "all_us": [r["cpu_us"] for r in samples[name]],
                         "miss_added_ms": statistics.median(misses) - statistics.median(direct)})

        tls_rows = dot(work, kport, procs)
        base = next(r for r in rows if r["server"] == "Unbound")["cpu_us"]
        lines = [f"# Forwarding benchmark, {date.today()}", "",
                 f"`make bench-forward` on {os.cpu_count()} cores. Each server forwards `bench.test` to the same knotd, runs pinned to core 0",
                 f"(one thread), and is loaded by dnsperf on core 1 at {RATE} qps for {SECONDS} s over {NAMES} names cached beforehand,",
                 f"{ROUNDS} times in turn; the table shows each server's median run, and every run's CPU in the last column.",
                 "CPU is the server's, all threads, per answered query. \"Miss adds\" is the median round trip of 200 uncached names",
                 f"less the median of the same kind of query sent straight to knotd ({statistics.median(direct):.3f} ms).", "",
                 "| server | answered | lost | avg latency | CPU per cache hit | user | sys | vs Unbound | miss adds | runs |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['server']} | {r['completed']} | {r['lost']} | {r['avg_ms']:.3f} ms | {r['cpu_us']:.1f} µs | {r['user_us']:.1f} µs | {r['sys_us']:.1f} µs | "
                         f"{r['cpu_us'] / base:.2f}× | {r['miss_added_ms']:.3f} ms | {', '.join(f'{x:.1f}' for x in r['all_us'])} µs |")
        tls_base = next(r for r in tls_rows if r["server"] == "Unbound")
        lines += ["", "## DNS over TLS", "",
                  "Each forwards `bench.test` over TLS (one pooled connection, certificate checked against a test CA) to an unbound on",
                  "core 1 that terminates TLS in front of the same knotd. 200 never-asked names, one at a time: the median round trip,",
                  "and the server's CPU per miss (all its threads over the run, so idle timers count too).", "",
                  "| server | answered | miss round trip | vs Unbound | CPU per miss | vs Unbound |", "|---|---|---|---|---|---|"]
        for r in tls_rows:
            lines.append(f"| {r['server']} | {r['answered']} of 200 | {r['rtt_ms']:.3f} ms | {r['rtt_ms'] / tls_base['rtt_ms']:.2f}× | "
                         f"{r['cpu_us']:.1f} µs | {r['cpu_us'] / tls_base['cpu_us']:.2f}× |")
        out = os.path.join(ROOT, "bench", "results", f"forward-{date.today()}.md")
        open(out, "w").write("\n".join(lines) + "\n")
        print("\n".join(lines))
        print(f"\nwritten to {os.path.relpath(out, ROOT)}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try: p.wait(10)
                except subprocess.TimeoutExpired: p.kill()


def dot(work, kport, procs):
    """The DoT rows: Signpost and Unbound forwarding over TLS to a TLS-terminating unbound."""
    import ssl
    certs = os.path.join(work, "certs")
    subprocess.run([sys.executable, os.path.join(ROOT, "Tests", "EndToEndTests", "TLS", "make_certs.py"), certs, "dot", "--server"],
                   check=True, capture_output=True)
    ca = os.path.join(certs, "ca.pem")
    tport = free_port()
    common = ('  do-daemonize: no\n  use-syslog: no\n  chroot: ""\n  username: ""\n  pidfile: ""\n  num-threads: 1\n'
              '  access-control: 127.0.0.0/8 allow\n  do-not-query-localhost: no\n  module-config: "iterator"\n'
              '  qname-minimisation: no\n  domain-insecure: "bench.test"\n  local-zone: "test." nodefault\n  logfile: ""\n  verbosity: 0\n')
    open(os.path.join(work, "tls.conf"), "w").write(
        f'server:\n  interface: 127.0.0.1@{tport}\n  tls-port: {tport}\n  tls-service-key: "{certs}/dot.key"\n'
        f'  tls-service-pem: "{certs}/dot.pem"\n  directory: "{work}"\n' + common +
        f'forward-zone:\n  name: "bench.test."\n  forward-addr: 127.0.0.1@{kport}\n')
    procs.append(subprocess.Popen(["taskset", "-c", "1", "unbound", "-d", "-c", os.path.join(work, "tls.conf")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    context = ssl.create_default_context(cafile=ca)

    def over_tls(name):
        """One query over a TLS connection of its own (the TLS unbound is up once this answers)."""
        q = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0\0\1\0\1"
        with socket.create_connection(("127.0.0.1", tport), timeout=2) as raw, context.wrap_socket(raw, server_hostname="localhost") as t:
            t.sendall(struct.pack(">H", len(q)) + q)
            return t.recv(2)

    for _ in range(100):
        try:
            over_tls("warm.bench.test")
            break
        except OSError:
            time.sleep(0.1)
    sport, uport = free_port(), free_port()
    fronts = {
        "Signpost": (sport, ["taskset", "-c", "0", SIGNPOST, "serve", "--listen", f"127.0.0.1:{sport}", "--threads", "1",
                             "--catalog", os.path.join(work, "catalog"), "--upstream", f"tls://127.0.0.1:{tport}@localhost",
                             "--upstream-ca", ca, "--no-local-zones", "--log-level", "error"]),
        "Unbound": (uport, ["taskset", "-c", "0", "unbound", "-d", "-c", os.path.join(work, "front.conf")]),
    }
    open(os.path.join(work, "front.conf"), "w").write(
        f'server:\n  interface: 127.0.0.1@{uport}\n  port: {uport}\n  tls-cert-bundle: "{ca}"\n' + common +
        f'forward-zone:\n  name: "bench.test."\n  forward-tls-upstream: yes\n  forward-addr: 127.0.0.1@{tport}#localhost\n')
    rows = []
    for name, (port, cmd) in fronts.items():
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        assert wait_up(port, "h0.bench.test"), f"{name} (DoT) did not start"
        c0 = cpu_ns(p.pid)
        rtts = [r[0] for r in (query(port, f"tls{i}.{name.lower()}.bench.test") for i in range(200)) if r]
        spent = cpu_ns(p.pid) - c0
        rows.append({"server": name, "answered": len(rtts), "rtt_ms": statistics.median(rtts), "cpu_us": spent / max(len(rtts), 1) / 1000})
        print(name, "DoT", rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    main()
