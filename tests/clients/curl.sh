#!/usr/bin/env bash
# Real-client check: curl against a 1000-byte random file.
#
# Checks:
#   - `Range: bytes=0-9,20-29,-5` gives 206 multipart/byteranges whose three parts (parsed with
#     python3) carry the right Content-Range and the right bytes of the file;
#   - `curl -I` gives 200 with Content-Length, Accept-Ranges, ETag and Last-Modified;
#   - `curl -r 0-1` gives 206 with the first two bytes;
#   - `curl -C -` resumes a partial download to the exact file.
# Prints PASS/FAIL lines and exits non-zero on any failure. Every curl call has --max-time.
#
# Environment: STREAMSERVER_BIN (see common.bash).
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

require_tools curl python3 cmp

start_server
file="$video_dir/clip.mp4"
head -c 1000 /dev/urandom >"$file"
url="$base_url/videos/clip.mp4"

# Prints the value of header $2 from the header dump $1 (last response in the dump).
header_value() {
    tr -d '\r' <"$1" | awk -v name="$(tr '[:upper:]' '[:lower:]' <<<"$2")" '
        /^HTTP\// { value = "" }
        { split($0, kv, ": "); if (tolower(kv[1]) == name) value = substr($0, length(kv[1]) + 3) }
        END { print value }'
}

status_of() {
    tr -d '\r' <"$1" | awk '/^HTTP\// { status = $2 } END { print status }'
}

# Multipart: three ranges, the last one a suffix.
status="$(curl -s --max-time 10 -D "$work/multi.headers" -o "$work/multi.body" -w '%{http_code}' \
    -H 'Range: bytes=0-9,20-29,-5' "$url" || true)"
if [[ "$status" == "206" ]]; then
    pass "Range: bytes=0-9,20-29,-5 gives 206"
else
    fail "Range: bytes=0-9,20-29,-5: expected 206, got ${status:-no response}"
fi

content_type="$(header_value "$work/multi.headers" Content-Type)"
if python3 - "$content_type" "$work/multi.body" "$file" <<'PY'; then
import sys

content_type, body_path, file_path = sys.argv[1:4]
body = open(body_path, "rb").read()
data = open(file_path, "rb").read()
expected = [(0, 9), (20, 29), (995, 999)]

media_type, _, parameter = content_type.partition(";")
boundary = parameter.strip().removeprefix("boundary=").strip('"')
if media_type.strip() != "multipart/byteranges" or not boundary:
    sys.exit(f"Content-Type is {content_type!r}, not multipart/byteranges with a boundary")

delimiter = b"\r\n--" + boundary.encode()
if not body.startswith(delimiter) or not body.endswith(delimiter + b"--\r\n"):
    sys.exit(f"body does not start with the delimiter and end with the close delimiter: {body[:80]!r}...{body[-80:]!r}")

parts = body[: -len(delimiter + b"--\r\n")].split(delimiter)[1:]
if len(parts) != len(expected):
    sys.exit(f"expected {len(expected)} parts, got {len(parts)}")

for (start, end), part in zip(expected, parts):
    head, separator, content = part.partition(b"\r\n\r\n")
    if not separator:
        sys.exit(f"part without a blank line after its headers: {part[:80]!r}")
    headers = dict(
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(":") for line in head.decode().split("\r\n") if line)
    )
    want_range = f"bytes {start}-{end}/{len(data)}"
    if headers.get("content-range") != want_range:
        sys.exit(f"part Content-Range {headers.get('content-range')!r}, expected {want_range!r}")
    if headers.get("content-type") != "video/mp4":
        sys.exit(f"part Content-Type {headers.get('content-type')!r}, expected 'video/mp4'")
    if content != data[start : end + 1]:
        sys.exit(f"part {want_range}: bytes differ from the file")
PY
    pass "the three multipart parts carry the right Content-Range and bytes"
else
    fail "the multipart body does not match the file (see the message above)"
fi

declared="$(header_value "$work/multi.headers" Content-Length)"
actual="$(stat -c %s "$work/multi.body")"
if [[ "$declared" == "$actual" ]]; then
    pass "the multipart Content-Length ($declared) matches the body"
else
    fail "multipart Content-Length $declared, body $actual bytes"
fi

# HEAD with curl -I.
curl -s --max-time 10 -I "$url" >"$work/head.headers" || true
head_status="$(status_of "$work/head.headers")"
[[ "$head_status" == "200" ]] && pass "curl -I gives 200" || fail "curl -I: expected 200, got ${head_status:-no response}"
for expected in "Content-Length=1000" "Accept-Ranges=bytes" "Content-Type=video/mp4"; do
    name="${expected%%=*}"
    want="${expected#*=}"
    got="$(header_value "$work/head.headers" "$name")"
    [[ "$got" == "$want" ]] && pass "curl -I: $name: $want" || fail "curl -I: $name: expected $want, got '${got}'"
done
for name in ETag Last-Modified; do
    got="$(header_value "$work/head.headers" "$name")"
    [[ -n "$got" ]] && pass "curl -I: $name present ($got)" || fail "curl -I: $name missing"
done

# A single range with curl -r.
status="$(curl -s --max-time 10 -D "$work/r.headers" -o "$work/r.body" -w '%{http_code}' -r 0-1 "$url" || true)"
[[ "$status" == "206" ]] && pass "curl -r 0-1 gives 206" || fail "curl -r 0-1: expected 206, got ${status:-no response}"
got_range="$(header_value "$work/r.headers" Content-Range)"
[[ "$got_range" == "bytes 0-1/1000" ]] && pass "curl -r 0-1: Content-Range: bytes 0-1/1000" ||
    fail "curl -r 0-1: Content-Range: expected 'bytes 0-1/1000', got '${got_range}'"
if cmp -s "$work/r.body" <(head -c 2 "$file"); then
    pass "curl -r 0-1 returns the first two bytes"
else
    fail "curl -r 0-1 returns $(stat -c %s "$work/r.body") bytes that differ from the first two"
fi

# Resuming a partial download.
head -c 300 "$file" >"$work/resumed"
curl -s --max-time 10 -C - -o "$work/resumed" "$url" || true
if cmp -s "$work/resumed" "$file"; then
    pass "curl -C - resumes a 300-byte partial download to the exact file"
else
    fail "curl -C - left $(stat -c %s "$work/resumed") bytes that differ from the file"
fi

finish
