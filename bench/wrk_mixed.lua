-- The mixed event-then-recommend workload for wrk (an independent check of bench/loadgen.py):
-- each thread alternates POST /events (one new event for a user) and GET /recommend/{user}.
-- wrk calls request() per thread, not per connection, so a pair's two requests may go out on
-- different connections of the thread (the mix and the order per thread are the same).
-- Run: wrk -t2 -c32 -d20s --latency -s bench/wrk_mixed.lua http://127.0.0.1:PORT -- TAG BASE_TS
local counter = 0
local thread_id = 0
local next_id = 0
local tag = "wrk"
local base = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

function init(args)
  thread_id = id
  tag = args[1] or "wrk"
  base = tonumber(args[2] or "0")
end

function request()
  counter = counter + 1
  local pair = math.floor((counter - 1) / 2)
  local n = pair * 8 + thread_id  -- distinct across threads
  local user = tostring((n * 37) % 943 + 1)
  if counter % 2 == 1 then
    local item = tostring((n * 7919) % 1682 + 1)
    local body = string.format(
      '{"events":[{"event_id":"%s-%d-%d","user_id":"%s","item_id":"%s","type":"rate",' ..
      '"value":4,"timestamp":%d}]}', tag, thread_id, pair, user, item, base + n)
    return wrk.format("POST", "/events", {["Content-Type"] = "application/json"}, body)
  end
  return wrk.format("GET", "/recommend/" .. user .. "?k=10")
end

local statuses = {}
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  io.write(string.format("WRK_JSON {\"requests\":%d,\"duration_s\":%.3f,\"p50_ms\":%.2f," ..
    "\"p99_ms\":%.2f,\"errors\":%d}\n", summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout))
end
