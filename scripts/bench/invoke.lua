-- wrk script for scripts/bench-load.sh: POSTs `{}` to the gateway's invoke endpoint, rotating
-- over the API keys in BENCH_KEYS (comma-separated) so that the per-key rate limit is not what
-- is measured; BENCH_MODE (sync|async) sets X-Invocation-Type. At the end it prints one
-- machine-readable line, `RESULT key=value ...`: throughput, latency percentiles (ms),
-- responses by HTTP status, socket errors, and the 2xx rate in each tenth of the run.

local keys = {}
for k in string.gmatch(os.getenv("BENCH_KEYS") or "", "[^,]+") do keys[#keys + 1] = k end
local mode = os.getenv("BENCH_MODE") or "sync"
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  threads[#threads + 1] = thread
end

function init(args)
  n = id or 0
  statuses = {}
  -- 2xx answers per second of the run, counted from this thread's start
  per_sec = {}
  started = os.time()
  reqs = {}
  for i, k in ipairs(keys) do
    reqs[i] = wrk.format("POST", nil, {
      ["Authorization"] = "Bearer " .. k,
      ["Content-Type"] = "application/json",
      ["X-Invocation-Type"] = mode,
    }, "{}")
  end
end

function request()
  n = n + 1
  return reqs[(n % #reqs) + 1]
end

function response(status, headers, body)
  local s = tostring(status)
  statuses[s] = (statuses[s] or 0) + 1
  if status >= 200 and status < 300 then
    local sec = os.time() - started
    per_sec[sec] = (per_sec[sec] or 0) + 1
  end
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local by_status, ok = {}, 0
  local per_sec = {}
  local last = 0
  for _, t in ipairs(threads) do
    for s, c in pairs(t:get("statuses")) do
      by_status[s] = (by_status[s] or 0) + c
      if tonumber(s) >= 200 and tonumber(s) < 300 then ok = ok + c end
    end
    for sec, c in pairs(t:get("per_sec")) do
      per_sec[sec] = (per_sec[sec] or 0) + c
      if sec > last then last = sec end
    end
  end
  local codes = {}
  for s, c in pairs(by_status) do codes[#codes + 1] = s .. ":" .. c end
  table.sort(codes)
  -- tenths of the run (whole seconds, so short runs give coarse tenths)
  local whole = math.floor(secs)
  local tenths = {}
  if whole >= 10 then
    for i = 0, 9 do
      local a, b = math.floor(whole * i / 10), math.floor(whole * (i + 1) / 10)
      local c = 0
      for sec = a, b - 1 do c = c + (per_sec[sec] or 0) end
      tenths[#tenths + 1] = string.format("%.0f", c / (b - a))
    end
  end
  local e = summary.errors
  io.write(string.format(
    "RESULT secs=%.1f requests=%d ok=%d rate=%.1f p50=%.3f p90=%.3f p99=%.3f max=%.3f statuses=%s socket_errors=connect:%d,read:%d,write:%d,timeout:%d tenths=%s\n",
    secs, summary.requests, ok, ok / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    (#codes > 0 and table.concat(codes, ",") or "none"),
    e.connect, e.read, e.write, e.timeout,
    (#tenths > 0 and table.concat(tenths, ",") or "-")))
end
