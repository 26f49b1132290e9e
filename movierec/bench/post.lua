-- wrk script: POST pre-built JSON bodies (one per line of a file) in rotation, then print the
-- exact latency percentiles and error counts as one machine-readable line for movierec/bench/load.py.
-- Usage: wrk -t1 -cN -dTs -s movierec/bench/post.lua URL -- BODIES_FILE TOKEN

local prepared = {}
local position = 0

function init(args)
  local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. args[2] }
  for line in io.lines(args[1]) do
    if #line > 0 then
      -- Formatting once here keeps the per-request cost of the load generator to a table lookup.
      prepared[#prepared + 1] = wrk.format("POST", nil, headers, line)
    end
  end
  if #prepared == 0 then
    error("no request bodies in " .. args[1])
  end
end

function request()
  position = position % #prepared + 1
  return prepared[position]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%d duration_us=%d bytes=%d status_errors=%d connect_errors=%d read_errors=%d "
      .. "write_errors=%d timeouts=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f\n",
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean
  ))
end
