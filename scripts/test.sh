#!/usr/bin/env bash
# README's test command: install (or reuse) the environment, then run every test, slow ones included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${OBJMAE_VENV:-.venv}"
exec "$VENV/bin/python" -m pytest -q "$@"
