#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment and installs objmae-ray with its test extras.
# Prints nothing but pip's errors. The environment defaults to ./.venv (OBJMAE_VENV moves it).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${OBJMAE_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# torch first and pinned to the builds that match each other (torchvision must pair with torch);
# pyproject only asks for a range. Override with TORCH_SPEC for other platforms (e.g. a CUDA index).
quiet() { sed '/is ignored: it is neither a file nor a directory/d'; }  # local-mirror noise of this machine's pip.conf
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  "$VENV/bin/pip" install -q -c constraints/lock.txt ${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1} 2>&1 | quiet
fi
"$VENV/bin/pip" install -q -c constraints/lock.txt -e ".[test]" 2>&1 | quiet  # the pins every node uses (scripts/lock.sh)
