-- wrk script: POST pre-generated JSON bodies, one per line of a file, in order.
--
--   wrk -t1 -c32 -d8s -s bench/wrk_bodies.lua http://127.0.0.1:PORT -- BODIES_FILE [PATH]
--
-- Every request is formatted once in init(), so request() only indexes a table:
-- the cheapest dynamic request wrk can make, which keeps the generator's own CPU
-- (measured by bench/run.py) small next to the service's. Bodies cycle if the file
-- runs out; `sent` tells the benchmark how many were used (a prefix of the file, in
-- order, with one wrk thread), so it knows exactly which requests reached the server.
-- No response() callback: defining one makes wrk hand every response to Lua.

local prepared = {}
local count = 0
sent = 0 -- global, so done() can read it from the thread with thread:get("sent")
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local path = args[1]
  local target = args[2] or "/identify"
  local headers = { ["Content-Type"] = "application/json" }
  for line in io.lines(path) do
    if #line > 0 then
      count = count + 1
      prepared[count] = wrk.format("POST", target, headers, line)
    end
  end
  if count == 0 then
    error("no request bodies in " .. path)
  end
end

-- wrk calls request() once before the run to check what it returns (thread 0 only;
-- the benchmark runs one thread): that call must not count, or the first body would
-- be reported sent and never be.
local checked = false

function request()
  if not checked then
    checked = true
    return prepared[1]
  end
  sent = sent + 1
  return prepared[(sent - 1) % count + 1]
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("sent")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %.0f, "duration_us": %.0f, "bytes": %.0f, "sent": %.0f, '
      .. '"errors": {"connect": %.0f, "read": %.0f, "write": %.0f, "status": %.0f, "timeout": %.0f}, '
      .. '"latency_us": {"p50": %.0f, "p90": %.0f, "p95": %.0f, "p99": %.0f, "p999": %.0f, '
      .. '"mean": %.1f, "max": %.0f}}\n',
    summary.requests, summary.duration, summary.bytes, total,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency:percentile(99.9), latency.mean, latency.max
  ))
end
