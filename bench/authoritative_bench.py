#!/usr/bin/env python3
"""Authoritative benchmark (issue #5): Signpost against Knot, NSD, Unbound (local-data) and dnsmasq, same run.

Every server serves the same data: `web.service.consul` with 3 A records and 3 SRV records whose targets
have A records. Signpost gets it from a catalog (web × 3), the others from a zone or their own syntax.
Each server runs alone, pinned to core 0 (one worker thread where it has a setting); dnsperf runs pinned to
core 1. For A and for SRV: (a) a fixed 50k qps for 10 s, recording the server's user and system CPU per answered
query, the average and p99 latency and the lost queries; (b) saturation for 5 s, recording the qps reached.
Ratios are to Knot. All traffic stays on 127.0.0.1; every run is bounded in time.

Then (c) every name form Signpost answers from its fast path (plain, tag, datacenter, RFC 2782, node, addr, a
dotted name), against Knot serving the same records from its zone, and (d) Signpost's CPU per query before and
after a SIGHUP that leaves its settings alone, in the same run.
"""
import json, os, subprocess, sys, tempfile, time
from datetime import date
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, wait_up, user_sys_us, split, dnsperf, stop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIGNPOST = os.path.join(ROOT, ".build", "release", "signpost")
RATE = int(os.environ.get("BENCH_RATE", "50000"))
# BENCH_PARTS=forms,reload runs only those parts (main: the servers' table, forms, reload, scaling).
PARTS = set((os.environ.get("BENCH_PARTS") or "main,forms,reload,scaling").split(","))
FIXED_S, SAT_S = int(os.environ.get("BENCH_SECONDS", "5")), 5
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
IPS = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]

ZONE = "$ORIGIN consul.\n$TTL 0\n@ IN SOA ns hostmaster 1 3600 600 86400 0\n@ IN NS ns\nns IN A 127.0.0.1\n" + "".join(
    f"web.service IN A {ip}\nweb.service IN SRV 1 1 8080 web-{i + 1}.node.dc1\nweb-{i + 1}.node.dc1 IN A {ip}\n" for i, ip in enumerate(IPS))
# The other forms' names, with the records Signpost gives them (Knot's zone holds them as plain records).
FORMS = [("plain A", "web.service.consul", "A"), ("plain SRV", "web.service.consul", "SRV"),
         ("tag A", "v2.web.service.consul", "A"), ("datacenter A", "web.service.dc1.consul", "A"),
         ("RFC 2782 SRV", "_web._tcp.service.consul", "SRV"), ("node A", "web-1.node.consul", "A"),
         ("addr A", "c000020b.addr.dc1.consul", "A"), ("dotted A", "go.micro.srv.greeter.service.consul", "A")]
# BENCH_FORMS="plain A,plain SRV" measures only those forms (a quick check of one change).
if os.environ.get("BENCH_FORMS"):
    FORMS = [f for f in FORMS if f[0] in os.environ["BENCH_FORMS"].split(",")]
FORM_ZONE = "".join(
    f"v2.web.service IN A {ip}\nweb.service.dc1 IN A {ip}\n_web._tcp.service IN SRV 1 1 8080 web-{i + 1}.node.dc1\n"
    f"go.micro.srv.greeter.service IN A {ip}\n" for i, ip in enumerate(IPS)) + f"web-1.node IN A {IPS[0]}\nc000020b.addr.dc1 IN A {IPS[0]}\n"


