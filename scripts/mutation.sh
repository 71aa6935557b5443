#!/usr/bin/env bash
# Mutation score of the core (docs/MUTATION.md): mutmut plants one small bug at a time in masking, the model
# and its loss, the transfer evaluation (top-1 / top-5), the table statistics and the export, and runs the
# fast tests (no Ray) that reach the changed function ([tool.mutmut] in pyproject.toml). Prints the score
# per module and in all; exits 1 below 90%. Not run by CI (2,722 mutants: 21 minutes from scratch on an idle
# 2-core VM, docs/MUTATION.md): run it before each release of the core.
#
#   bash scripts/mutation.sh                                 # everything, from scratch
#   bash scripts/mutation.sh --keep 'objmae_ray.results.*'   # some mutants, reusing ./mutants/ results
#
# Equivalent mutants (no test can tell them from the original) are listed with their reason in
# docs/MUTATION.md and left out of the score. OBJMAE_VENV picks the environment (default ./.venv);
# MUTATION_JOBS the number of parallel mutant runs (default: the CPU count).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${OBJMAE_VENV:-.venv}"
KEEP=0
if [ "${1:-}" = "--keep" ]; then KEEP=1; shift; fi

if ! "$VENV/bin/python" -c "import objmae_ray, mutmut" 2>/dev/null; then
  [ -x "$VENV/bin/python" ] || bash scripts/setup.sh
  "$VENV/bin/pip" install -q -e ".[test,mutation]" 2>&1 | sed '/is ignored: it is neither a file nor a directory/d'
fi

# one torch thread per mutant run; the runs themselves go in parallel. Count the CPUs first: GNU nproc
# reports OMP_NUM_THREADS when it is set, which made every run before 2026-11-27 use one core.
JOBS="${MUTATION_JOBS:-$(OMP_NUM_THREADS= OMP_THREAD_LIMIT= nproc)}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONHASHSEED=0
[ "$KEEP" = 1 ] || rm -rf mutants
mkdir -p mutants
start=$(date +%s)
if ! "$VENV/bin/mutmut" run --max-children "$JOBS" "$@" > mutants/run.log 2>&1; then
  tail -n 40 mutants/run.log
  echo "mutation: mutmut run failed (log: mutants/run.log)" >&2
  exit 2
fi
echo "mutation: mutmut run took $(( $(date +%s) - start )) s with $JOBS parallel mutant runs"
exec "$VENV/bin/python" scripts/mutation_score.py
