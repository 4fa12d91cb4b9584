#!/usr/bin/env python3
"""callgate next to nginx, in one run, on loopback.

    python3 benches/load/run.py [--duration 10] [--repeat 3] [--quiet-load 1.0]

Measures, each REPEAT times with fresh server processes, and reports medians:

  upstream        nginx `return 200 "success"` (the shop), hit directly
  nginx           nginx as a plain reverse proxy in front of that upstream
  alipay          callgate forwarding Alipay RSA2 notifications to it
  wechat          callgate forwarding WeChat Pay v2 HMAC-SHA256 notifications
  dup-wechat      callgate answering WeChat v2 duplicates from the store
  dup-alipay      callgate answering Alipay RSA2 duplicates from the store
  *-nojournal     as above with `[journal] enabled = false` (callgate's
                  default, used by every other run, journals each forward)
  *-nosync        as above with `[journal] fsync = "never"` (no sync while
                  requests append: what the sync costs the p99)
  alipay-json     as `alipay`, with info-level JSON logs written to a file
  wechat-json     as `wechat`, with info-level JSON logs written to a file
  alipay-text     as `alipay`, with info-level logs in the default text format
  wechat-text     as `wechat`, with info-level logs in the default text format
  floor-wechat    the floor of any hyper-based gateway (benches/load/floor.rs,
  floor-alipay    the `load_floor` example): thread per core, parse + verify
                  with callgate's library, forward through a hyper-util legacy
                  client per thread; no journal, logs, store or metrics
  floor-conn-*    the same with a per-thread pool of hyper `client::conn::http1`
                  connections instead of the legacy client
  floor-noverify-wechat  the floor forwarding without parse or verify
  floor-*-duties  the floor with what callgate's default configuration adds
                  to a forward, done by callgate's own journal and log
                  writer: the arrival journaled before the forward, the
                  outcome after, an info JSON log line (`--duties`);
                  `floor-*-journal` and `floor-*-log` do one of the two
  floor-*-minduties  the same duties done as cheaply as this architecture
                  allows, with none of callgate's code (`--min-duties`):
                  raw records appended to a file per thread, batched,
                  before the forward and after, a text log line formatted
                  by hand; the least those duties can cost
  dup-floor-*     the floor answering duplicates (`--dup`): warmed up and
                  measured as `dup-wechat`/`dup-alipay`, each verified
                  notification's event looked up in one map shared by the
                  worker threads, delivered ones answered with the success
                  ack and not forwarded, e.g. `dup-floor-conn-wechat`,
                  `dup-floor-conn-alipay`; `dup-floor-*-minduties` also
                  writes each duplicate's log line as `--min-duties` does
                  (no journal records: callgate journals no duplicate); the
                  least a duplicate can cost

with `wrk -t2 -c64` and about 1 KB bodies (benches/load/corpus.lua walks a
corpus of distinct, genuinely signed notifications, generated once by the
`load_corpus` example and cached in target/load-corpus/). Then the p99 at
half load: the `load_fixed_rate` example (open loop, latency from the
intended send time, like wrk2) offers half of callgate's median maximum
to callgate and to nginx alike.

The measured window opens when every wrk thread has read its share of the
corpus and sends (corpus.lua's ready file; wrk starts its threads one after
the other) and closes when wrk ends; requests are the server's own count in
that window (callgate's /metrics, nginx's stub_status).

For each: requests/s, p50/p99 latency, CPU per request of the server under
test (utime+stime from /proc/PID/stat, nginx master and workers summed) and
of the upstream, context switches per request (all threads), peak RSS
(VmHWM) of the server, and the 1-minute load average when it started.
`--profile DIR` also records a perf cpu-clock profile of each callgate run. Every forwarding run is checked against callgate's
own /metrics: each request must have been forwarded (duplicates: answered as
duplicate), or the run is reported as invalid. The floor has no /metrics: its
requests are counted at the upstream (each 200 it answers was forwarded and
confirmed), and a floor run is invalid if wrk saw an error or the upstream
received fewer requests than wrk counted answers. A `dup-floor-*` run counts
the floor's duplicates (its `GET /__floor_count`) and is invalid if wrk saw
an error, the floor answered fewer duplicates than wrk counted answers, or
the upstream received any request while wrk ran.

Also: peak RSS with 1,000,000 remembered events (`store_memory` example).

Everything binds 127.0.0.1, runs in a temporary directory, is bounded by
--duration and stops by itself; the servers it starts are stopped on exit.
Needs: cargo, wrk, nginx (`apt-get install -y wrk nginx`).
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(ROOT, "benches", "load")
RELEASE = os.path.join(ROOT, "target", "release")
CORPUS_DIR = os.path.join(ROOT, "target", "load-corpus")
CLK_TCK = os.sysconf("SC_CLK_TCK")
CALLGATE = os.path.join(RELEASE, "callgate")
# listen.workers for callgate; None: its default (one per core).
WORKERS = None
# `--pin GW:REST`: CPU lists (taskset -c) for the server under test and for
# everything else (the shop, redis-server, the load client).
PIN = None


def pinned(argv, role):
    """`argv` run on the CPUs of `role` ("gateway" or "rest") under --pin."""
    if PIN is None:
        return argv
    return ["taskset", "-c", PIN[role]] + argv


def cpu_count(role):
    """How many CPUs `role` has under --pin (taskset -c syntax: 0,1 or 0-1)."""
    n = 0
    for part in PIN[role].split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n
# callgate's replay store: "memory" or "redis" (--store).
STORE = "memory"

ALIPAY = ("/notify/alipay", "application/x-www-form-urlencoded; charset=utf-8", "alipay.txt")
WECHAT = ("/notify/wechat", "text/xml", "wechat_v2.txt")
WARMUP_LINES = 20000  # the corpus's last lines, for warm-ups
DUP_EVENTS = 2000  # events delivered once, then sent again and again

started_procs = []


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def steal_ms():
    """CPU time the hypervisor took from this VM's CPUs so far (all CPUs, ms):
    time a runnable thread here waited while no guest CPU ran at all."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) * 1000 / os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


