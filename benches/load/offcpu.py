#!/usr/bin/env python3
"""Where callgate's worker threads wait: their time off the CPU, by cause.

    perf record -k mono -e sched:sched_switch -e sched:sched_wakeup -g -a \\
        -o sw.data -- sleep 60          # while a load run is going
    perf script -i sw.data -F comm,tid,time,event,trace,ip,sym > sw.txt
    python3 benches/load/offcpu.py sw.txt [--threads callgate-work]

Pairs each switch-out of a thread whose name starts with `--threads` with
its next switch-in, and sorts the time between them by why the thread
left the CPU:

  preempted (runnable)   switched out while it could still run: another
                         task took the core (the thread waits in the run
                         queue)
  epoll_wait (idle)      waiting for work: no request to serve
  futex < FN < ...       blocked on a lock or condition variable in FN
  D other                uninterruptible sleep in the kernel (a file
                         system lock, I/O)

and prints, per cause, how many waits, their total, how many were over 1
and over 5 ms, and the longest. A request on a worker waits at least as
long as its worker is off the CPU with the request already read, so the
waits that are neither idle nor short are the candidates for a tail.
Reads a text file; runs nothing; bounded by its input.
"""

import argparse
import collections
import re

HEADER = re.compile(r"^\s*(\S.*?)\s+(\d+)\s+([\d.]+):\s+sched:(\S+):\s*(.*)$")
SWITCH = re.compile(
    r"prev_comm=(.*?) prev_pid=(\d+) prev_prio=\d+ prev_state=(\S+) "
    r"==> next_comm=(.*?) next_pid=(\d+)"
)
PLUMBING = (
    "futex",
    "__futex",
    "do_futex",
    "__x64",
    "do_syscall",
    "entry_SYSCALL",
    "schedule",
    "__schedule",
    "finish_task",
    "syscall",
)


def cause(state, stack):
    joined = " ".join(stack)
    if "futex_wait" in joined:
        user = [s for s in stack if not s.startswith(PLUMBING)][:2]
        return "futex < " + " < ".join(user)
    if "do_epoll_wait" in joined:
        return "epoll_wait (idle)"
    if state.startswith("R"):
        return "preempted (runnable)"
    return state + " other"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("script", help="perf script output (see above)")
    ap.add_argument("--threads", default="callgate-work", help="thread name prefix")
    args = ap.parse_args()

    out = {}  # tid -> (time switched out, state, stack)
    waits = collections.defaultdict(list)
    current = None
    stack = []

    def event_done():
        if current is None:
            return
        _comm, _tid, t, event, trace = current
        if event != "sched_switch":
            return
        m = SWITCH.search(trace)
        if not m:
            return
        prev_comm, prev_pid, prev_state, _next_comm, next_pid = m.groups()
        t = float(t)
        if prev_comm.startswith(args.threads):
            out[prev_pid] = (t, prev_state, stack[:40])
        if next_pid in out:
            t0, state, st = out.pop(next_pid)
            waits[cause(state, st)].append(t - t0)

    with open(args.script, errors="replace") as f:
        for line in f:
            m = HEADER.match(line)
            if m:
                event_done()
                current = m.groups()
                stack = []
                continue
            parts = line.split()
            if len(parts) > 1:
                stack.append(" ".join(parts[1:]))
    event_done()

    total = sum(len(v) for v in waits.values())
    print(f"switch-outs of {args.threads}*: {total}")
    print(f"{'cause':<72} {'waits':>7} {'total ms':>10} {'>1 ms':>6} {'>5 ms':>6} {'max ms':>8}")
    for k, v in sorted(waits.items(), key=lambda kv: -len(kv[1])):
        print(
            f"{k[:72]:<72} {len(v):>7} {sum(v) * 1000:>10.1f} "
            f"{sum(1 for x in v if x > 0.001):>6} {sum(1 for x in v if x > 0.005):>6} "
            f"{max(v) * 1000:>8.2f}"
        )


if __name__ == "__main__":
    main()
