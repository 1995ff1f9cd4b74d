-- wrk script for S2: each request is for one random range of the target file.
-- Arguments after `--`: FILE_SIZE RANGE_SIZE (bytes). The target path comes from the URL.
-- `done` prints machine-readable lines that bench/lib/scenarios.sh reads:
--   requests, requests_per_sec, p50_ms, p99_ms, non_2xx_3xx, socket_errors

local thread_count = 0

setup = function(thread)
  thread_count = thread_count + 1
  thread:set("seed", thread_count)
end

init = function(args)
  file_size = tonumber(args[1])
  range_size = tonumber(args[2])
  math.randomseed(os.time() + seed * 7919)
end

request = function()
  local first = math.random(0, file_size - range_size)
  local last = first + range_size - 1
  return wrk.format("GET", wrk.path, { ["Range"] = "bytes=" .. first .. "-" .. last })
end

done = function(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local socket_errors = summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format("requests %d\n", summary.requests))
  io.write(string.format("requests_per_sec %.0f\n", summary.requests / seconds))
  io.write(string.format("p50_ms %.2f\n", latency:percentile(50) / 1000))
  io.write(string.format("p99_ms %.2f\n", latency:percentile(99) / 1000))
  io.write(string.format("non_2xx_3xx %d\n", summary.errors.status))
  io.write(string.format("socket_errors %d\n", socket_errors))
end