# === processes ===


def children(pid):
    """Direct children of pid (nginx workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def context_switches(pids):
    """Voluntary + involuntary context switches of every thread of pids."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                            total += int(line.split()[1])
            except OSError:
                pass
    return total


def peak_rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class Server:
    def __init__(self, name, argv, port, env=None, stdout=None, cwd=None):
        self.name = name
        self.port = port
        out = open(stdout, "wb") if stdout else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.PIPE if not stdout else out, cwd=cwd
        )
        started_procs.append(self.proc)
        try:
            wait_port(port)
        except RuntimeError:
            self.stop()
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            raise RuntimeError(f"{name} did not start: {err[-2000:]}")

    def pids(self):
        return [self.proc.pid] + children(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc in started_procs:
            started_procs.remove(self.proc)


def nginx_conf(work, name, port, body, role):
    prefix = os.path.join(work, name)
    workers = cpu_count(role) if PIN else "auto"
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(
            f"""worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{body}
}}
"""
        )
    return Server(name, pinned(["nginx", "-p", prefix, "-c", conf, "-g", "daemon off;"], role), port)


def start_upstream(work):
    port = free_port()
    return nginx_conf(
        work,
        "upstream",
        port,
        f"""    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "success"; }}
        location = {STATUS_PATH} {{ stub_status; }}
    }}""",
        "rest",
    )


def start_nginx_proxy(work, upstream_port):
    port = free_port()
    return nginx_conf(
        work,
        "proxy",
        port,
        f"""    upstream shop {{ server 127.0.0.1:{upstream_port}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://shop;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location = {STATUS_PATH} {{ stub_status; }}
    }}""",
        "gateway",
    )


def start_redis(work):
    """A fresh redis-server for one run (no persistence, noeviction)."""
    port = free_port()
    d = os.path.join(work, "redis")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--maxmemory-policy", "noeviction", "--dir", d]
    return Server("redis", pinned(argv, "rest"), port, stdout=os.path.join(d, "redis.log"), cwd=d)


def redis_stats(store):
    """redis-server's command and read() counts (INFO stats)."""
    out = subprocess.run(["redis-cli", "-p", str(store.port), "INFO", "stats"],
                         capture_output=True, text=True, check=True).stdout
    keys = ("total_commands_processed", "total_reads_processed")
    stats = {}
    for line in out.splitlines():
        k, _, v = line.strip().partition(":")
        if k in keys:
            stats[k] = int(v)
    return stats


def start_callgate(work, upstream_port, json_logs=False, journal=True, redis_port=None, fsync=None,
                   text_logs=False):
    port, admin = free_port(), free_port()
    store = f"redis://127.0.0.1:{redis_port}/0" if redis_port else "memory"
    d = os.path.join(work, "callgate")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(d, "rules"))
    certs = os.path.join(ROOT, "certs", "dev")
    with open(os.path.join(d, "callgate.toml"), "w") as f:
        f.write(
            f"""rules_dir = "rules"
[listen]
addr = "127.0.0.1:{port}"
{f"workers = {WORKERS}" if WORKERS else "# workers: one per core (the default)"}
[admin]
addr = "127.0.0.1:{admin}"
[replay]
store = "{store}"
ttl = "48h"
max_entries = 1_000_000
[journal]
enabled = {"true" if journal else "false"}   # the default: on, fsync = "interval"
{f'fsync = "{fsync}"' if fsync else ""}
"""
        )
    with open(os.path.join(d, "rules", "load.toml"), "w") as f:
        f.write(
            f"""[[route]]
name = "load-alipay"
path = "{ALIPAY[0]}"
provider = "alipay"
allow = ["127.0.0.1/32"]
upstream = "http://127.0.0.1:{upstream_port}/plus/notify.php"
upstream_secret_file = "{certs}/upstream.secret"
forward = "original"
max_age = "25h"
success_body = "success"
[route.keys]
public_key = "{certs}/alipay_public.pem"
app_id = "2021000000000001"

[[route]]
name = "load-wechat"
path = "{WECHAT[0]}"
provider = "wechat_v2"
allow = ["127.0.0.1/32"]
upstream = "http://127.0.0.1:{upstream_port}/plus/notify.php"
upstream_secret_file = "{certs}/upstream.secret"
forward = "original"
max_age = "25h"
success_body = "success"
[route.keys]
mch_id = "1900000109"
appid = "wx2421b1c4370ec43b"
api_key_file = "{certs}/wechat_v2_api.key"
"""
        )
    env = dict(os.environ)
    argv = [CALLGATE]
    if json_logs:
        env["CALLGATE_LOG"] = "info"
        argv += ["--log-format", "json"]
    elif text_logs:
        # The default format (text), at info.
        env["CALLGATE_LOG"] = "info"
    else:
        env["CALLGATE_LOG"] = "warn"
    argv += ["run", "-c", os.path.join(d, "callgate.toml")]
    s = Server("callgate", pinned(argv, "gateway"), port, env=env, stdout=os.path.join(d, "callgate.log"), cwd=d)
    s.admin = admin
    s.logfile = os.path.join(d, "callgate.log")
    return s


