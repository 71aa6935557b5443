#!/usr/bin/env bash
# README's main command: install (or reuse) the environment, then run the built-in smoke sweep.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh   # the package only: no test extra (moto, awscli, MLflow, optuna-dashboard)
VENV="${OBJMAE_VENV:-.venv}"
exec "$VENV/bin/objmae-sweep" "${1:-search_spaces/smoke.yaml}" "${@:2}"
