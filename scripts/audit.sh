#!/usr/bin/env bash
# Checks Cargo.lock against a local copy of the RustSec advisory database, offline.
#   scripts/audit.sh PATH_TO_ADVISORY_DB
# Installs cargo-audit into target/tools when it is not on PATH.
set -euo pipefail
db=$1
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
if ! command -v cargo-audit >/dev/null; then
  if [ ! -x target/tools/bin/cargo-audit ]; then
    cargo install --quiet --locked cargo-audit --root target/tools
  fi
  export PATH="$top/target/tools/bin:$PATH"
fi
cargo audit --db "$db" --no-fetch --deny warnings
