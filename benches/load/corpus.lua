-- wrk script: walks a corpus of request bodies (one per line), so every
-- request of a run is a distinct, genuinely signed notification.
--
--   wrk -t2 -c64 -d10s -s corpus.lua URL -- CORPUS PATH CONTENT_TYPE FIRST COUNT THREADS [READY]
--
-- Thread t of THREADS sends lines FIRST+t, FIRST+t+THREADS, ... of the
-- COUNT lines from FIRST (COUNT 0: to the end), each request formatted once
-- at start so wrk spends no time building requests. A thread that runs out
-- starts again at its first line (then some requests repeat: `done` prints
-- how often that happened, and run.py refuses a forwarding run where it did).
-- `done` prints one JSON line starting with `WRK_JSON `.
--
-- wrk runs each thread's `init` on its main thread, one after the other, and
-- starts a thread as soon as its own `init` returns: thread 0 sends while the
-- later threads are still reading the corpus (seconds for a large one), and
-- those requests count in wrk's totals while its clock has not started. So
-- the last thread's `init` creates the file READY when it is done; run.py
-- waits for it and measures the server (CPU, its own request counters) from
-- then on, when every thread is sending.

local threads = {}
local created = 0

function setup(thread)
  thread:set("tid", created)
  created = created + 1
  table.insert(threads, thread)
end

function init(args)
  local file, path, ctype = args[1], args[2], args[3]
  local first = tonumber(args[4] or "0")
  local count = tonumber(args[5] or "0")
  local nthreads = tonumber(args[6] or "1")
  local headers = { ["Content-Type"] = ctype }
  reqs = {}
  local i = 0
  for line in io.lines(file) do
    if count > 0 and i >= first + count then
      break
    end
    if i >= first and (i - first) % nthreads == tid then
      reqs[#reqs + 1] = wrk.format("POST", path, headers, line)
    end
    i = i + 1
  end
  if #reqs == 0 then
    error("no corpus lines for thread " .. tid .. " in " .. file)
  end
  n = 0
  wraps = 0
  nreqs = #reqs
  local ready = args[7]
  if ready and ready ~= "" and tid == nthreads - 1 then
    local f = assert(io.open(ready, "w"))
    f:close()
  end
end

function request()
  n = n + 1
  if n > #reqs then
    n = 1
    wraps = wraps + 1
  end
  return reqs[n]
end

function done(summary, latency, requests)
  local wrapped = 0
  local lines = 0
  for _, t in ipairs(threads) do
    wrapped = wrapped + (t:get("wraps") or 0)
    lines = lines + (t:get("nreqs") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"status_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "mean_us": %.1f, "wraps": %d, "lines": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, wrapped, lines))
end
