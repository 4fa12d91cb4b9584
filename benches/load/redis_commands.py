#!/usr/bin/env python3
"""What each way of claiming and confirming an event costs redis-server.

    python3 benches/load/redis_commands.py [--groups 200000]

Starts a redis-server of its own (run.py's: 127.0.0.1, a free port, no
persistence, `noeviction`),
and for each variant below sends GROUPS command groups through
`redis-cli --pipe` (many groups per read, as callgate's shared connection
sends them under load), each group on a new event key, and reports the
CPU redis-server spent per group (utime + stime from /proc, 10 ms ticks).
The keys have callgate's shape (`callgate:<route>:ev:<64 hex digits>`,
values `f:<instance>:<token>`), and the TTLs its defaults.

  lua-claim       callgate's claim script (EVALSHA: GET, SET PX, INCR, PEXPIRE)
  native-claim    SET NX PX GET, INCR, PEXPIRE (no script)
  multi-claim     the same inside MULTI/EXEC
  lua-confirm     callgate's confirm script (EVALSHA: GET, SET PX, DEL)
  native-confirm  SET PX GET, DEL (no script)
  lua-copy        the claim script on a key already delivered (GET, return)
  get-copy        a bare GET of a delivered key

Needs redis-server and redis-cli (Redis 6.2 or later for SET ... GET).
Bounded: a few seconds per variant; the server is stopped on exit.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (run.py: its redis-server)

CLAIM = """local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local n = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return n"""

CONFIRM = """local v = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], 'd', 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
if v == ARGV[1] then return 1 end
if v == false then return 2 end
return 3"""

IN_FLIGHT_MS = 330_000
TTL_MS = 172_800_000


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def groups(variant, n, base):
    claim = hashlib.sha1(CLAIM.encode()).hexdigest()
    confirm = hashlib.sha1(CONFIRM.encode()).hexdigest()
    out = []
    for i in range(n):
        k = "callgate:shop-wechat:ev:%064x" % (base + i)
        at, v = k + ":at", "f:0123456789ab:%d" % i
        if variant in ("lua-claim", "lua-copy"):
            out.append(resp("EVALSHA", claim, 2, k, at, v, IN_FLIGHT_MS, TTL_MS))
        elif variant == "native-claim":
            out.append(resp("SET", k, v, "NX", "PX", IN_FLIGHT_MS, "GET") + resp("INCR", at)
                       + resp("PEXPIRE", at, TTL_MS))
        elif variant == "multi-claim":
            out.append(resp("MULTI") + resp("SET", k, v, "NX", "PX", IN_FLIGHT_MS, "GET")
                       + resp("INCR", at) + resp("PEXPIRE", at, TTL_MS) + resp("EXEC"))
        elif variant == "lua-confirm":
            out.append(resp("EVALSHA", confirm, 2, k, at, v, TTL_MS))
        elif variant == "native-confirm":
            out.append(resp("SET", k, "d", "PX", TTL_MS, "GET") + resp("DEL", at))
        elif variant == "get-copy":
            out.append(resp("GET", k))
        elif variant == "deliver":
            out.append(resp("SET", k, "d", "PX", TTL_MS))
    return b"".join(out)


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def pipe(port, data):
    r = subprocess.run(["redis-cli", "-p", str(port), "--pipe"], input=data,
                       capture_output=True, timeout=300)
    if r.returncode != 0 or b"errors: 0" not in r.stdout:
        raise RuntimeError(f"redis-cli --pipe: {r.stdout.decode(errors='replace')[-300:]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", type=int, default=200_000)
    args = ap.parse_args()
    for tool in ("redis-server", "redis-cli"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install -y redis-server")
    work = tempfile.mkdtemp(prefix="callgate-redis-cmds-")
    server = run.start_redis(work)
    port = server.port
    try:
        for script in (CLAIM, CONFIRM):
            subprocess.run(["redis-cli", "-p", str(port), "SCRIPT", "LOAD", script],
                           check=True, capture_output=True)
        n = args.groups
        # Each claim variant on keys of its own; each confirm on the keys
        # its claim took; copies on delivered keys.
        plan = [("lua-claim", 0), ("lua-confirm", 0),
                ("native-claim", 10 * n), ("native-confirm", 10 * n),
                ("multi-claim", 20 * n), ("deliver", 30 * n),
                ("lua-copy", 30 * n), ("get-copy", 30 * n)]
        print(f"redis-server {port}, {n:,} groups per variant, CPU per group\n")
        print("| variant | µs of redis-server CPU per group |")
        print("|---|---:|")
        for variant, base in plan:
            data = groups(variant, n, base)
            before = cpu_ticks(server.proc.pid)
            pipe(port, data)
            spent = cpu_ticks(server.proc.pid) - before
            if variant != "deliver":
                us = spent * 1e6 / os.sysconf("SC_CLK_TCK") / n
                print(f"| {variant} | {us:.2f} |", flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
