#!/usr/bin/env bash
# Runs every test of streamserver: unit and end-to-end tests against the real binary, the
# S3 tests against a real S3-compatible server started here, the real-client checks (ffmpeg,
# aria2c, curl, Python urllib) and the headless Chromium tests.
#
# Needs: cargo, python3 with pip, node with npm, and the Debian packages chromium, ffmpeg,
# aria2 and curl (.ci/run installs them). Run from anywhere: scripts/test.sh
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"

step() { printf '\n==> %s\n' "$*"; }

step "fetching the test clip"
scripts/fetch-testdata.sh

step "building"
cargo build --release --all-targets --locked

if [ -x scripts/s3-server.sh ]; then
  step "starting the S3-compatible test server"
  # shellcheck source=/dev/null
  source scripts/s3-server.sh
  s3_server_start
  trap 's3_server_stop' EXIT
fi

step "unit and end-to-end tests"
cargo test --release --locked -- --test-threads=4

step "handler panics, on a build with fault injection (its own target folder)"
CARGO_TARGET_DIR=target/fault-injection cargo test --release --locked \
  --features fault-injection --test handler_panic

if [ -n "${STREAMSERVER_TEST_S3_ENDPOINT:-}" ]; then
  step "streaming, conformance and flow-control tests against the S3 bucket in proxy mode"
  STREAMSERVER_TEST_BACKEND=s3 cargo test --release --locked \
    --test streaming --test conformance --test flow_control -- --test-threads=4
fi

for script in tests/clients/*.sh; do
  [ -e "$script" ] || continue
  step "real client: $script"
  STREAMSERVER_BIN="$top/target/release/streamserver" bash "$script"
done

if [ -x tests/browser/run.sh ]; then
  step "headless Chromium"
  STREAMSERVER_BIN="$top/target/release/streamserver" tests/browser/run.sh
fi

if [ -d ../shared/advisory-db ]; then
  step "cargo audit"
  scripts/audit.sh ../shared/advisory-db
fi

step "all tests passed"
