# Shared setup for the real-client checks in tests/clients/*.sh. The scripts source it, and
# the .bash name keeps it out of the tests/clients/*.sh loop of scripts/test.sh.
#
# It starts streamserver on a free loopback port with a temporary video_dir, stops it and
# removes the folder on exit, and counts PASS/FAIL lines. The server logs every access line and
# the range decision of each media request (target streamserver::handlers::stream at trace
# level), so a check can see which byte ranges a client asked for.
#
# Environment:
#   STREAMSERVER_BIN  the server binary (default: target/release/streamserver under the
#                     repository root; build it with `cargo build --release`)

set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${STREAMSERVER_BIN:-$repo_root/target/release/streamserver}"
[[ "$bin" = /* ]] || bin="$repo_root/$bin"

work="$(mktemp -d)"
video_dir="$work/videos"
server_log="$work/server.log"
server_pid=""
base_url=""
passed=0
failed=0

cleanup() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

pass() {
    echo "PASS $*"
    passed=$((passed + 1))
}

fail() {
    echo "FAIL $*"
    failed=$((failed + 1))
}

# Prints the summary line and exits 0 only when nothing failed.
finish() {
    echo "$passed passed, $failed failed"
    if ((failed > 0)); then
        echo "server log (last 40 lines):"
        tail -n 40 "$server_log" 2>/dev/null || true
        exit 1
    fi
    exit 0
}

# Fails the whole script at once, for a missing tool or a server that does not start.
fail_setup() {
    fail "setup: $*"
    finish
}

require_tools() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null ||
            fail_setup "$tool is not installed; run scripts/install-test-deps.sh or apt-get install it"
    done
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts the server. The optional argument is extra JSON config fields, such as
# '"max_conns": 64'. Sets base_url to http://127.0.0.1:PORT.
start_server() {
    local extra="${1:-}"
    [[ -x "$bin" ]] || fail_setup "$bin is not an executable file; run cargo build --release or set STREAMSERVER_BIN"

    local port
    port="$(free_port)"
    mkdir -p "$video_dir"
    printf '{"listen": "127.0.0.1:%s", "video_dir": "%s"%s}\n' \
        "$port" "$video_dir" "${extra:+, $extra}" >"$work/conf.json"

    RUST_LOG="info,streamserver::handlers::stream=trace" "$bin" --config "$work/conf.json" \
        </dev/null >/dev/null 2>"$server_log" &
    server_pid=$!
    base_url="http://127.0.0.1:$port"

    local deadline=$((SECONDS + 10))
    until curl -s -o /dev/null --max-time 1 "$base_url/healthz"; do
        kill -0 "$server_pid" 2>/dev/null || fail_setup "the server exited: $(tail -n 5 "$server_log")"
        ((SECONDS < deadline)) || fail_setup "the server did not answer on $base_url within 10 s"
        sleep 0.1
    done
}

# Prints the start offsets of the ranges the server served for video $1, one per line, from
# its trace lines such as `a.mp4: range Some("bytes=5-") of 10 bytes gives Partial(ByteRange
# { start: 5, end: 9 })`. A multi-range answer prints the start of each range.
served_range_starts() {
    local id="$1"
    grep -F "$id: range Some(" "$server_log" | grep -oE 'start: [0-9]+' | awk '{print $2}' || true
}

# Prints how many access lines show status $2 for a GET of video $1.
count_access() {
    local id="$1" status="$2"
    grep -cE "\"GET /videos/$id[^\"]*\" $status " "$server_log" || true
}
