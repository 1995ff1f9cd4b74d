#!/usr/bin/env bash
# Starts s3s-fs 0.14.1, an S3-compatible server that stores objects as files and checks SigV4
# signatures and presigned URLs, on 127.0.0.1 for the S3 tests.
#
# Sourced, it defines the functions and starts nothing:
#   source scripts/s3-server.sh
#   s3_server_start      # installs s3s-fs if missing, starts it, exports the variables below
#   s3_server_stop       # stops it and removes its data folder
# Run directly (bash scripts/s3-server.sh), it starts the server, leaves it running, and
# prints the export lines and the stop command.
#
# Exported for the tests: STREAMSERVER_TEST_S3_ENDPOINT, STREAMSERVER_TEST_S3_BUCKET,
# AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (fixed test values, valid only for this server),
# STREAMSERVER_TEST_S3_ROOT (the data folder; bucket B is folder $ROOT/B) and
# STREAMSERVER_TEST_S3FS_BIN (for tests that start and kill a server of their own).
#
# s3s-fs is installed with `cargo install` into target/tools (a few minutes, once); an
# s3s-fs 0.14.1 already in target/tools/bin, ~/.cargo/bin or $S3S_FS_BIN is used as it is.
# Later versions need a newer Rust than 1.95.

S3S_FS_VERSION=0.14.1
S3_TEST_BUCKET=streamserver-test
S3_TEST_ACCESS_KEY=streamserver-test-key
S3_TEST_SECRET_KEY=streamserver-test-secret
s3_server_top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Sets S3S_FS_BIN to an s3s-fs of the pinned version, installing it when none is found.
s3_server_install() {
  local candidate
  for candidate in "${S3S_FS_BIN:-}" "$s3_server_top/target/tools/bin/s3s-fs" "$HOME/.cargo/bin/s3s-fs"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] &&
      [ "$("$candidate" --version 2>/dev/null)" = "s3s-fs $S3S_FS_VERSION" ]; then
      S3S_FS_BIN=$candidate
      return 0
    fi
  done
  echo "installing s3s-fs $S3S_FS_VERSION into $s3_server_top/target/tools (takes a few minutes)" >&2
  cargo install --locked --quiet "s3s-fs@$S3S_FS_VERSION" --features binary --root "$s3_server_top/target/tools" >&2 ||
    return 1
  S3S_FS_BIN=$s3_server_top/target/tools/bin/s3s-fs
}

# Prints a TCP port that is free on 127.0.0.1 right now.
s3_server_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

s3_server_start() {
  s3_server_install || return 1

  S3_SERVER_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/streamserver-s3.XXXXXX")
  mkdir -p "$S3_SERVER_ROOT/data/$S3_TEST_BUCKET"
  local port
  port=$(s3_server_free_port)

  "$S3S_FS_BIN" --host 127.0.0.1 --port "$port" \
    --access-key "$S3_TEST_ACCESS_KEY" --secret-key "$S3_TEST_SECRET_KEY" \
    "$S3_SERVER_ROOT/data" >"$S3_SERVER_ROOT/s3s-fs.log" 2>&1 &
  S3_SERVER_PID=$!

  local tries
  for tries in $(seq 1 100); do
    # Any HTTP response (403 without a signature) means it is listening.
    if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
      break
    fi
    if ! kill -0 "$S3_SERVER_PID" 2>/dev/null || [ "$tries" = 100 ]; then
      echo "s3s-fs did not start on port $port; its log:" >&2
      cat "$S3_SERVER_ROOT/s3s-fs.log" >&2
      s3_server_stop
      return 1
    fi
    sleep 0.1
  done

  export STREAMSERVER_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
  export STREAMSERVER_TEST_S3_BUCKET=$S3_TEST_BUCKET
  export STREAMSERVER_TEST_S3_ROOT=$S3_SERVER_ROOT/data
  export STREAMSERVER_TEST_S3FS_BIN=$S3S_FS_BIN
  export AWS_ACCESS_KEY_ID=$S3_TEST_ACCESS_KEY
  export AWS_SECRET_ACCESS_KEY=$S3_TEST_SECRET_KEY
  echo "s3s-fs $S3S_FS_VERSION listening on $STREAMSERVER_TEST_S3_ENDPOINT (pid $S3_SERVER_PID, data $STREAMSERVER_TEST_S3_ROOT)" >&2
}

s3_server_stop() {
  if [ -n "${S3_SERVER_PID:-}" ]; then
    kill "$S3_SERVER_PID" 2>/dev/null || true
    wait "$S3_SERVER_PID" 2>/dev/null || true
    S3_SERVER_PID=
  fi
  if [ -n "${S3_SERVER_ROOT:-}" ]; then
    rm -rf "$S3_SERVER_ROOT"
    S3_SERVER_ROOT=
  fi
  return 0
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  s3_server_start
  cat <<EOF
export STREAMSERVER_TEST_S3_ENDPOINT=$STREAMSERVER_TEST_S3_ENDPOINT
export STREAMSERVER_TEST_S3_BUCKET=$STREAMSERVER_TEST_S3_BUCKET
export STREAMSERVER_TEST_S3_ROOT=$STREAMSERVER_TEST_S3_ROOT
export STREAMSERVER_TEST_S3FS_BIN=$STREAMSERVER_TEST_S3FS_BIN
export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
# stop with: kill $S3_SERVER_PID; rm -rf $S3_SERVER_ROOT
EOF
fi
