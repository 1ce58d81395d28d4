"""Helpers shared by the benchmark scripts: ports, CPU accounting, a tiny DNS client, dnsperf runs."""
import os, socket, struct, subprocess, time


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    return p


def query(port, name, qtype=1, qid=0x1234, timeout=2.0):
    """One UDP query; returns (round trip in ms, reply bytes) or None on timeout."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sock.settimeout(timeout)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", qtype, 1)
    t0 = time.perf_counter()
    sock.sendto(q, ("127.0.0.1", port))
    try:
        data, _ = sock.recvfrom(4096)
    except (socket.timeout, ConnectionRefusedError):
        return None
    finally:
        sock.close()
    return (time.perf_counter() - t0) * 1000, data


def wait_up(port, name, qtype=1):
    """Until the server answers `name` with NOERROR (at most ~10 s)."""
    for _ in range(200):
        r = query(port, name, qtype, timeout=0.2)
        if r and struct.unpack(">H", r[1][2:4])[0] & 0xF == 0:
            return True
        time.sleep(0.05)
    return False


def tree(pid):
    """`pid` and all its descendants (servers such as NSD answer from a forked child)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_ns(pid):
    """CPU time of every thread of `pid` and its descendants, in ns (schedstat, ns precision)."""
    total = 0
    for p in tree(pid):
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def user_sys_us(pid):
    """User and system CPU of `pid` and its descendants, in µs. Ticks only decide the split; the total is
    schedstat's, so short runs are not at the mercy of 10 ms ticks."""
    user = sys_ = 0
    for p in tree(pid):
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                user += int(fields[11]); sys_ += int(fields[12])
        except OSError:
            pass
    return user, sys_, cpu_ns(pid) / 1000


def split(before, after):
    """(user µs, sys µs) between two user_sys_us() readings."""
    du, ds, total = after[0] - before[0], after[1] - before[1], after[2] - before[2]
    share = du / (du + ds) if du + ds > 0 else 0.5
    return total * share, total * (1 - share)


def dnsperf(port, qfile, seconds, rate=None, verbose=False, clients=1, threads=1, cpus="1"):
    """dnsperf pinned to `cpus`; returns completed, lost, qps, avg latency (ms), p99 (ms, with verbose), and
    gen_cpu: the CPU dnsperf itself used, in cores (near the number of cores it has, it was the bottleneck)."""
    cmd = ["taskset", "-c", cpus, "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", qfile, "-l", str(seconds),
           "-c", str(clients), "-T", str(threads), "-t", "2"]
    if rate:
        cmd += ["-Q", str(rate)]
    if verbose:
        cmd += ["-v"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    wall = time.monotonic() - t0
    def field(label, index):
        return next(l for l in out.splitlines() if label in l).split()[index]
    result = {"completed": int(field("Queries completed", 2)), "lost": int(field("Queries lost", 2)),
              "qps": float(field("Queries per second", 3)), "avg_ms": float(field("Average Latency", 3)) * 1000,
              "gen_cpu": (usage.ru_utime + usage.ru_stime) / wall}
    if verbose:
        lat = sorted(float(l.split()[-1]) * 1000 for l in out.splitlines() if l.startswith("> "))
        result["p99_ms"] = lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan")
    return result


def stop(procs):
    for p in procs:
        if p and p.poll() is None:
            p.terminate()
            try: p.wait(10)
            except subprocess.TimeoutExpired: p.kill()
