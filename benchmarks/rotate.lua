-- wrk script for benchmarks/wrk.py: rotate through pre-built raw HTTP requests.
--   wrk -t1 -c32 -d8s -s benchmarks/rotate.lua http://127.0.0.1:PORT/ -- requests.bin
-- requests.bin: one line of request lengths, then the raw requests back to back. Each request
-- is sent as is (request line, headers, multipart body of a distinct real pair), so the client
-- formats nothing per request. done() prints one JSON line that benchmarks/wrk.py parses.

local requests = {}
local count = 0
local index = 0

function init(args)
  local f = assert(io.open(args[1], "rb"))
  local header = f:read("*l")
  for n in header:gmatch("%d+") do
    count = count + 1
    requests[count] = f:read(tonumber(n))
  end
  f:close()
  -- Spread the connections over the corpus instead of all starting at the first pair.
  index = math.random(0, count - 1)
end

function request()
  index = index % count + 1
  return requests[index]
end

function done(summary, latency, _)
  local e = summary.errors
  local q = {}
  for _, p in ipairs({50, 90, 95, 99}) do
    q[#q + 1] = string.format('"%d": %d', p, latency:percentile(p))
  end
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "latency_us": {%s}, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, table.concat(q, ", "),
    e.connect, e.read, e.write, e.status, e.timeout))
end
