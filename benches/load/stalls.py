#!/usr/bin/env python3
"""What the two CPUs did while a half-load run's tail was made.

    perf record -k mono -e sched:sched_switch -a -o sched.data -- sleep 90 &
    python3 benches/load/run.py ... --timeline DIR      # inside those 90 s
    perf script -i sched.data -F comm,tid,cpu,time,event,trace > sched.txt
    python3 benches/load/stalls.py DIR/wechat-json-HHMMSS.txt sched.txt [--top 4]

A `load_fixed_rate` timeline (FIXED_RATE_TIMELINE) gives every request's
intended send time and latency; its `# start_monotonic` line puts them on
the clock perf records with `-k mono`. The tail (latency >= the run's p99)
comes in clusters: requests sent within 5 ms of each other. For the largest
clusters this prints, over the cluster's window (its first send - 5 ms to
its last answer), how long each CPU ran what (by command name; idle is
`swapper`), and for the gateway's threads (`--threads`, a command-name
prefix) how long they were runnable but not running (switched out in state
R) and how long asleep. A stall with a CPU idle while a worker waits
runnable is the scheduler's; a CPU held by another process is sharing; a
worker asleep with both CPUs busy elsewhere is the gateway waiting on them.

It also counts the pauses of the whole machine: both CPUs idle for over a
millisecond while the client had a send due (at these rates one is due
every 100 µs or so, and the client's timer wakes a CPU for it), with no
switch on either CPU until the pause ends. On a virtual machine that is
the host not running the guest's CPUs.
"""
import argparse
import collections
import re

SWITCH = re.compile(
    r"\s*(?P<comm>.+?)\s+(?P<tid>\d+) \[(?P<cpu>\d+)\]\s+(?P<t>[\d.]+): sched:sched_switch: "
    r"prev_comm=(?P<pc>.*) prev_pid=(?P<pp>\d+) prev_prio=\d+ prev_state=(?P<st>\S+) ==> "
    r"next_comm=(?P<nc>.*) next_pid=(?P<np>\d+)"
)


def read_timeline(path):
    start = rate = None
    rows = []
    with open(path) as f:
        for line in f:
            if line.startswith("# start_monotonic"):
                start = int(line.split()[2]) / 1e9
            elif line.startswith("# rate"):
                rate = float(line.split()[2])
            elif not line.startswith("#"):
                k, us = line.split()
                rows.append((int(k), int(us)))
    if start is None or rate is None:
        raise SystemExit(f"{path}: no '# start_monotonic' or '# rate' line (an older load_fixed_rate?)")
    return start, rate, rows


def clusters(rows, rate, gap=0.005):
    lat = sorted(us for _, us in rows)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    out, prev = [], None
    for k, us in rows:
        if us < p99:
            continue
        t = k / rate
        if prev is None or t - prev > gap:
            out.append({"first": t, "last": t, "n": 0, "max_us": 0})
        c = out[-1]
        c["last"], c["n"], c["max_us"], prev = t, c["n"] + 1, max(c["max_us"], us), t
    return p99, sorted(out, key=lambda c: -c["n"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("timeline")
    ap.add_argument("sched", help="perf script -F comm,tid,cpu,time,event,trace output")
    ap.add_argument("--top", type=int, default=4)
    ap.add_argument("--threads", default="callgate-worker", help="command-name prefix of the gateway's workers")
    a = ap.parse_args()

    start, rate, rows = read_timeline(a.timeline)
    p99, cls = clusters(rows, rate)
    wins = [(start + c["first"] - 0.005, start + c["last"] + c["max_us"] / 1e6, c) for c in cls[: a.top]]
    if not wins:
        raise SystemExit("no tail")
    end = max(b for _, b, _ in wins)
    ran = [collections.defaultdict(float) for _ in wins]      # (cpu, comm) -> s
    waited = [collections.defaultdict(float) for _ in wins]   # worker state -> s
    on_cpu = {}   # cpu -> (comm, since)
    off = {}      # worker tid -> (state, since)
    seen = False
    run_end = start + len(rows) / rate
    idle = {}     # cpu -> switched to idle last
    prev_t = None
    pauses = []   # ms
    last_t = None

    def add(acc, key, lo, hi):
        for i, (a0, b0, _) in enumerate(wins):
            x, y = max(a0, lo), min(b0, hi)
            if y > x:
                acc[i][key] += y - x

    with open(a.sched) as f:
        for line in f:
            m = SWITCH.match(line)
            if not m:
                continue
            seen = True
            t, cpu = float(m["t"]), int(m["cpu"])
            if t > max(end, run_end) + 1:
                break
            if (prev_t is not None and start <= prev_t and t <= run_end and idle
                    and all(idle.values()) and t - prev_t > 0.001):
                pauses.append((t - prev_t) * 1000)
            idle[cpu] = m["np"] == "0"
            prev_t = last_t = t
            if cpu in on_cpu:
                comm, since = on_cpu[cpu]
                add(ran, (cpu, comm), since, t)
            on_cpu[cpu] = (m["nc"], t)
            if m["pc"].startswith(a.threads):
                off[m["pp"]] = ("runnable" if m["st"].startswith("R") else "asleep", t)
            if m["nc"].startswith(a.threads) and m["np"] in off:
                state, since = off.pop(m["np"])
                add(waited, state, since, t)
    if not seen:
        raise SystemExit(f"{a.sched}: no sched_switch lines")

    print(f"{len(rows)} requests at {rate:g}/s, p99 {p99 / 1000:.2f} ms; {len(cls)} tail clusters, the {len(wins)} largest:")
    covered = min(run_end, last_t or start) - start
    print(f"(the recording covers {max(covered, 0):.2f} s of the {run_end - start:.2f} s run; "
          f"machine pauses in it: {len(pauses)}, {sum(pauses):.1f} ms in all, longest {max(pauses, default=0):.1f} ms)")
    for i, (a0, b0, c) in enumerate(wins):
        if last_t is None or a0 > last_t:
            print(f"\n+{c['first']:.3f} s: {c['n']} requests over the p99, max {c['max_us'] / 1000:.1f} ms: "
                  "not in the recording")
            continue
        print(f"\n+{c['first']:.3f} s: {c['n']} requests over the p99, max {c['max_us'] / 1000:.1f} ms, "
              f"window {(b0 - a0) * 1000:.1f} ms")
        for cpu in sorted({k[0] for k in ran[i]}):
            items = sorted(((d, k[1]) for k, d in ran[i].items() if k[0] == cpu), reverse=True)[:6]
            print(f"  cpu{cpu}: " + ", ".join(f"{n} {d * 1000:.1f}" for d, n in items))
        w = waited[i]
        print(f"  {a.threads} threads: runnable, not running {w['runnable'] * 1000:.1f} ms; "
              f"asleep {w['asleep'] * 1000:.1f} ms (summed over threads)")


if __name__ == "__main__":
    main()
