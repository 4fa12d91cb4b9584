#!/usr/bin/env python3
"""How long an append to a file waits while the same file is synced.

    python3 benches/load/append_stall.py [--seconds 6] [--sync-every 1.0] [--mode append|other-file]

Appends 2.4 KB lines (about a journal `received` record) at 10,000 a
second to a file in a temporary directory next to this repository's
target/ (the same filesystem callgate's journal uses in the load runs),
while a second thread `fdatasync`s every `--sync-every` seconds, and prints
the distribution of the appends' durations and the syncs' durations.
`--mode other-file` syncs a second file that another thread fills instead,
to show whether the wait belongs to the synced file or to the filesystem.
Bounded by --seconds; removes its files.
"""

import argparse
import os
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--sync-every", type=float, default=1.0)
    ap.add_argument("--mode", choices=["append", "other-file", "no-sync"], default="append")
    args = ap.parse_args()
    base = os.path.join(ROOT, "target")
    os.makedirs(base, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as d:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        fd = os.open(os.path.join(d, "journal.jsonl"), flags, 0o600)
        other = os.open(os.path.join(d, "other.jsonl"), flags, 0o600)
        line = b"x" * 2400 + b"\n"
        stop = threading.Event()
        syncs = []

        def syncer():
            block = b"y" * (1 << 20)
            while not stop.wait(args.sync_every):
                target = fd
                if args.mode == "other-file":
                    for _ in range(int(24 * args.sync_every) or 1):
                        os.write(other, block)
                    target = other
                t = time.perf_counter()
                os.fdatasync(target)
                syncs.append(time.perf_counter() - t)

        if args.mode != "no-sync":
            threading.Thread(target=syncer, daemon=True).start()
        took = []
        end = time.monotonic() + args.seconds
        due = time.perf_counter()
        while time.monotonic() < end:
            due += 0.0001
            t = time.perf_counter()
            os.write(fd, line)
            took.append(time.perf_counter() - t)
            rest = due - time.perf_counter()
            if rest > 0:
                time.sleep(rest)
        stop.set()
        took.sort()
        n = len(took)
        ms = sorted(s * 1000 for s in syncs)
        print(
            f"mode={args.mode} sync_every={args.sync_every}s appends={n} "
            f"p50={took[n // 2] * 1e6:.0f}us p99={took[int(n * 0.99)] * 1e6:.0f}us "
            f"p99.9={took[int(n * 0.999)] * 1e6:.0f}us max={took[-1] * 1e3:.1f}ms "
            f"over_1ms={sum(1 for x in took if x > 0.001)} "
            f"syncs={len(ms)} sync_ms_median={ms[len(ms) // 2] if ms else 0:.1f}"
        )
        os.close(fd)
        os.close(other)


if __name__ == "__main__":
    main()
