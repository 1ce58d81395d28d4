#!/usr/bin/env python3
"""Signpost against Knot the way an outside harness measured them (issue 23, point 6): each server pinned to core 0
with its default threads, dnsperf with 8 clients on core 1, A and SRV queries mixed, 50k qps for 5 s, ROUNDS rounds
taking turns at going first. Per query: user and system CPU, context switches, system calls (perf's
raw_syscalls:sys_enter), and dnsperf's mean latency. Extra arguments go to `signpost serve`.
Run: `python3 bench/pinned_harness.py` (after `swift build -c release`; needs knot, dnsperf and perf)."""
import os, sys, subprocess, time, tempfile, json, glob
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, wait_up, user_sys_us, split, dnsperf, stop
import authoritative_bench as ab
work = tempfile.mkdtemp()
srv = ab.servers(work)
sp_port, sp_cmd = srv["Signpost"]
sp_cmd = [c for c in sp_cmd]
i = sp_cmd.index("--threads"); del sp_cmd[i:i + 2]          # default threads
kn_port, kn_cmd = srv["Knot"]
conf = open(f"{work}/knot.conf").read().replace("    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n", "")
open(f"{work}/knot.conf", "w").write(conf)
qfile = f"{work}/mixed"
open(qfile, "w").write("web.service.consul A\nweb.service.consul SRV\n")
def ctx(pid):
    t = 0
    for f in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            for l in open(f):
                if "ctxt_switches" in l: t += int(l.split()[1])
        except OSError: pass
    return t
def threads(pid): return len(os.listdir(f"/proc/{pid}/task"))
rows = {"Signpost": [], "Knot": []}
extra = sys.argv[1:]  # e.g. extra Signpost flags
for rnd in range(int(os.environ.get("ROUNDS", "3"))):
    for name, (port, cmd) in ([("Signpost", (sp_port, sp_cmd + extra)), ("Knot", (kn_port, kn_cmd))] if rnd % 2 == 0 else
                              [("Knot", (kn_port, kn_cmd)), ("Signpost", (sp_port, sp_cmd + extra))]):
        p = subprocess.Popen(["taskset", "-c", "0"] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_up(port, "web.service.consul")
        time.sleep(0.5)
        b, c0 = user_sys_us(p.pid), ctx(p.pid)
        perf = subprocess.Popen(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", str(p.pid)], stderr=subprocess.PIPE, text=True)
        r = dnsperf(port, qfile, 5, rate=50000, clients=8)
        perf.send_signal(2); err = perf.communicate()[1]
        a, c1 = user_sys_us(p.pid), ctx(p.pid)
        sc = next((float(l.split(",")[0]) for l in err.splitlines() if "sys_enter" in l), float("nan"))
        u, s = split(b, a); n = r["completed"]
        rows[name].append(dict(user=u / n, sys=s / n, ctx=(c1 - c0) / n, sys_calls=sc / n, avg=r["avg_ms"], thr=threads(p.pid)))
        stop([p])
for name, rs in rows.items():
    med = lambda k: sorted(x[k] for x in rs)[len(rs) // 2]
    print(f"{name:9} user {med('user'):.2f} sys {med('sys'):.2f} total {med('user')+med('sys'):.2f} µs  ctx/q {med('ctx'):.3f}  syscalls/q {med('sys_calls'):.3f}  avg {med('avg'):.3f} ms  threads {rs[0]['thr']}")
    for x in rs: print("   ", {k: round(v, 3) for k, v in x.items()})
import shutil; shutil.rmtree(work, ignore_errors=True)
