#!/usr/bin/env bash
# Set up (venv, Debian chromium for the report test) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
./run_local.sh --setup-only
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null
fi
exec "${FACEGROUP_VENV:-.venv}/bin/python" -m pytest -q tests "$@"
