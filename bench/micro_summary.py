#!/usr/bin/env python3
"""Runs the ordo-one/benchmark microbenchmarks (bench/micro) and writes a compact table of ns/op and mallocs/op
(medians) to bench/results/micro-<date>.md, with the full output below it."""
import os, re, subprocess, sys
from datetime import date

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
out = subprocess.run(["swift", "package", "benchmark", "--target", "HotPath", "--format", "markdown", "--no-progress"],
                     cwd=os.path.join(ROOT, "bench", "micro"), capture_output=True, text=True)
if out.returncode != 0:
    sys.exit(out.stdout + out.stderr)
rows, name = [], None
for line in out.stdout.splitlines():
    if line.startswith("### "):
        name = line[4:].strip()
        rows.append({"name": name})
    elif name and line.startswith("|") and ("*" in line or "CPU ns per record" in line):
        cells = [c.strip() for c in line.strip("|").split("|")]
        key = "ns" if cells[0].startswith("Time (wall clock)") or cells[0].startswith("CPU ns per record") else "mallocs" if cells[0].startswith("Malloc") else None
        if key:
            value = cells[3]  # p50
            # The benchmark package picks the time unit per benchmark; the table is in ns.
            scale = {"(μs)": 1000, "(ms)": 1_000_000}.get(cells[0].split()[-2] if key == "ns" else "", 1)
            rows[-1][key] = str(int(value.replace(",", "")) * scale) if scale != 1 else value
order = lambda r: (r["name"].split(":")[0].split()[0] != "form", r["name"].split(":")[0].split()[0] != "decode", r["name"].split(":")[0].split()[0] != "resolve",
                   r["name"].split(":")[0].split()[0] != "encode", r["name"])
lines = [f"# Microbenchmarks, {date.today()}", "",
         "`make bench-micro` (ordo-one/benchmark, release build): medians per operation, against a snapshot of 1,000 services",
         "× 3 instances (and as many dotted `go.micro.svc<N>` ones); the query is what `dig svc500.service.consul` sends (RD, EDNS 1232).", "",
         "| benchmark | ns/op | mallocs/op |", "|---|---|---|"]
lines += [f"| {r['name']} | {r.get('ns', '?')} | {r.get('mallocs', '?')} |" for r in sorted(rows, key=order)]
lines += ["", "## Full output", "", out.stdout.replace(ROOT + "/", "")]
path = os.path.join(ROOT, "bench", "results", f"micro-{date.today()}.md")
open(path, "w").write("\n".join(lines))
print("\n".join(lines[:len(rows) + 7]))
print(f"written to {os.path.relpath(path, ROOT)}")