def servers(work):
    out = {}
    os.makedirs(f"{work}/catalog", exist_ok=True)
    for i, ip in enumerate(IPS):
        json.dump([{"Node": f"web-{i + 1}", "Address": ip, "Service": {"Service": "web", "Port": 8080, "Tags": ["v2"]}},
                   {"Node": f"web-{i + 1}", "Address": ip, "Service": {"ID": "greeter", "Service": "go.micro.srv.greeter", "Port": 9090}}],
                  open(f"{work}/catalog/web-{i + 1}.json", "w"))
    p = free_port()
    out["Signpost"] = (p, [SIGNPOST, "serve", "--listen", f"127.0.0.1:{p}", "--threads", "1", "--catalog", f"{work}/catalog",
                           "--no-forward", "--log-level", "error"])
    p = free_port()
    out["Signpost nio"] = (p, [SIGNPOST, "serve", "--listen", f"127.0.0.1:{p}", "--threads", "1", "--udp-engine", "nio",
                               "--catalog", f"{work}/catalog", "--no-forward", "--log-level", "error"])
    open(f"{work}/consul.zone", "w").write(ZONE + FORM_ZONE)
    p = free_port()
    open(f"{work}/knot.conf", "w").write(
        f'server:\n    rundir: "{work}"\n    listen: 127.0.0.1@{p}\n    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n'
        f'database:\n    storage: "{work}"\nzone:\n  - domain: consul\n    storage: "{work}"\n    file: "consul.zone"\n')
    out["Knot"] = (p, ["knotd", "-c", f"{work}/knot.conf"])
    p = free_port()
    open(f"{work}/nsd.conf", "w").write(
        f'server:\n  ip-address: 127.0.0.1@{p}\n  server-count: 1\n  username: ""\n  chroot: ""\n  zonesdir: "{work}"\n'
        f'  pidfile: "{work}/nsd.pid"\n  database: ""\n  xfrdfile: "{work}/xfrd.state"\n  zonelistfile: "{work}/zone.list"\n'
        f'  xfrdir: "{work}"\n  verbosity: 0\n  rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\n'
        f'remote-control:\n  control-enable: no\nzone:\n  name: consul\n  zonefile: consul.zone\n')
    out["NSD"] = (p, ["nsd", "-d", "-c", f"{work}/nsd.conf"])
    p = free_port()
    local = "".join(f'  local-data: "web.service.consul. 0 IN A {ip}"\n  local-data: "web.service.consul. 0 IN SRV 1 1 8080 web-{i + 1}.node.dc1.consul."\n'
                    f'  local-data: "web-{i + 1}.node.dc1.consul. 0 IN A {ip}"\n' for i, ip in enumerate(IPS))
    open(f"{work}/unbound.conf", "w").write(
        f'server:\n  interface: 127.0.0.1@{p}\n  port: {p}\n  do-daemonize: no\n  use-syslog: no\n  chroot: ""\n  username: ""\n'
        f'  pidfile: ""\n  num-threads: 1\n  access-control: 127.0.0.0/8 allow\n  module-config: "iterator"\n  logfile: ""\n'
        f'  verbosity: 0\n  local-zone: "consul." static\n' + local)
    out["Unbound"] = (p, ["unbound", "-d", "-c", f"{work}/unbound.conf"])
    p = free_port()
    args = ["dnsmasq", "-k", f"--port={p}", "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
            "--pid-file=", "--user=root", "--local-ttl=0"]
    for i, ip in enumerate(IPS):
        args += [f"--host-record=web.service.consul,{ip}", f"--host-record=web-{i + 1}.node.dc1.consul,{ip}",
                 f"--srv-host=web.service.consul,web-{i + 1}.node.dc1.consul,8080,1,1"]
    out["dnsmasq"] = (p, args)
    return out


