#!/usr/bin/env bash
# Refreshes constraints/lock.txt, the pins every install of objmae-ray uses (scripts/setup.sh, the
# setup_commands of cluster/gpu.yaml and cluster/onprem.yaml): `pip freeze` of a tested environment.
#   usage: bash scripts/lock.sh [PYTHON]   (default: the active environment's python, else ./.venv/bin/python)
# Run it in the environment CI just passed in (Python 3.11 on Linux x86_64, the version in Ray's 2.60
# py311 images), then commit constraints/lock.txt. torch and torchvision are pinned without a local label
# (torch==2.14.1 accepts 2.14.1+cu128 from the CUDA index the GPU nodes use); setuptools is pinned too
# (--all; some dependencies pull it in), pip is not (each environment brings its own); the CUDA runtime
# wheels (nvidia-*, cuda-*) are left out because each torch build pins its own exactly.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-}"
if [ -z "$PY" ]; then
  if [ -n "${VIRTUAL_ENV:-}" ]; then PY="$VIRTUAL_ENV/bin/python"; else PY=.venv/bin/python; fi
fi
[ -x "$PY" ] || { echo "lock.sh: no python at $PY: run scripts/setup.sh or pass the environment's python" >&2; exit 2; }
OUT=constraints/lock.txt
{
  echo "# objmae-ray's pinned installs: refresh with \`bash scripts/lock.sh\` (pip freeze of a tested environment)."
  echo "# Made with $("$PY" -c 'import platform, sys; print(f"Python {sys.version.split()[0]} on {platform.system()} {platform.machine()}")')."
  echo "# Used as pip -c: only the packages an install needs are taken from it."
  "$PY" -m pip freeze --all --exclude-editable --disable-pip-version-check 2>/dev/null \
    | grep -v '^#' \
    | grep -viE '^(nvidia-|cuda-|pip==)' \
    | sed -E 's/^(torch|torchvision)==([^+]+)\+.*/\1==\2/' \
    | LC_ALL=C sort -f
} > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "wrote $OUT: $(grep -vc '^#' "$OUT") pins"
