#!/usr/bin/env python3
"""What each way of claiming and confirming an event costs redis-server.

    python3 benches/load/redis_commands.py [--groups 200000] [--repeat 3]

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
  lua-claim-nx    a leaner claim script (SET NX PX, then SET NX PX of the
                  counter; INCR only when the counter exists)
  lua-confirm-get a leaner confirm script (SET PX GET, DEL)
  lua-copy        the claim script on a key already delivered (GET, return)
  lua-copy-nx     the leaner claim script on a delivered key (SET NX, GET)
  get-copy        a bare GET of a delivered key

Needs redis-server and redis-cli (Redis 6.2 or later for SET ... GET).
Bounded: a few seconds per variant; the server is stopped on exit.
"""

import argparse
import hashlib
import os
import shutil
import statistics
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

# The same two with fewer commands: the claim takes the key with SET NX
# (a copy's answer read only when that fails) and starts the attempt
# counter with SET NX (INCR only on a re-claim); the confirm reads the old
# value with SET ... GET (Redis 6.2).
CLAIM_NX = """if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then
  if redis.call('SET', KEYS[2], 1, 'PX', ARGV[3], 'NX') then return 1 end
  return redis.call('INCR', KEYS[2])
end
return redis.call('GET', KEYS[1])"""

CONFIRM_GET = """local v = redis.call('SET', KEYS[1], 'd', 'PX', ARGV[2], 'GET')
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
    claim_nx = hashlib.sha1(CLAIM_NX.encode()).hexdigest()
    confirm_get = hashlib.sha1(CONFIRM_GET.encode()).hexdigest()
    out = []
    for i in range(n):
        k = "callgate:shop-wechat:ev:%064x" % (base + i)
        at, v = k + ":at", "f:0123456789ab:%d" % i
        if variant in ("lua-claim", "lua-copy"):
            out.append(resp("EVALSHA", claim, 2, k, at, v, IN_FLIGHT_MS, TTL_MS))
        elif variant in ("lua-claim-nx", "lua-copy-nx"):
            out.append(resp("EVALSHA", claim_nx, 2, k, at, v, IN_FLIGHT_MS, TTL_MS))
        elif variant == "lua-confirm-get":
            out.append(resp("EVALSHA", confirm_get, 2, k, at, v, TTL_MS))
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
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for tool in ("redis-server", "redis-cli"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install -y redis-server")
    work = tempfile.mkdtemp(prefix="callgate-redis-cmds-")
    server = run.start_redis(work)
    port = server.port
    try:
        for script in (CLAIM, CONFIRM, CLAIM_NX, CONFIRM_GET):
            subprocess.run(["redis-cli", "-p", str(port), "SCRIPT", "LOAD", script],
                           check=True, capture_output=True)
        n = args.groups
        # Each group of variants starts on an empty database (the keyspace's
        # size moves the cost per command); in a group each confirm runs on
        # the keys its claim took, and copies on delivered keys.
        plan = [[("lua-claim", 0), ("lua-confirm", 0)],
                [("lua-claim-nx", 0), ("lua-confirm-get", 0)],
                [("native-claim", 0), ("native-confirm", 0)],
                [("multi-claim", 0)],
                [("deliver", 0), ("lua-copy", 0), ("lua-copy-nx", 0), ("get-copy", 0)]]
        names = [v for group in plan for v, _ in group if v != "deliver"]
        spent_us = {v: [] for v in names}
        print(f"redis-server {port}, {n:,} groups per variant, {args.repeat} repeats", flush=True)
        for _ in range(args.repeat):
            for group in plan:
                subprocess.run(["redis-cli", "-p", str(port), "FLUSHALL", "SYNC"],
                               check=True, capture_output=True)
                for variant, base in group:
                    data = groups(variant, n, base)
                    before = cpu_ticks(server.proc.pid)
                    pipe(port, data)
                    spent = cpu_ticks(server.proc.pid) - before
                    if variant != "deliver":
                        spent_us[variant].append(spent * 1e6 / os.sysconf("SC_CLK_TCK") / n)
        print("\n| variant | µs of redis-server CPU per group (each repeat) | median |")
        print("|---|---|---:|")
        for v in names:
            each = " / ".join(f"{us:.2f}" for us in spent_us[v])
            print(f"| {v} | {each} | {statistics.median(spent_us[v]):.2f} |")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
