-- Replays pre-signed webhook requests, one line each: timestamp TAB signature TAB body.
-- Every request is used once, so every event id is new; running out wraps (reported).
local requests = {}
local next_index = 0
local wrapped = 0

function init(args)
  for line in io.lines(args[1]) do
    local ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
    requests[#requests + 1] = wrk.format("POST", "/webhooks/holysheep", {
      ["Content-Type"] = "application/json",
      ["X-HolySheep-Timestamp"] = ts,
      ["X-HolySheep-Signature"] = sig,
    }, body)
  end
end

function request()
  next_index = next_index + 1
  if next_index > #requests then
    next_index = 1
    wrapped = wrapped + 1
  end
  return requests[next_index]
end

function done(summary, latency, requests_)
  local e = summary.errors
  io.write(string.format(
    "RESULT {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, " ..
    "\"max_us\": %d, \"non2xx\": %d, \"connect\": %d, \"read\": %d, \"write\": %d, " ..
    "\"timeout\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.status, e.connect, e.read, e.write, e.timeout))
end
