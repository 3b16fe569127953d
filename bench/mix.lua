-- wrk's request mix for bench/run.py: wrk -s mix.lua URL -- MODE RUN
-- MODE "unique": every push a new guid (RUN-thread-n). MODE "retry": 90% of pushes resend
-- one of the 100 pushes bench/run.py stored before (guid retry-0 .. retry-99), byte for byte
-- the same request, as the gateway resends; the rest are new guids.
-- done() prints one line, BENCH {...}, that bench/run.py reads.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end

function init(args)
  mode, run, n = args[1], args[2], 0
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

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH {"requests": %d, "us": %d, "errors": %d, "p50_us": %d, ' ..
    '"p99_us": %d}\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
