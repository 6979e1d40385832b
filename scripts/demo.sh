#!/usr/bin/env bash
# The main job on a fresh machine: set up, then run robustode's headline command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/robustode demo "$@"