def start_floor(work, upstream_port, name):
    """The `load_floor` example, options from the run's name."""
    port = free_port()
    d = os.path.join(work, "floor")
    os.makedirs(d, exist_ok=True)
    argv = [os.path.join(RELEASE, "examples", "load_floor"), str(port),
            f"http://127.0.0.1:{upstream_port}/plus/notify.php"]
    if WORKERS:
        argv += ["--threads", str(WORKERS)]
    if "-conn" in name:
        argv += ["--client", "conn"]
    if "-noverify" in name:
        argv += ["--no-verify"]
    if "-duties" in name or "-journal" in name:
        argv += ["--journal", os.path.join(d, "journal")]
    if "-duties" in name or "-log" in name:
        argv += ["--log"]
    if "-minduties" in name:
        argv += ["--min-duties", os.path.join(d, "min")]
    if name.startswith("dup-"):
        argv += ["--dup"]
    return Server("floor", pinned(argv, "gateway"), port, stdout=os.path.join(d, "floor.log"), cwd=d)


STATUS_PATH = "/__nginx_status"


def nginx_requests(server):
    """nginx's own count of requests served (stub_status), this read included."""
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    c.request("GET", STATUS_PATH)
    lines = c.getresponse().read().decode().splitlines()
    # "Active connections: N" / "server accepts handled requests" / " A H R"
    return int(lines[2].split()[2])


def server_requests(server):
    """Requests the server under test has answered so far, by its own count
    (the floor's: the duplicates it answered, `--dup` only)."""
    if server.name == "callgate":
        return sum(callgate_counts(server).values())
    if server.name == "floor":
        return floor_duplicates(server)
    return nginx_requests(server)


def floor_duplicates(server):
    """The duplicates the floor (`load_floor --dup`) has answered so far."""
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    c.request("GET", "/__floor_count")
    return int(c.getresponse().read().decode())


