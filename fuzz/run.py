#!/usr/bin/env python3
"""Runs each libFuzzer target (built by `make fuzz`) for FUZZ_SECONDS with FUZZ_WORKERS processes, then merges new
coverage into the committed corpus and reports the executions. Crash reproducers land in fuzz/crashes/, which the
test suite replays. Usage: fuzz/run.py SECONDS [WORKERS [TARGET]]"""
import os, re, shutil, subprocess, sys, tempfile

ENV = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
from datetime import date

HERE = os.path.dirname(os.path.abspath(__file__))
seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 300
workers = int(sys.argv[2]) if len(sys.argv) > 2 else os.cpu_count() or 1
targets = [("FuzzParser", "parser"), ("FuzzQueryPath", "query")]
if len(sys.argv) > 3:
    targets = [t for t in targets if t[0] == sys.argv[3]]
rows = []
for binary, corpus in targets:
    exe = os.path.join(HERE, ".build", "release", binary)
    committed = os.path.join(HERE, "corpus", corpus)
    work = tempfile.mkdtemp(prefix=f"signpost-fuzz-{corpus}-")
    crashes = os.path.join(HERE, "crashes") + "/"
    total, crashed = 0, False
    # One process per worker, each with its own time budget; new inputs go to the scratch corpus.
    # No LeakSanitizer: Swift keeps enum tags in the spare bits of pointers (Address.hostname(DNSName), .v6), so
    # LSan cannot see those references and reports the fixtures built once at start as leaked, at exit. A real
    # per-input leak would still show as RSS growth, which -rss_limit_mb turns into a failure.
    # Each worker logs to a file: libFuzzer writes progress all the time, and a pipe nobody reads would stall it.
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(workers)]
    procs = [subprocess.Popen([exe, f"-max_total_time={seconds}", "-print_final_stats=1", "-timeout=10", "-rss_limit_mb=4096",
                               f"-artifact_prefix={crashes}", f"-seed={1000 + i}", work, committed],
                              stdout=subprocess.DEVNULL, stderr=logs[i], env=ENV) for i in range(workers)]
    for p, log in zip(procs, logs):
        p.wait()
        log.seek(0)
        err = log.read()
        m = re.search(r"stat::number_of_executed_units:\s*(\d+)", err)
        total += int(m.group(1)) if m else 0
        if p.returncode != 0:
            crashed = True
            print(err[-3000:], file=sys.stderr)
    # Fold what is new into the committed corpus (libFuzzer keeps only inputs that add coverage).
    subprocess.run([exe, "-merge=1", "-detect_leaks=0", f"-artifact_prefix={crashes}", committed, work],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    shutil.rmtree(work, ignore_errors=True)
    rows.append((binary, total, seconds, workers, len(os.listdir(committed)), crashed))
    print(f"{binary}: {total:,} executions in {seconds} s × {workers} workers, corpus {rows[-1][4]} files, "
          f"{'CRASHED: see fuzz/crashes/' if crashed else 'no crash'}", flush=True)
log = os.path.join(HERE, "results.md")
new = not os.path.exists(log)
with open(log, "a") as f:
    if new:
        f.write("# Fuzzing runs\n\n`make fuzz` (FUZZ_SECONDS, FUZZ_WORKERS); executions are libFuzzer's `number_of_executed_units`.\n\n"
                "| date | target | executions | seconds × workers | corpus files | result |\n|---|---|---|---|---|---|\n")
    for binary, total, s, w, n, crashed in rows:
        f.write(f"| {date.today()} | {binary} | {total:,} | {s} × {w} | {n} | {'crash' if crashed else 'no crash'} |\n")
sys.exit(1 if any(r[5] for r in rows) else 0)
