#!/usr/bin/env python3
"""Instructions per request: callgate's own cost, whatever else runs.

    python3 benches/load/instructions.py [--runs wechat,alipay,dup-wechat] [--seconds 20] [--rate 100] [--store redis]

Throughput and even CPU time per request move with what else the machine
runs (other builds, the load generator's placement). Instructions do not:
this runs callgate under valgrind's callgrind (every thread counted),
offers it `--rate` requests a second from the signed corpus of run.py
(`load_fixed_rate`, open loop, 8 connections) for `--seconds`, and
divides the instructions executed between two counter snapshots
(`callgrind_control --zero` after the warm-up, `--dump` at the end) by the
requests callgate's own /metrics counted between them. The rate is far
below what callgate manages under valgrind (about 300/s), so each request
is served on its own: a saturating client would let one wake-up serve
several requests, and the count per request would move with the batching. The shop is nginx
`return 200`, as in run.py; the configuration is run.py's (journal on,
`fsync = "interval"`; `-json`: info-level JSON logs to a file; `-text`: info-level text logs;
`-nojournal`: `[journal] enabled = false`).

A one-off cost that falls inside the window (aws-lc seeds its random
generator from CPU jitter the first time it is asked: 100 to 400 million
instructions, `tree_jitter_initialize_once`) is left out of the figure
(its count is shown in the last column); any other outlier: run twice
and keep the lower figure.
Instructions are not time: a cache miss or a system call's kernel work is
not in them (callgrind counts user space only). Use them to compare two
builds of callgate on the same scenario; use run.py on a quiet machine for
time.

`--store redis` runs each against a fresh redis-server (run.py's): the
difference from the memory store is what the Redis client costs callgate
itself, apart from what redis-server and the shared cores cost.

Needs valgrind (`apt-get install -y valgrind`), wrk, nginx, redis-server
for `--store redis`, and the corpus (run.py generates it).
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (run.py: servers, corpus, wrk)


# aws-lc's one-time seeding of its random generator from CPU jitter
# (`tree_jitter_initialize_once`, behind a `pthread_once`): 100 to 400
# million instructions once per process, whenever the first request that
# asks for randomness happens to fall. Not a per-request cost.
ONCE_ONLY = "tree_jitter_initialize_once"


def totals(path):
    """The instruction count (`totals:` / `summary:`) of a callgrind dump,
    and the inclusive count of the calls to `ONCE_ONLY` in it."""
    total, once, cfn, pending = None, 0, None, False
    with open(path) as f:
        for line in f:
            m = re.match(r"^(?:totals|summary):\s+(\d+)", line)
            if m:
                total = int(m.group(1))
            elif line.startswith("cfn="):
                cfn = line[4:].strip()
            elif line.startswith("calls="):
                pending = True
            elif pending and line[:1].isdigit():
                pending = False
                if cfn == ONCE_ONLY:
                    once += int(line.split()[1])
    if total is None:
        raise RuntimeError(f"no totals in {path}")
    return total, once


def requests(server):
    return sum(run.callgate_counts(server).values())


def measure(name, work, callgate, seconds, rate, workers, store):
    kind = run.WECHAT if "wechat" in name else run.ALIPAY
    total_lines = run.corpus_lines(kind[2])
    out_dir = os.path.join(work, f"cg-{name}")
    os.makedirs(out_dir)
    wrapper = os.path.join(work, "callgate-under-callgrind")
    with open(wrapper, "w") as f:
        f.write(
            "#!/bin/sh\nexec valgrind --tool=callgrind --quiet --compress-strings=no --compress-pos=no "
            f"--callgrind-out-file={out_dir}/cg.out {callgate} \"$@\"\n"
        )
    os.chmod(wrapper, 0o755)
    run.CALLGATE = wrapper
    run.WORKERS = workers
    up = run.start_upstream(work)
    servers = [up]
    try:
        redis = None
        if store == "redis":
            redis = run.start_redis(work)
            servers.append(redis)
        # Under valgrind callgate starts slowly: allow for it.
        saved = run.wait_port
        run.wait_port = lambda port, timeout=20.0: saved(port, 120.0)
        try:
            target = run.start_callgate(work, up.port, json_logs="-json" in name,
                                        text_logs="-text" in name,
                                        journal="-nojournal" not in name,
                                        redis_port=redis.port if redis else None)
        finally:
            run.wait_port = saved
        servers.append(target)
        dup = name.startswith("dup-")
        if dup:
            run.deliver_once(target.port, kind, 2000)
        # Warm-up (connections, allocator), then count from zero. Forwards
        # warm up on the corpus's tail: the measured lines are all new.
        run.wrk(target.port, kind, 2, total_lines - run.WARMUP_LINES if not dup else 0,
                run.WARMUP_LINES if not dup else 2000, threads=1, connections=8)
        subprocess.run(["callgrind_control", "--zero", str(target.proc.pid)],
                       check=True, capture_output=True)
        before = requests(target)
        run.fixed_rate(target.port, kind, rate, seconds, 0, connections=8)
        after = requests(target)
        subprocess.run(["callgrind_control", "--dump", str(target.proc.pid)],
                       check=True, capture_output=True)
        dumps = sorted(glob.glob(os.path.join(out_dir, "cg.out.*")), key=os.path.getmtime)
        if not dumps:
            raise RuntimeError(f"callgrind wrote no dump in {out_dir}")
        n = after - before
        instructions, once = totals(dumps[-1])
        return {"name": name, "requests": n, "instructions": instructions,
                "per_request": (instructions - once) / n if n else float("nan"),
                "once_only": once, "dump": dumps[-1]}
    finally:
        for s in reversed(servers):
            s.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="wechat,alipay,dup-wechat")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rate", type=int, default=100, help="requests a second (dup runs: at most 2000 in all)")
    ap.add_argument("--callgate", default=run.CALLGATE, help="the callgate binary (default: target/release/callgate)")
    ap.add_argument("--workers", type=int, help="listen.workers (default: one per core)")
    ap.add_argument("--store", choices=["memory", "redis"], default="memory",
                    help="the replay store (redis: a fresh redis-server per run)")
    ap.add_argument("--keep", metavar="DIR", help="copy the callgrind dumps here (callgrind_annotate reads them)")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "wrk", "nginx") + (("redis-server",) if args.store == "redis" else ()):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found")
    callgate = os.path.abspath(args.callgate)
    work = tempfile.mkdtemp(prefix="callgate-instr-")
    try:
        print(f"callgate {callgate}, {args.rate}/s for {args.seconds}s per run under callgrind, "
              f"{args.store} store\n")
        print("| run | requests | instructions / request | one-time RNG seeding left out |")
        print("|---|---:|---:|---:|")
        for name in args.runs.split(","):
            r = measure(name, work, callgate, args.seconds, args.rate, args.workers, args.store)
            print(f"| {name} | {r['requests']:,} | {r['per_request']:,.0f} | {r['once_only']:,} |", flush=True)
            if args.keep:
                os.makedirs(args.keep, exist_ok=True)
                shutil.copy(r["dump"], os.path.join(args.keep, f"{name}.callgrind"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
