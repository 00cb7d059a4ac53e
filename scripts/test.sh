#!/usr/bin/env bash
# Runs every test of nimbus on a fresh machine: installs what the tests need (Debian's chromium
# and curl for the GUI and platform tests, a TrueType font for the charts, openssl for the load
# balancer's test certificate, ffmpeg (with ffprobe) for video jobs, playwright-core from npm to
# drive chromium,
# python3-skimage for its sample photos, and moto's AWS API server from PyPI for the AWS engine),
# then the whole suite with every cargo feature. Every test binary runs even when one fails
# (--no-fail-fast), so one failure does not hide another; extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v curl >/dev/null || missing+=(curl)
command -v node >/dev/null || missing+=(nodejs npm)
[ -f /usr/lib/python3/dist-packages/skimage/data/chelsea.png ] || missing+=(python3-skimage)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
command -v openssl >/dev/null || missing+=(openssl)
{ command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null; } || missing+=(ffmpeg)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian packages)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq "${missing[@]}" >/dev/null; fi
fi
if ! command -v moto_server >/dev/null; then
  echo "installing moto[server] (PyPI) for the AWS engine's tests"
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]>=5.2,<5.3'
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm install --no-audit --no-fund --silent)
fi

cargo test --workspace --all-features --locked --no-fail-fast "$@"
