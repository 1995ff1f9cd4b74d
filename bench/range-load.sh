#!/usr/bin/env bash
# Load test: random 64 KiB ranges of a 256 MiB file over 20 keep-alive connections for 10 s.
#
# Starts the release server on a free loopback port with a temporary video_dir holding one
# 256 MiB random file, then runs wrk (2 threads, 20 connections, 10 s) with a Lua script that
# requests `Range: bytes=S-(S+65535)` at a random start S for each request. Prints requests per
# second, the p99 latency and the number of responses that were not 2xx or 3xx, and exits
# non-zero when there was any. The server and wrk share this machine, so the figure is a lower
# bound for the server alone. Record the CPU model and core count with the result.
#
# Environment:
#   STREAMSERVER_BIN  the server binary (default: target/release/streamserver under the
#                     repository root; build it with `cargo build --release`)
#   DURATION          wrk run time (default: 10s)
#   CONNECTIONS       keep-alive connections (default: 20)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${STREAMSERVER_BIN:-$repo_root/target/release/streamserver}"
[[ "$bin" = /* ]] || bin="$repo_root/$bin"
duration="${DURATION:-10s}"
connections="${CONNECTIONS:-20}"
file_size=$((256 * 1024 * 1024))
range_size=$((64 * 1024))

command -v wrk >/dev/null || { echo "wrk is not installed; run apt-get install wrk" >&2; exit 2; }
[[ -x "$bin" ]] || { echo "$bin is not an executable file; run cargo build --release" >&2; exit 2; }

work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/videos"
head -c "$file_size" /dev/urandom >"$work/videos/big.bin"

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# max_conns 64 keeps the limiter (and its per-address share) above the 20 connections, so the
# run measures serving ranges rather than 429 responses.
printf '{"listen": "127.0.0.1:%s", "video_dir": "%s", "max_conns": 64}\n' "$port" "$work/videos" >"$work/conf.json"
RUST_LOG=warn "$bin" --config "$work/conf.json" </dev/null >/dev/null 2>"$work/server.log" &
server_pid=$!

deadline=$((SECONDS + 10))
until curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz"; do
    kill -0 "$server_pid" 2>/dev/null || { echo "the server exited: $(tail -n 5 "$work/server.log")" >&2; exit 2; }
    ((SECONDS < deadline)) || { echo "the server did not start within 10 s" >&2; exit 2; }
    sleep 0.1
done

# Warm the page cache so the run measures serving, not the first disk reads.
cat "$work/videos/big.bin" >/dev/null

cat >"$work/ranges.lua" <<LUA
local file_size = $file_size
local range_size = $range_size
local thread_count = 0

setup = function(thread)
  thread_count = thread_count + 1
  thread:set("seed", thread_count)
end

init = function(args)
  math.randomseed(os.time() + seed * 7919)
end

request = function()
  local first = math.random(0, file_size - range_size)
  local last = first + range_size - 1
  return wrk.format("GET", "/videos/big.bin", { ["Range"] = "bytes=" .. first .. "-" .. last })
end

done = function(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local failed = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format("requests: %d in %.1f s\n", summary.requests, seconds))
  io.write(string.format("requests/s: %.0f\n", summary.requests / seconds))
  io.write(string.format("throughput: %.0f MiB/s\n", summary.bytes / seconds / 1048576))
  io.write(string.format("latency p50: %.2f ms\n", latency:percentile(50) / 1000))
  io.write(string.format("latency p99: %.2f ms\n", latency:percentile(99) / 1000))
  io.write(string.format("errors: %d (non-2xx/3xx: %d)\n", failed, summary.errors.status))
end
LUA

echo "server: $bin"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "load: wrk -t2 -c$connections -d$duration, random ${range_size}-byte ranges of a ${file_size}-byte file"
timeout 120 wrk -t2 -c"$connections" -d"$duration" -s "$work/ranges.lua" "http://127.0.0.1:$port/" | tee "$work/wrk.out"

grep -q '^errors: 0 ' "$work/wrk.out"
