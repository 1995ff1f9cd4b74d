#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ one after another, each for SECONDS_PER_TARGET seconds
# (default 60), and prints one summary line per target.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   TARGET defaults to all of: request_head range multipart chunked_body.
#
# Needs a nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz
# (`cargo install cargo-fuzz`). Each target uses one core. chunked_body talks to itself over
# one loopback TCP connection.
#
# Seeds come from fuzz/corpus/TARGET and stay unchanged. libFuzzer writes the inputs it adds
# to fuzz/work/TARGET, its log to fuzz/work/TARGET.log, and crashing, timed-out or
# out-of-memory inputs to fuzz/artifacts/TARGET/. The script exits with 1 when any target
# left such an input in this run.
set -euo pipefail

seconds="${1:-60}"
shift || true
if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    targets=(request_head range multipart chunked_body)
fi
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [[ "$seconds" -eq 0 ]]; then
    echo "fuzz.sh: invalid SECONDS_PER_TARGET '$seconds': expected a positive whole number" >&2
    exit 2
fi

cd "$(dirname "$0")/.."

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz or the nightly toolchain is missing:" \
        "run 'rustup toolchain install nightly' and 'cargo install cargo-fuzz'" >&2
    exit 2
fi

# ASan keeps up to 256 MB of freed blocks in quarantine by default, which alone passes the
# 64 MB RSS limit without any leak. The parsers are safe Rust, so use-after-free detection is
# not needed and the quarantine is turned off. That leaves about 52 MB of RSS for libFuzzer,
# ASan and the in-memory corpus before the first input runs.
export ASAN_OPTIONS="quarantine_size_mb=0:thread_local_quarantine_size_kb=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"

# Builds every target first, so the build does not count against the fuzzing time.
cargo +nightly fuzz build

# Prints the maximum input length, in bytes, that libFuzzer generates for a target. Multipart
# inputs must exceed the reader's 64 KiB buffer to reach its full-buffer paths, so that target
# gets 200,000 bytes.
max_len_of() {
    case "$1" in
        multipart) echo 200000 ;;
        *) echo 4096 ;;
    esac
}

# Prints the RSS limit in MB for a target. One multipart input peaks at 33 to 38 MB of RSS
# when run alone, but the in-memory corpus of inputs up to 200,000 bytes grows past the
# 64 MB limit within ten minutes, so that target gets 128 MB. Every target keeps the 64 MB
# limit on a single allocation.
rss_limit_of() {
    case "$1" in
        multipart) echo 128 ;;
        *) echo 64 ;;
    esac
}

count_artifacts() {
    if [[ -d "fuzz/artifacts/$1" ]]; then
        find "fuzz/artifacts/$1" -maxdepth 1 -type f -name "$2-*" | wc -l
    else
        echo 0
    fi
}

failed=0
summaries=()
for target in "${targets[@]}"; do
    work="fuzz/work/$target"
    log="fuzz/work/$target.log"
    mkdir -p "$work"
    before_crashes=$(count_artifacts "$target" crash)
    before_timeouts=$(count_artifacts "$target" timeout)
    before_ooms=$(count_artifacts "$target" oom)

    echo "fuzz.sh: running $target for ${seconds}s, log in $log" >&2
    status=0
    cargo +nightly fuzz run "$target" "$work" "fuzz/corpus/$target" -- \
        -dict="fuzz/dict/$target.dict" \
        -max_len="$(max_len_of "$target")" \
        -max_total_time="$seconds" \
        -rss_limit_mb="$(rss_limit_of "$target")" -malloc_limit_mb=64 -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?

    crashes=$(( $(count_artifacts "$target" crash) - before_crashes ))
    timeouts=$(( $(count_artifacts "$target" timeout) - before_timeouts ))
    ooms=$(( $(count_artifacts "$target" oom) - before_ooms ))
    last_status=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    final_stat() { grep -E "^stat::$1:" "$log" | awk '{print $2}' || true; }

    summary="$target: exit $status, runs $(final_stat number_of_executed_units)"
    summary+=", exec/s $(final_stat average_exec_per_sec), peak RSS $(final_stat peak_rss_mb) MB"
    summary+=", crashes $crashes, timeouts $timeouts, OOMs $ooms"
    summary+=", work corpus $(find "$work" -type f | wc -l) files; last status: $last_status"
    summaries+=("$summary")
    if [[ $status -ne 0 || $crashes -ne 0 || $timeouts -ne 0 || $ooms -ne 0 ]]; then
        failed=1
        echo "fuzz.sh: $target failed; see $log and fuzz/artifacts/$target/" >&2
    fi
done

printf '%s\n' "${summaries[@]}"
exit "$failed"
