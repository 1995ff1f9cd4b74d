#!/usr/bin/env bash
# Real-client check: ffprobe and ffmpeg read the Big Buck Bunny clip over HTTP.
#
# The clip (5.312 s, H.264 1280x720 + AAC, 1055736 bytes) keeps its moov box at the end, so
# both tools must fetch the tail with a ranged request before they can decode anything. Checks:
#   - ffprobe reports the duration and an h264 video and an aac audio stream;
#   - `ffmpeg -ss 3 -i URL -frames:v 1 out.png` writes a 1280x720 PNG;
#   - the server log shows 206 responses and a served range starting in the second half.
# Prints PASS/FAIL lines and exits non-zero on any failure. Every client call is bounded by
# `timeout`.
#
# Environment: STREAMSERVER_BIN (see common.bash).
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

require_tools ffprobe ffmpeg curl python3 timeout

clip="$repo_root/target/testdata/bigbuckbunny.mp4"
if [[ ! -s "$clip" ]]; then
    timeout 180 bash "$repo_root/scripts/fetch-testdata.sh" >/dev/null ||
        fail_setup "scripts/fetch-testdata.sh could not fetch $clip"
fi

start_server
cp "$clip" "$video_dir/bunny.mp4"
url="$base_url/videos/bunny.mp4"
size="$(stat -c %s "$clip")"

probe_json="$work/probe.json"
if timeout 60 ffprobe -v error -show_entries format=duration:stream=codec_name,codec_type \
    -of json "$url" >"$probe_json" 2>"$work/ffprobe.err"; then
    pass "ffprobe over HTTP exits 0"
else
    fail "ffprobe over HTTP exits 0: $(tail -n 3 "$work/ffprobe.err")"
fi

probe_facts="$(python3 - "$probe_json" <<'PY' || true
import json, sys
try:
    data = json.load(open(sys.argv[1]))
except ValueError:
    data = {}
duration = float(data.get("format", {}).get("duration", "0") or 0)
streams = sorted((s.get("codec_type", ""), s.get("codec_name", "")) for s in data.get("streams", []))
print(f"{duration:.3f}")
print(" ".join(f"{kind}:{name}" for kind, name in streams))
PY
)"
duration="$(sed -n 1p <<<"$probe_facts")"
streams="$(sed -n 2p <<<"$probe_facts")"

if [[ "$duration" == "5.312" ]]; then
    pass "ffprobe duration is 5.312 s"
else
    fail "ffprobe duration: expected 5.312, got ${duration:-nothing}"
fi
if [[ " $streams " == *" video:h264 "* && " $streams " == *" audio:aac "* ]]; then
    pass "ffprobe finds h264 video and aac audio ($streams)"
else
    fail "ffprobe streams: expected video:h264 and audio:aac, got '${streams}'"
fi

frame="$work/out.png"
if timeout 60 ffmpeg -nostdin -v error -y -ss 3 -i "$url" -frames:v 1 "$frame" 2>"$work/ffmpeg.err"; then
    pass "ffmpeg -ss 3 -frames:v 1 over HTTP exits 0"
else
    fail "ffmpeg -ss 3 -frames:v 1 over HTTP exits 0: $(tail -n 3 "$work/ffmpeg.err")"
fi

frame_size="$(timeout 30 ffprobe -v error -select_streams v:0 -show_entries stream=codec_name,width,height \
    -of csv=p=0 "$frame" 2>/dev/null || true)"
if [[ "$frame_size" == "png,1280,720" ]]; then
    pass "the extracted frame is a 1280x720 PNG"
else
    fail "the extracted frame: expected png,1280,720, got '${frame_size}'"
fi

partial_responses="$(count_access bunny.mp4 206)"
if ((partial_responses > 0)); then
    pass "the server log shows $partial_responses responses with 206"
else
    fail "the server log shows no 206 response for bunny.mp4"
fi

highest_start="$(served_range_starts bunny.mp4 | sort -n | tail -n 1)"
if [[ -n "$highest_start" ]] && ((highest_start >= size / 2)); then
    pass "a served range starts at byte $highest_start of $size (the moov box at the end)"
else
    fail "no served range starts in the second half of the $size-byte clip (highest start: ${highest_start:-none})"
fi

finish
