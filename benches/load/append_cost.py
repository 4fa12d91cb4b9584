#!/usr/bin/env python3
"""What one journal-sized append costs the kernel, alone.

    python3 benches/load/append_cost.py [DIR]

Appends 200,000 lines of 1,400 bytes (a ~1 KB notification's arrival
record, its body in Base64) to a new file in DIR (default: target/tmp,
which must be on the same file system as the journal you care about),
one line per `write`, then 4 and 16 lines per `write`, each with and
without a thread calling `fdatasync` every 100 ms (callgate's
`fsync = "interval"`). Prints wall and process CPU time per line, and
the cost of the same `os.write` call to /dev/null (Python's own share).
Bounded: a fixed count of writes, then it stops and deletes its file.
"""
import os
import sys
import threading
import time

N = 200_000
LINE = b"x" * 1399 + b"\n"


def run(path, per_write, sync):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    stop = threading.Event()

    def syncer():
        while not stop.wait(0.1):
            os.fdatasync(fd)

    t = threading.Thread(target=syncer) if sync else None
    if t:
        t.start()
    buf = LINE * per_write
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(N // per_write):
        os.write(fd, buf)
    c1, w1 = time.process_time(), time.perf_counter()
    stop.set()
    if t:
        t.join()
    os.close(fd)
    print(f"{per_write:2} lines a write, sync thread {'on ' if sync else 'off'}: "
          f"{(w1 - w0) / N * 1e6:.2f} µs/line wall, {(c1 - c0) / N * 1e6:.2f} µs/line CPU")


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join("target", "tmp")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"append-cost-{os.getpid()}.jsonl")
    try:
        for per_write in (1, 4, 16):
            for sync in (False, True):
                run(path, per_write, sync)
    finally:
        if os.path.exists(path):
            os.unlink(path)
    fd = os.open("/dev/null", os.O_WRONLY)
    w0 = time.perf_counter()
    for _ in range(N):
        os.write(fd, LINE)
    print(f"/dev/null: {(time.perf_counter() - w0) / N * 1e6:.2f} µs/call (Python's own cost)")
    os.close(fd)


if __name__ == "__main__":
    main()