def callgate_counts(server):
    """callgate_requests_total by outcome, summed over routes."""
    c = http.client.HTTPConnection("127.0.0.1", server.admin, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("callgate_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            outcome = labels.split('outcome="')[1].split('"')[0]
            counts[outcome] = counts.get(outcome, 0) + float(value)
    return counts


# === load generators ===


def corpus_lines(name):
    with open(os.path.join(CORPUS_DIR, name), "rb") as f:
        return sum(1 for _ in f)


def wrk(port, kind, duration, first, count, threads=2, connections=64, on_ready=None):
    """Runs wrk over the corpus. `on_ready()` is called once every wrk thread
    has read its share of the corpus and is sending (see corpus.lua); what it
    returns is handed back as the second value."""
    path, ctype, corpus = kind
    ready = tempfile.mktemp(prefix="wrk-ready-")
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "-s",
        os.path.join(HERE, "corpus.lua"),
        f"http://127.0.0.1:{port}{path}",
        "--",
        os.path.join(CORPUS_DIR, corpus),
        path,
        ctype,
        str(first),
        str(count),
        str(threads),
        ready,
    ]
    proc = subprocess.Popen(pinned(argv, "rest"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started_procs.append(proc)
    try:
        mark = None
        deadline = time.monotonic() + 600
        while on_ready is not None and not os.path.exists(ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        if on_ready is not None and os.path.exists(ready):
            mark = on_ready()
        stdout, stderr = proc.communicate(timeout=duration + 600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        started_procs.remove(proc)
        if os.path.exists(ready):
            os.unlink(ready)
    for line in stdout.splitlines():
        if line.startswith("WRK_JSON "):
            r = json.loads(line[len("WRK_JSON ") :])
            r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
            return r, mark
    raise RuntimeError(f"wrk failed: {stdout}\n{stderr}")


def fixed_rate(port, kind, rate, duration, first, timeline=None, connections=64, threads=0):
    path, ctype, corpus = kind
    argv = [
        os.path.join(RELEASE, "examples", "load_fixed_rate"),
        f"127.0.0.1:{port}",
        path,
        ctype,
        os.path.join(CORPUS_DIR, corpus),
        str(first),
        str(int(rate)),
        str(duration),
        str(connections),
    ]
    env = dict(os.environ)
    if timeline:
        env["FIXED_RATE_TIMELINE"] = timeline
    if threads:
        env["FIXED_RATE_THREADS"] = str(threads)
    out = subprocess.run(pinned(argv, "rest"), capture_output=True, text=True, timeout=duration + 600, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"load_fixed_rate failed: {out.stderr}")
    return json.loads(out.stdout)


def deliver_once(port, kind, count):
    """Sends the corpus's first `count` bodies once each (to make duplicates)."""
    path, ctype, corpus = kind
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    with open(os.path.join(CORPUS_DIR, corpus), "rb") as f:
        for i, line in enumerate(f):
            if i >= count:
                break
            c.request("POST", path, body=line.rstrip(b"\n"), headers={"Content-Type": ctype})
            r = c.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"pre-delivery {i} got {r.status}")


# === one measurement ===


def measure(name, work, args, fixed_rps=None):
    """Starts fresh servers, warms up, measures, stops. Returns a result dict."""
    kind = WECHAT if "wechat" in name else ALIPAY
    total_lines = corpus_lines(kind[2])
    result = {"name": name, "load1": loadavg()}
    up = start_upstream(work)
    servers = [up]
    store = None  # the run's redis-server, for its CPU per request
    try:
        if name == "upstream":
            target = up
        elif name == "nginx" or name.startswith("nginx-"):
            target = start_nginx_proxy(work, up.port)
            servers.append(target)
        elif name.startswith(("floor-", "dup-floor-")):
            target = start_floor(work, up.port, name)
            servers.append(target)
        else:
            redis_port = None
            if STORE == "redis":
                store = start_redis(work)
                servers.append(store)
                redis_port = store.port
            target = start_callgate(
                work, up.port, json_logs="-json" in name, journal="-nojournal" not in name,
                text_logs="-text" in name,
                fsync="never" if "-nosync" in name else None,
                redis_port=redis_port,
            )
            servers.append(target)
        callgate = target if target.name == "callgate" else None
        dup = name.startswith("dup-")
        floor = target.name == "floor"
        forwarding = (callgate is not None or floor) and not dup
        # What counts the requests: the server itself, or for the floor (no
        # /metrics) the upstream it forwards to; for the floor's duplicates
        # (never forwarded) its own count of them.
        counter = up if floor and not dup else target

        # Warm-up: connections, page cache, allocator. Forwarding runs use the
        # corpus's tail, so the measured lines are all new to the gateway.
        if dup:
            deliver_once(target.port, kind, DUP_EVENTS)
            first, count = 0, DUP_EVENTS
            wrk(target.port, kind, 1, first, count)
        else:
            wrk(target.port, kind, 1, total_lines - WARMUP_LINES, WARMUP_LINES)
            first, count = 0, (total_lines - WARMUP_LINES if forwarding else 50000)
        perf = None

        def snapshot():
            """The start of the measured window: every counter read here."""
            nonlocal perf
            mark = {
                "counts": callgate_counts(callgate) if callgate else None,
                "served": server_requests(counter),
                "cpu": cpu_seconds(target.pids()),
                "cs": context_switches(target.pids()),
                "ucpu": cpu_seconds(up.pids()) if target is not up else None,
                "scpu": cpu_seconds(store.pids()) if store else None,
                "sstats": redis_stats(store) if store else None,
                "load1": loadavg(),
                "steal": steal_ms(),
            }
            if args.profile and fixed_rps is None and target.name in ("callgate", "floor"):
                os.makedirs(args.profile, exist_ok=True)
                data = os.path.join(args.profile, f"{name}.perf.data")
                perf = subprocess.Popen(
                    ["perf", "record", "-e", "cpu-clock", "-F", "1999", *args.perf_args.split(),
                     "-o", data, "-p", str(target.proc.pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            return mark

        up_before = nginx_requests(up) if floor else None
        dup_before = floor_duplicates(target) if floor and dup else None
        if fixed_rps is None:
            # The window opens when every wrk thread is sending (corpus.lua's
            # ready file), not when wrk starts: reading a large corpus takes
            # wrk seconds, one thread after the other, while the first thread
            # already sends. Requests are the server's own count in the window.
            r, mark = wrk(target.port, kind, args.duration, first, count, on_ready=snapshot)
            if mark is None:
                raise RuntimeError("wrk never reported all threads ready")
        else:
            mark = snapshot()
            timeline = None
            if args.timeline:
                os.makedirs(args.timeline, exist_ok=True)
                timeline = os.path.join(args.timeline, f"{name}-{time.strftime('%H%M%S')}.txt")
            r = fixed_rate(target.port, kind, fixed_rps, args.duration, first, timeline,
                           threads=args.client_threads)
            r["requests"] = r["completed"]
            r["rps"] = r["achieved_rps"]
        before = mark["counts"]
        cpu0, cs0, ucpu0 = mark["cpu"], mark["cs"], mark["ucpu"]
        result["load1"] = mark["load1"]
        result["steal_ms"] = steal_ms() - mark["steal"]
        cpu1 = cpu_seconds(target.pids())
        cs1 = context_switches(target.pids())
        if fixed_rps is None:
            # The server's count, less this read's own request for nginx.
            own = callgate is not None or counter is target and floor
            served = server_requests(counter) - mark["served"] - (0 if own else 1)
            r["wrk_requests"] = r["requests"]
            r["requests"] = served
            r["rps"] = served / (r["duration_us"] / 1e6)
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=120)
            data = os.path.join(args.profile, f"{name}.perf.data")
            with open(os.path.join(args.profile, f"{name}.txt"), "w") as f:
                subprocess.run(
                    ["perf", "report", "-i", data, "--no-children", "--sort", "dso,symbol",
                     "--stdio", "--percent-limit", "0.3"],
                    stdout=f, stderr=subprocess.DEVNULL,
                )
        n = max(r["requests"], 1)
        result.update(r)
        result["cpu_us_per_req"] = (cpu1 - cpu0) / n * 1e6
        result["ctx_switches_per_req"] = (cs1 - cs0) / n
        if ucpu0 is not None:
            result["upstream_cpu_us_per_req"] = (cpu_seconds(up.pids()) - ucpu0) / n * 1e6
        if mark["scpu"] is not None:
            result["store_cpu_us_per_req"] = (cpu_seconds(store.pids()) - mark["scpu"]) / n * 1e6
            after = redis_stats(store)
            d = {k: after[k] - mark["sstats"][k] for k in after}
            result["store_commands_per_req"] = d["total_commands_processed"] / n
            # Commands per read(): how far the client's pipelining batches them.
            result["store_commands_per_read"] = (
                d["total_commands_processed"] / max(d["total_reads_processed"], 1))
        result["peak_rss_mb"] = peak_rss_kb(target.pids()) / 1024
        if callgate:
            after = callgate_counts(callgate)
            delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
            result["outcomes"] = {k: int(v) for k, v in delta.items() if v}
            want = "duplicate" if dup else "forwarded"
            # Every request the gateway answered in the window had the
            # outcome the run is about.
            other = sum(v for k, v in delta.items() if k != want)
            result["valid"] = other == 0 and delta.get(want, 0) >= r["requests"] > 0
            if forwarding and r.get("wraps", 0):
                result["valid"] = False
            if "-json" in name:
                result["log_bytes"] = os.path.getsize(target.logfile)
        elif floor and dup:
            # Every answer wrk saw was a 200 (an event in flight is a 409),
            # the upstream received nothing while wrk ran (this read and
            # up_before's are its only requests), so every 200 was a
            # duplicate; and the floor counted at least as many duplicates
            # as wrk counted answers. Both counts (and `outcomes`) cover wrk's
            # whole run, the window included.
            upstream_total = nginx_requests(up) - up_before - 1
            duplicates = floor_duplicates(target) - dup_before
            result["upstream_total"] = upstream_total
            result["outcomes"] = {"duplicate": duplicates, "forwarded": upstream_total}
            answered = r.get("wrk_requests", r["requests"])
            errors = sum(r.get(k, 0) for k in
                         ("status_errors", "read_errors", "write_errors", "timeouts", "non_200", "errors"))
            result["valid"] = (errors == 0 and upstream_total == 0
                               and duplicates >= answered > 0 and r["requests"] > 0)
        elif floor:
            # Every 200 the floor sent was confirmed by the upstream: wrk saw
            # no other answer, and the upstream received at least as many
            # requests over wrk's whole run (less run.py's three status reads).
            # (load_fixed_rate: its completed answers, two status reads.)
            reads = 3 if fixed_rps is None else 2
            upstream_total = nginx_requests(up) - up_before - reads
            result["upstream_total"] = upstream_total
            answered = r.get("wrk_requests", r["requests"])
            errors = sum(r.get(k, 0) for k in
                         ("status_errors", "read_errors", "write_errors", "timeouts", "non_200", "errors"))
            result["valid"] = (errors == 0 and r.get("wraps", 0) == 0
                               and upstream_total >= answered > 0 and r["requests"] > 0)
        else:
            result["valid"] = r.get("status_errors", r.get("non_200", 0)) == 0
    finally:
        for s in reversed(servers):
            s.stop()
    return result


# === reporting ===


def target_label(base):
    """What a half-load run named `base` measures."""
    if base.startswith(("floor-", "dup-floor-")):
        return "floor"
    return "nginx proxy (itself, at half its own maximum)" if base == "nginx" else "callgate"


def med(results, key):
    vals = [r[key] for r in results if key in r]
    return statistics.median(vals) if vals else float("nan")


def table(rows, nginx_rows):
    ngx_rps = med(nginx_rows, "rps")
    ngx_cpu = med(nginx_rows, "cpu_us_per_req")
    out = [
        "| run | req/s | x nginx | p50 ms | p99 ms | CPU µs/req (server) | CPU µs/req (upstream) | ctx switches/req | peak RSS MB | load1 | valid |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, rs in rows:
        ratio = med(rs, "rps") / ngx_rps if name != "upstream" else float("nan")
        ucpu = med(rs, "upstream_cpu_us_per_req")
        out.append(
            "| {} | {:,.0f} | {} | {:.2f} | {:.2f} | {:.1f} | {} | {:.2f} | {:.1f} | {} | {} |".format(
                name,
                med(rs, "rps"),
                "" if name == "upstream" else f"{ratio:.2f}",
                med(rs, "p50_us") / 1000,
                med(rs, "p99_us") / 1000,
                med(rs, "cpu_us_per_req"),
                "" if ucpu != ucpu else f"{ucpu:.1f}",
                med(rs, "ctx_switches_per_req"),
                med(rs, "peak_rss_mb"),
                "/".join(f"{r['load1']:.1f}" for r in rs),
                "yes" if all(r["valid"] for r in rs) else "NO",
            )
        )
    out.append("")
    out.append(f"(nginx proxy: {ngx_rps:,.0f} req/s, {ngx_cpu:.1f} µs CPU/req; medians of {len(nginx_rows)})")
    for name, rs in rows:
        scpu = med(rs, "store_cpu_us_per_req")
        if scpu == scpu:
            out.append(f"({name}: redis-server {scpu:.1f} µs CPU/req, "
                       f"{med(rs, 'store_commands_per_req'):.2f} commands/req, "
                       f"{med(rs, 'store_commands_per_read'):.2f} commands per read)")
    return "\n".join(out)


def ensure_corpus(args):
    need_a = args.corpus_alipay
    need_w = args.corpus_wechat
    fresh = True
    for name, need in (("alipay.txt", need_a), ("wechat_v2.txt", need_w)):
        p = os.path.join(CORPUS_DIR, name)
        if not os.path.exists(p) or time.time() - os.path.getmtime(p) > 20 * 3600:
            fresh = False
        elif corpus_lines(name) < need:
            fresh = False
    if fresh:
        return
    log(f"generating the corpus ({need_a} Alipay RSA2, {need_w} WeChat v2) in {CORPUS_DIR} ...")
    subprocess.run(
        [
            os.path.join(RELEASE, "examples", "load_corpus"),
            CORPUS_DIR,
            str(need_a),
            str(need_w),
            str(args.corpus_threads),
        ],
        check=True,
    )


def wait_quiet(limit, max_wait):
    deadline = time.time() + max_wait
    while loadavg() > limit and time.time() < deadline:
        log(f"load average {loadavg():.2f} > {limit}: waiting (up to {int(deadline - time.time())}s more)")
        time.sleep(20)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--runs",
        default="upstream,nginx,alipay,wechat,alipay-nojournal,wechat-nojournal,"
        "dup-wechat,dup-alipay,alipay-json,wechat-json",
    )
    ap.add_argument("--no-half-load", action="store_true")
    ap.add_argument("--timeline", metavar="DIR",
                    help="half-load runs: each request's latency, in send order, to DIR/NAME-TIME.txt")
    ap.add_argument("--client-threads", type=int, default=0,
                    help="half-load runs: drive the 64 connections from this many epoll threads "
                         "(load_fixed_rate's FIXED_RATE_THREADS) instead of one blocking thread each")
    ap.add_argument("--half-load-rate", type=int, help="offer this rate instead of half the median maximum")
    ap.add_argument("--half-load-runs", default="alipay,wechat,alipay-nojournal,wechat-nojournal",
                    help="callgate runs whose median maximum is halved for the p99 measurement")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--corpus-alipay", type=int, default=400000)
    ap.add_argument("--corpus-wechat", type=int, default=700000)
    ap.add_argument("--corpus-threads", type=int, default=2)
    ap.add_argument("--quiet-load", type=float, default=1.5, help="wait until the 1-minute load average is below this")
    ap.add_argument("--quiet-wait", type=int, default=900, help="at most this many seconds")
    ap.add_argument("--json", help="also write every raw result here")
    ap.add_argument("--profile", metavar="DIR",
                    help="record a perf cpu-clock profile of callgate (and the floor) in each of its runs into DIR "
                         "(perf costs CPU: use a separate run for figures)")
    ap.add_argument("--perf-args", default="", help="extra `perf record` arguments, e.g. '--call-graph dwarf'")
    ap.add_argument("--callgate", help="the callgate binary to measure (default: target/release/callgate)")
    ap.add_argument("--pin", metavar="GW:REST",
                    help="run the server under test (nginx proxy, callgate, the floor) on CPUs GW and "
                         "everything else (the shop, redis-server, wrk, load_fixed_rate) on CPUs REST, "
                         "taskset -c lists, e.g. 1:0; nginx gets one worker per CPU of its set, "
                         "callgate and the floor one per CPU they may run on")
    ap.add_argument("--workers", type=int, help="callgate's listen.workers (default: one per core)")
    ap.add_argument("--store", choices=("memory", "redis"), default="memory",
                    help="callgate's replay store; redis: a fresh redis-server per run")
    args = ap.parse_args()
    global STORE
    STORE = args.store
    if args.workers:
        global WORKERS
        WORKERS = args.workers
    if args.pin:
        global PIN
        gw, _, rest = args.pin.partition(":")
        if not gw or not rest:
            ap.error("--pin takes GW:REST, two taskset -c CPU lists")
        PIN = {"gateway": gw, "rest": rest}
    if args.callgate:
        global CALLGATE
        CALLGATE = os.path.abspath(args.callgate)

    for tool in ("wrk", "nginx", "cargo"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install -y wrk nginx")
    if not args.no_build:
        subprocess.run(
            ["cargo", "build", "--release", "--bin", "callgate", "--example", "load_corpus",
             "--example", "load_fixed_rate", "--example", "store_memory", "--example", "load_floor"],
            cwd=ROOT,
            check=True,
        )
    ensure_corpus(args)
    wait_quiet(args.quiet_load, args.quiet_wait)

    work = tempfile.mkdtemp(prefix="callgate-load-")
    raw = []
    try:
        names = args.runs.split(",")
        results = {n: [] for n in names}
        for rep in range(args.repeat):
            for n in names:
                r = measure(n, work, args)
                r["repeat"] = rep + 1
                raw.append(r)
                results[n].append(r)
                log(
                    f"[{rep + 1}/{args.repeat}] {n:12s} {r['rps']:9,.0f} req/s  p50 {r['p50_us'] / 1000:.2f} ms"
                    f"  p99 {r['p99_us'] / 1000:.2f} ms  cpu {r['cpu_us_per_req']:.1f} µs/req"
                    f"  cs {r['ctx_switches_per_req']:.2f}/req  rss {r['peak_rss_mb']:.1f} MB  load {r['load1']:.2f}"
                    f"  {r.get('outcomes', '')}{'' if r['valid'] else '  INVALID'}"
                )
        pin = f"; server under test on CPUs {PIN['gateway']}, the rest on {PIN['rest']}" if PIN else ""
        print(f"## Throughput (wrk -t2 -c64 -d{args.duration}s, ~1 KB bodies, medians of {args.repeat}{pin})\n")
        print(table([(n, results[n]) for n in names], results.get("nginx", [])))

        if not args.no_half_load and "nginx" in results:
            client = f"{args.client_threads} epoll threads" if args.client_threads else "a thread each"
            print(f"\n## p99 at half of callgate's maximum (load_fixed_rate, 64 connections, {client}, {args.duration}s, medians of {args.repeat})\n")
            print("| offered load | target | achieved req/s | p50 ms | p99 ms | p99.9 ms | p99 x nginx | load1 | steal ms | valid |")
            print("|---|---|---:|---:|---:|---:|---:|---|---|---|")
            for base in args.half_load_runs.split(","):
                if base not in results:
                    continue
                rate = args.half_load_rate or int(med(results[base], "rps") / 2)
                ngx, cg = [], []
                for rep in range(args.repeat):
                    for name, acc in ((f"nginx-{base}", ngx), (base, cg)):
                        r = measure(name, work, args, fixed_rps=rate)
                        r["repeat"] = rep + 1
                        r["offered"] = rate
                        raw.append(r)
                        acc.append(r)
                        log(
                            f"[{rep + 1}/{args.repeat}] {name:12s} @ {rate}/s  p50 {r['p50_us'] / 1000:.2f} ms"
                            f"  p99 {r['p99_us'] / 1000:.2f} ms  p99.9 {r['p999_us'] / 1000:.2f} ms  load {r['load1']:.2f}"
                            f"  steal {r['steal_ms']:.0f} ms"
                            f"{'' if r['valid'] else '  INVALID'}"
                        )
                for label, rs in (("nginx proxy", ngx), (f"{target_label(base)} {base}", cg)):
                    ratio = med(rs, "p99_us") / med(ngx, "p99_us")
                    print(
                        "| {:,}/s ({}) | {} | {:,.0f} | {:.2f} | {:.2f} | {:.2f} | {} | {} | {} | {} |".format(
                            rate, "--half-load-rate" if args.half_load_rate else f"{base} / 2", label, med(rs, "rps"), med(rs, "p50_us") / 1000,
                            med(rs, "p99_us") / 1000, med(rs, "p999_us") / 1000,
                            "" if rs is ngx else f"{ratio:.2f}",
                            "/".join(f"{r['load1']:.1f}" for r in rs),
                            "/".join(f"{r['steal_ms']:.0f}" for r in rs),
                            "yes" if all(r["valid"] for r in rs) else "NO",
                        )
                    )

        if "alipay" in results and "alipay-json" in results:
            a, j = med(results["alipay"], "rps"), med(results["alipay-json"], "rps")
            print(f"\ninfo-level JSON logs: Alipay {j:,.0f} vs {a:,.0f} req/s at warn ({(j / a - 1) * 100:+.1f}%)", end="")
            if "wechat" in results and "wechat-json" in results:
                a, j = med(results["wechat"], "rps"), med(results["wechat-json"], "rps")
                print(f"; WeChat v2 {j:,.0f} vs {a:,.0f} ({(j / a - 1) * 100:+.1f}%)", end="")
            print()

        if not args.no_memory:
            out = subprocess.run(
                [os.path.join(RELEASE, "examples", "store_memory"), "1000000"],
                capture_output=True, text=True,
            )
            m = json.loads(out.stdout)
            raw.append({"name": "memory", **m})
            print(
                f"\nMemory store, 1,000,000 delivered events: peak RSS {m['peak_mb']:.1f} MB "
                f"({m['bytes_per_event']:.0f} bytes/event; {m['entries']} entries kept; target <= 256 MB: "
                f"{'met' if out.returncode == 0 else 'NOT met'})"
            )
        print(f"\nload average at the end: {open('/proc/loadavg').read().strip()}; "
              f"{os.cpu_count()} CPUs; nginx {nginx_version()}; {wrk_version()}")
    finally:
        for p in list(started_procs):
            if p.poll() is None:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(raw, f, indent=1)


def nginx_version():
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
    return out.stderr.strip().split("/")[-1]


def wrk_version():
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return (out.stdout + out.stderr).strip().splitlines()[0]


if __name__ == "__main__":
    main()
