#!/usr/bin/env bash
# The test suite on a fresh machine: set up with the test extras, lint, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ROBUSTODE_VENV:-.venv}"
bash scripts/setup.sh test
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/python" -m pytest -q "$@"
