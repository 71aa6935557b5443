#!/usr/bin/env bash
# README's test command: install (or reuse) the environment, then run every test, slow ones included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test   # the package and its test extra
bash scripts/system_deps.sh   # rsync, sshd, prometheus: before the suite, on a machine that never ran it
VENV="${OBJMAE_VENV:-.venv}"
if [ $# -gt 0 ]; then
  exec "$VENV/bin/python" -m pytest -q "$@"
fi
# Two calls: tests marked `launcher` (tests/test_launcher.py) end every Ray process on the machine
# (`ray stop` in ray up / ray down / AutoscalingCluster), so they run after the main suite and its
# session cluster are done.
"$VENV/bin/python" -m pytest -q -m "not launcher"
exec "$VENV/bin/python" -m pytest -q -m launcher
