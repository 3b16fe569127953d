-- wrk's request mix for bench/run.py: wrk -s mix.lua URL -- MODE RUN
-- MODE "unique": every push a new guid (RUN-thread-n). MODE "retry": 90% of pushes resend
-- one of the 100 pushes bench/run.py stored before (guid retry-0 .. retry-99), byte for byte
-- the same request, as the gateway resends; the rest are new guids.
-- Every answer whose body is not <Status>2</Status> is counted (not_done): the receiver
-- answers "try again" with HTTP 200, which wrk's own error count does not see.
-- done() prints one line, BENCH {...}, that bench/run.py reads.
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  mode, run, n, not_done = args[1], args[2], 0, 0
  math.randomseed(id * 7919 + os.time())
end

local function push(guid)
  return wrk.format("GET", wrk.path .. "?guid=" .. guid ..
                    "&phone=84912345678&message=Xin+chao+" .. guid)
end

function request()
  n = n + 1
  if mode == "retry" and math.random() < 0.9 then
    return push("retry-" .. math.random(0, 99))
  end
  return push(run .. "-" .. id .. "-" .. n)
end

function response(status, headers, body)
  if body ~= "<Status>2</Status>" then
    not_done = not_done + 1
  end
end

function done(summary, latency, requests)
  local e, missed = summary.errors, 0
  for _, thread in ipairs(threads) do
    missed = missed + thread:get("not_done")
  end
  io.write(string.format('BENCH {"requests": %d, "us": %d, "errors": %d, "not_done": %d, ' ..
    '"p50_us": %d, "p99_us": %d}\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout, missed,
    latency:percentile(50), latency:percentile(99)))
end
