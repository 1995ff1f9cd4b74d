#!/usr/bin/env bash
# Real-client check: conditional GETs with Python's urllib.request.
#
# A first GET reads the ETag and Last-Modified. Then, as a cache revalidating its copy would:
#   - If-None-Match with the ETag gives 304 (urllib raises HTTPError 304) with the same ETag;
#   - If-Modified-Since with the Last-Modified gives 304;
#   - If-None-Match with another tag gives 200 and the whole file;
#   - Range with If-Range set to the ETag gives 206 with the requested bytes.
# Prints PASS/FAIL lines and exits non-zero on any failure. Every request has a 10 s timeout.
#
# Environment: STREAMSERVER_BIN (see common.bash).
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

require_tools python3 curl

start_server
printf '0123456789' >"$video_dir/ten.mp4"

set +e
python3 - "$base_url/videos/ten.mp4" >"$work/urllib.out" 2>&1 <<'PY'
import sys
import urllib.error
import urllib.request

url = sys.argv[1]
failures = 0


def report(ok, label):
    global failures
    print(("PASS " if ok else "FAIL ") + label)
    failures += 0 if ok else 1


def fetch(headers):
    """Returns (status, headers, body); urllib raises for 304, which is caught here."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


status, headers, body = fetch({})
etag = headers.get("ETag")
last_modified = headers.get("Last-Modified")
report(status == 200 and body == b"0123456789", f"plain GET gives 200 and the file (got {status}, {body!r})")
report(bool(etag) and bool(last_modified), f"plain GET carries ETag {etag!r} and Last-Modified {last_modified!r}")

status, headers, body = fetch({"If-None-Match": etag})
report(status == 304, f"If-None-Match with the ETag raises HTTPError 304 (got {status})")
report(headers.get("ETag") == etag, f"the 304 carries ETag {etag!r} (got {headers.get('ETag')!r})")
report(body == b"", f"the 304 has no body (got {body!r})")

status, headers, body = fetch({"If-Modified-Since": last_modified})
report(status == 304, f"If-Modified-Since with the Last-Modified raises HTTPError 304 (got {status})")

status, headers, body = fetch({"If-None-Match": '"some-other-tag"'})
report(status == 200 and body == b"0123456789", f"If-None-Match with another tag gives 200 and the file (got {status}, {body!r})")

status, headers, body = fetch({"Range": "bytes=2-4", "If-Range": etag})
report(status == 206 and body == b"234", f"Range with a matching If-Range gives 206 and bytes 2-4 (got {status}, {body!r})")

sys.exit(1 if failures else 0)
PY
python_status=$?
set -e

# The Python block prints PASS/FAIL lines. Count them here and show any other output.
while IFS= read -r line; do
    case "$line" in
        "PASS "*) pass "${line#PASS }" ;;
        "FAIL "*) fail "${line#FAIL }" ;;
        *) echo "$line" ;;
    esac
done <"$work/urllib.out"
if ((python_status != 0 && failed == 0)); then
    fail "the urllib checks exited with status $python_status without a FAIL line"
fi

finish
