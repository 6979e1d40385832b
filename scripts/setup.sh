#!/usr/bin/env bash
# Creates .venv (if absent) and installs robustode into it.
# Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh test
# The pinned CPU torch goes in first: an unpinned torch would pull several GB
# of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ROBUSTODE_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" "torch==2.13.0"
if [ -n "${1:-}" ]; then
  "${PIP[@]}" -e ".[$1]"
  if [[ ",$1," == *",test,"* ]]; then
    # torchattacks is a test oracle only; its declared deps would pull torchvision,
    # which has no CPU build here and breaks the CPU torch.
    "${PIP[@]}" --no-deps "torchattacks==3.5.1"
  fi
else
  "${PIP[@]}" -e .
fi