def scaling(work, only):
    """Saturation with 1 and 2 workers, for Signpost and Knot, with two dnsperf threads; nothing pinned."""
    def signpost(p, t):
        return [SIGNPOST, "serve", "--listen", f"127.0.0.1:{p}", "--threads", str(t), "--catalog", f"{work}/catalog",
                "--no-forward", "--log-level", "error"]
    def knot(p, t):
        conf = f"{work}/knot-{t}.conf"
        open(conf, "w").write(
            f'server:\n    rundir: "{work}"\n    listen: 127.0.0.1@{p}\n    udp-workers: {t}\n    tcp-workers: 1\n'
            f'    background-workers: 1\ndatabase:\n    storage: "{work}"\nzone:\n  - domain: consul\n    storage: "{work}"\n'
            f'    file: "consul.zone"\n')
        return ["knotd", "-c", conf]
    qfile = f"{work}/q-A"
    open(qfile, "w").write("web.service.consul A\n")
    out = []
    for name, make in [("Signpost", signpost), ("Knot", knot)]:
        if only and name not in only:
            continue
        runs = []
        for t in (1, 2):
            p = free_port()
            proc = subprocess.Popen(make(p, t), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                if not wait_up(p, "web.service.consul"):
                    print(f"{name} ({t} workers) did not start; skipped", flush=True)
                    break
                before = user_sys_us(proc.pid)
                r = dnsperf(p, qfile, SAT_S, clients=8, threads=2, cpus="0,1")
                user, sys_ = split(before, user_sys_us(proc.pid))
                r["cpu_us"] = (user + sys_) / max(r["completed"], 1)
                runs.append(r)
                print(json.dumps({"scaling": name, "workers": t, **r}), flush=True)
            finally:
                stop([proc])
        if len(runs) == 2:
            out.append((name, runs[0], runs[1]))
    return out


def fixed_cpu(port, proc, qfile, seconds=FIXED_S):
    """CPU per answered query (µs) at the fixed rate, its user part, and how many were lost; then the totals
    (CPU µs, user µs, answered) for averaging over runs."""
    before = user_sys_us(proc.pid)
    r = dnsperf(port, qfile, seconds, rate=RATE)
    user, sys_ = split(before, user_sys_us(proc.pid))
    n = max(r["completed"], 1)
    return (user + sys_) / n, user / n, r["lost"], (user + sys_, user, n)


# Single 5 s runs of the same server move by about ±5% here, more than the forms differ by. So the forms are
# measured in many short runs, Signpost and Knot back to back (taking turns at going first), and each server's
# CPU per query is its total CPU over its total answered queries across all rounds; the spread of the per-round
# ratios is shown beside it.
FORM_ROUNDS = int(os.environ.get("BENCH_FORM_ROUNDS", "12"))
FORM_SECONDS = int(os.environ.get("BENCH_FORM_SECONDS", "3"))


def forms(work, started):
    """(c) CPU per query for each name form, Signpost against Knot, FORM_ROUNDS rounds of FORM_SECONDS runs."""
    totals, ratios = {}, {}
    for r in range(FORM_ROUNDS):
        for label, name, qtype in FORMS:
            qfile = f"{work}/q-form"
            open(qfile, "w").write(f"{name} {qtype}\n")
            pair = {}
            for server in (["Signpost", "Knot"] if r % 2 == 0 else ["Knot", "Signpost"]):
                if server in started:
                    cpu, _, _, (c, u, n) = fixed_cpu(*started[server], qfile, FORM_SECONDS)
                    t = totals.setdefault((label, server), [0, 0, 0])
                    t[0] += c; t[1] += u; t[2] += n
                    pair[server] = cpu
            if len(pair) == 2:
                ratios.setdefault(label, []).append(pair["Signpost"] / pair["Knot"])
        print(json.dumps({"forms_round": r + 1, "of": FORM_ROUNDS}), flush=True)
    def mean(label, server, k):
        t = totals.get((label, server))
        return t[k] / t[2] if t and t[2] else 0
    def spread(label):
        rs = sorted(ratios.get(label, [0]))
        return rs[len(rs) // 4], rs[len(rs) // 2], rs[(3 * len(rs)) // 4]
    return [(label, name, qtype, mean(label, "Signpost", 0), mean(label, "Knot", 0), mean(label, "Signpost", 1),
             mean(label, "Knot", 1), spread(label)) for label, name, qtype in FORMS]


RELOAD_RUNS = int(os.environ.get("BENCH_RELOAD_RUNS", "5"))


def reload_row(work):
    """(d) A Signpost of its own, logging, pinned to core 0: plain A CPU per query, ROUNDS runs before and after a
    SIGHUP with unchanged settings (it waits for the 'reloaded' line). The ratio must stay near 1."""
    port = free_port()
    log = open(f"{work}/reload.log", "w")
    proc = subprocess.Popen(["taskset", "-c", "0", SIGNPOST, "serve", "--listen", f"127.0.0.1:{port}", "--threads", "1",
                             "--catalog", f"{work}/catalog", "--no-forward"],
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        if not wait_up(port, "web.service.consul"):
            return None
        qfile = f"{work}/q-A"
        before = sorted(fixed_cpu(port, proc, qfile)[0] for _ in range(RELOAD_RUNS))[RELOAD_RUNS // 2]
        proc.send_signal(1)
        deadline = time.time() + 10
        while "] reloaded" not in open(f"{work}/reload.log").read() and time.time() < deadline:
            time.sleep(0.05)
        kept = "resolver=kept" in open(f"{work}/reload.log").read()
        after = sorted(fixed_cpu(port, proc, qfile)[0] for _ in range(RELOAD_RUNS))[RELOAD_RUNS // 2]
        return before, after, kept
    finally:
        stop([proc])


def main():
    work = tempfile.mkdtemp(prefix="signpost-auth-")
    rows = []
    only = [s for s in os.environ.get("BENCH_SERVERS", "").split(",") if s]
    # Every server runs side by side, pinned to core 0 (an idle one costs nothing). The fixed load goes round them
    # ROUNDS times and each server's median run is reported, because single runs on this machine move by ±20%.
    started = {}
    procs = []
    try:
        for name, (port, cmd) in servers(work).items():
            if only and name not in only:
                continue
            proc = subprocess.Popen(["taskset", "-c", "0"] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(proc)
            if not wait_up(port, "web.service.consul"):
                print(f"{name} did not start; skipped", flush=True)
                continue
            started[name] = (port, proc)
        qfiles = {}
        for qtype in ["A", "SRV"]:
            qfiles[qtype] = f"{work}/q-{qtype}"
            open(qfiles[qtype], "w").write(f"web.service.consul {qtype}\n")
        samples = {}
        for _ in range(ROUNDS if "main" in PARTS else 0):
            for name, (port, proc) in started.items():
                for qtype in ["A", "SRV"]:
                    before = user_sys_us(proc.pid)
                    fixed = dnsperf(port, qfiles[qtype], FIXED_S, rate=RATE, verbose=True)
                    user, sys_ = split(before, user_sys_us(proc.pid))
                    n = max(fixed["completed"], 1)
                    sat = dnsperf(port, qfiles[qtype], SAT_S, clients=4)
                    run = {"user_us": user / n, "sys_us": sys_ / n, "cpu_us": (user + sys_) / n, "avg_ms": fixed["avg_ms"],
                           "p99_ms": fixed["p99_ms"], "lost": fixed["lost"], "sent": fixed["completed"] + fixed["lost"],
                           "sat_qps": sat["qps"], "sat_gen": sat["gen_cpu"]}
                    samples.setdefault((name, qtype), []).append(run)
                    print(json.dumps({"server": name, "qtype": qtype, **run}), flush=True)
        for name, (port, proc) in started.items() if "main" in PARTS else []:
            for qtype in ["A", "SRV"]:
                runs = samples[(name, qtype)]
                median = sorted(runs, key=lambda r: r["cpu_us"])[len(runs) // 2]
                sat = sorted(runs, key=lambda r: r["sat_qps"])[len(runs) // 2]
                rows.append({"server": name, "qtype": qtype, **median, "runs": [r["cpu_us"] for r in runs],
                             "lost": sum(r["lost"] for r in runs), "sent": sum(r["sent"] for r in runs),
                             "p99_ms": max(r["p99_ms"] for r in runs), "sat_qps": sat["sat_qps"], "sat_gen": sat["sat_gen"]})
        form_rows = forms(work, started) if "forms" in PARTS else []
    finally:
        stop(procs)
    reload = reload_row(work) if "reload" in PARTS and (not only or "Signpost" in only) else None
    scale = scaling(work, only) if "scaling" in PARTS else []
    lines = [f"# Authoritative benchmark, {date.today()}", "",
             f"`make bench` on {os.cpu_count()} cores: the servers on core 0, dnsperf on core 1. (a) {RATE // 1000}k qps for {FIXED_S} s, {ROUNDS} times",
             "round all the servers; the table shows each server's median run (all runs in the last column), and the highest p99 and",
             f"the total lost across its runs. CPU is the server's user + system time per answered query, from /proc.",
             f"(b) Saturation for {SAT_S} s with dnsperf's 4 clients, in the same rounds; the median run's qps;",
             "the dnsperf CPU column is dnsperf's own CPU in cores: at 0.9 or more, the load generator was the bottleneck.", ""]
    for qtype in (["A", "SRV"] if rows else []):
        knot = next((r for r in rows if r["server"] == "Knot" and r["qtype"] == qtype), None)
        lines += [f"## {qtype}", "", "| server | CPU/query | user | sys | vs Knot | avg | p99 | lost | saturation qps | vs Knot | dnsperf CPU | runs |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["qtype"] == qtype):
            rc = f"{r['cpu_us'] / knot['cpu_us']:.2f}×" if knot else "–"
            rq = f"{r['sat_qps'] / knot['sat_qps']:.2f}×" if knot else "–"
            lines.append(f"| {r['server']} | {r['cpu_us']:.1f} µs | {r['user_us']:.1f} | {r['sys_us']:.1f} | {rc} | {r['avg_ms']:.3f} ms "
                         f"| {r['p99_ms']:.3f} ms | {r['lost']} of {r['sent']} | {r['sat_qps']:,.0f} | {rq} | {r['sat_gen']:.2f} "
                         f"| {', '.join(f'{x:.1f}' for x in r['runs'])} µs |")
        lines.append("")
    lines += ["## Every name form, against Knot", "",
              f"{RATE // 1000}k qps, {FORM_ROUNDS} rounds of {FORM_SECONDS} s runs per form, Signpost and Knot back to back (taking turns",
              "at going first). CPU per query is each server's total CPU over its total answered queries in all rounds; the",
              "per-round ratios' quartiles show the noise. Knot serves the same records from its zone. User CPU is each server's",
              "own work; the rest is the kernel's.", "",
              "| form | name | Signpost CPU/query | Knot CPU/query | vs Knot | per-round ratio (quartiles) | Signpost user | Knot user |",
              "|---|---|---|---|---|---|---|---|"]
    for label, name, qtype, mine, knot, mine_user, knot_user, (q1, q2, q3) in form_rows:
        ratio = f"{mine / knot:.2f}×" if knot else "–"
        lines.append(f"| {label} | `{name} {qtype}` | {mine:.2f} µs | {knot:.2f} µs | {ratio} | {q1:.2f} / {q2:.2f} / {q3:.2f} "
                     f"| {mine_user:.2f} µs | {knot_user:.2f} µs |")
    lines.append("")
    if reload:
        before, after, kept = reload
        lines += ["## Reload", "", f"Plain A, {RATE // 1000}k qps, {RELOAD_RUNS} runs each side of a SIGHUP that leaves the settings alone "
                  f"(resolver {'kept' if kept else 'NOT kept'}).", "",
                  "| before SIGHUP | after SIGHUP | after / before |", "|---|---|---|",
                  f"| {before:.2f} µs | {after:.2f} µs | {after / before:.2f} |", ""]
    if scale:
        lines += ["## Scaling: one worker against two", "",
                  f"Saturation for {SAT_S} s with two dnsperf threads (8 clients), A queries. Neither side is pinned: both cores are",
                  "shared by the server and dnsperf, so two workers cannot double; Knot, measured the same way, shows what this",
                  "machine allows.", "",
                  "| server | 1 worker qps | 2 workers qps | ratio | CPU/query 1 → 2 | dnsperf CPU 1 → 2 |", "|---|---|---|---|---|---|"]
        for name, one, two in scale:
            lines.append(f"| {name} | {one['qps']:,.0f} | {two['qps']:,.0f} | {two['qps'] / one['qps']:.2f}× "
                         f"| {one['cpu_us']:.1f} → {two['cpu_us']:.1f} µs | {one['gen_cpu']:.2f} → {two['gen_cpu']:.2f} |")
        lines.append("")
    out = os.path.join(ROOT, "bench", "results", f"{date.today()}{'' if PARTS >= {'main', 'forms', 'reload', 'scaling'} else '-' + '-'.join(sorted(PARTS))}.md")
    open(out, "w").write("\n".join(lines))
    print("\n".join(lines))
    print(f"written to {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
