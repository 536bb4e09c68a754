#!/usr/bin/env bash
# README command 1: set up (venv + install) and run the demo. No Redis, GPU or root needed.
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/setup
exec .venv/bin/python examples/demo.py
