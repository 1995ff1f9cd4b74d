#!/usr/bin/env bash
# Real-client check: aria2c downloads a 50 MiB random file over 8 connections in 1 MiB pieces.
#
# Checks that the download is byte-exact (same SHA-256) and that the server log shows several
# 206 responses with different start offsets, so the file really arrived in ranges.
# Prints PASS/FAIL lines and exits non-zero on any failure. The download is bounded by
# `timeout`.
#
# Environment: STREAMSERVER_BIN (see common.bash).
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

require_tools aria2c curl python3 sha256sum timeout

start_server
head -c $((50 * 1024 * 1024)) /dev/urandom >"$video_dir/random.bin"
want_sha="$(sha256sum "$video_dir/random.bin" | cut -d' ' -f1)"

mkdir -p "$work/download"
if timeout 180 aria2c -x 8 -s 8 -k 1M --dir "$work/download" --out random.bin \
    --allow-overwrite=true --auto-file-renaming=false --file-allocation=none \
    --summary-interval=0 --console-log-level=warn --download-result=hide \
    "$base_url/videos/random.bin" >"$work/aria2c.out" 2>&1; then
    pass "aria2c -x 8 -s 8 -k 1M exits 0"
else
    fail "aria2c -x 8 -s 8 -k 1M exits 0: $(tail -n 5 "$work/aria2c.out")"
fi

got_sha="$(sha256sum "$work/download/random.bin" 2>/dev/null | cut -d' ' -f1 || true)"
if [[ "$got_sha" == "$want_sha" ]]; then
    pass "the download has the SHA-256 of the stored file"
else
    fail "SHA-256: expected $want_sha, got ${got_sha:-no file}"
fi

partial_responses="$(count_access random.bin 206)"
if ((partial_responses >= 2)); then
    pass "the server log shows $partial_responses responses with 206"
else
    fail "the server log shows $partial_responses responses with 206 for random.bin; expected at least 2"
fi

distinct_starts="$(served_range_starts random.bin | sort -un | wc -l)"
if ((distinct_starts >= 2)); then
    pass "aria2c asked for $distinct_starts distinct start offsets"
else
    fail "aria2c asked for $distinct_starts distinct start offsets; expected at least 2"
fi

finish
