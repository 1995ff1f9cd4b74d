#!/usr/bin/env bash
# Soak test: runs the release server under a bounded mix of loopback clients for SECONDS
# (default 180), then prints figures and exits non-zero when one fails its limit.
#
# Usage: scripts/soak.sh [SECONDS]      (scripts/soak.sh 20 is the short run for CI)
#
# Builds target/release/streamserver, starts it on a free 127.0.0.1 port with max_conns 20 and
# a temporary video_dir holding four random files (50 MiB, 5 MiB, 1 MiB, 200 KiB), and runs
# scripts/soak.py, which drives the clients and checks the figures: 5xx responses, tokens in
# use, temporary files left and RSS. Its docstring lists each limit. Then it stops the server with
# SIGTERM and also requires exit status 0 within 20 s and no handler panic in the log.
#
# Needs: cargo and python3 (standard library only). Everything stays on loopback.
set -euo pipefail

duration="${1:-180}"
if ! [[ "$duration" =~ ^[0-9]+$ ]] || (( duration < 5 )); then
    echo "soak.sh: SECONDS must be a whole number of at least 5, got '$duration'" >&2
    exit 2
fi
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin="$top/target/release/streamserver"

work=$(mktemp -d)
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "==> building the release server"
(cd "$top" && cargo build --release --locked --bin streamserver)

echo "==> preparing $work/videos"
mkdir -p "$work/videos"
head -c $((50 << 20)) /dev/urandom > "$work/videos/big.mp4"
head -c $((5 << 20)) /dev/urandom > "$work/videos/mid.mp4"
head -c $((1 << 20)) /dev/urandom > "$work/videos/one-mib.mp4"
head -c $((200 << 10)) /dev/urandom > "$work/videos/small.mp4"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/conf.json" <<EOF
{"listen": "127.0.0.1:$port", "video_dir": "$work/videos", "max_conns": 20}
EOF

echo "==> starting the server on 127.0.0.1:$port"
RUST_LOG=info "$bin" --config "$work/conf.json" 2> "$work/server.log" &
server_pid=$!
for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        break
    fi
    sleep 0.1
done
if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "soak.sh: the server did not start; its log:" >&2
    cat "$work/server.log" >&2
    exit 1
fi

echo "==> load for $duration s (machine: $(nproc) cores, $(date -u +%Y-%m-%dT%H:%M:%SZ))"
status=0
python3 "$top/scripts/soak.py" --port "$port" --pid "$server_pid" --video-dir "$work/videos" \
    --duration "$duration" || status=1

echo "==> stopping the server with SIGTERM"
kill -TERM "$server_pid"
exit_code=""
for _ in $(seq 200); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        wait "$server_pid" && exit_code=0 || exit_code=$?
        break
    fi
    sleep 0.1
done
server_pid_stopped="$server_pid"
if [[ -z "$exit_code" ]]; then
    echo "FAIL  server exit after SIGTERM: still running after 20 s"
    status=1
elif [[ "$exit_code" != 0 ]]; then
    echo "FAIL  server exit after SIGTERM: status $exit_code"
    status=1
else
    server_pid=""
    echo "PASS  server exit after SIGTERM: status 0"
fi

panics=$(grep -c "handler panicked" "$work/server.log" || true)
errors=$(grep -c " ERROR " "$work/server.log" || true)
requests=$(grep -c "streamserver::access" "$work/server.log" || true)
if [[ "$panics" == 0 ]]; then
    echo "PASS  handler panics in the log: 0"
else
    echo "FAIL  handler panics in the log: $panics"
    grep "handler panicked" "$work/server.log" | head -5
    status=1
fi
echo "      access log lines: $requests; ERROR lines: $errors (server pid was $server_pid_stopped)"
if [[ "$errors" != 0 ]]; then
    grep " ERROR " "$work/server.log" | sort | uniq -c | sort -rn | head -5
fi

if [[ "$status" == 0 ]]; then
    echo "==> soak passed"
else
    echo "==> soak FAILED"
fi
exit "$status"
