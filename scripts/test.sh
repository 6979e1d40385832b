#!/usr/bin/env bash
# The test suite on a fresh machine: set up with the test extras, lint, run pytest.
# Usage: scripts/test.sh [--fast] [PYTEST ARGS...]
#   (no flag)  every test: the README's command and .ci/run (≈ 18 min on 2 cores)
#   --fast     ruff and the tests not marked slow (-m "not slow"; ≈ 6 min on 2 cores): no
#              training of more than a few seconds, no killed processes, no DDP, no reproduce
# Further arguments go to pytest as they are, e.g. scripts/test.sh --fast -k audit -x
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ROBUSTODE_VENV:-.venv}"
SELECT=()
if [ "${1:-}" = "--fast" ]; then
  SELECT=(-m "not slow")
  shift
fi
bash scripts/setup.sh test
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/python" -m pytest -q ${SELECT[@]+"${SELECT[@]}"} "$@"
