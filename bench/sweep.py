"""Benchmark: wall time of the smoke sweep from a cold start, and Tune/Train overhead per trial. Prints JSON.

Runs `objmae-sweep search_spaces/smoke.yaml` (or --spec) as a fresh process that starts its own local
Ray, exactly the README's main command, with an empty data cache (the synthetic set is generated),
then reads the trials' result.json:
  wall_s            the whole command: imports, Ray start, every trial, the report
  outside_trials_s  wall_s minus the span from the first trial's start to the last trial's end
                    (interpreter + Ray start + Tune set-up + report)
  per trial         trial_s (trainable start to last report, Tune's time_total_s), compute_s (sum of
                    the epochs' epoch_time_s: training + evaluation), overhead_s = trial_s - compute_s
                    (Train controller and worker group start, data set-up, checkpoints, reporting);
                    first_step_s: trainable start to the first optimiser step (objmae_ray/train/loop.py's
                    first_step_at; clocks of one machine)
Target (report, not assert): wall_s < 300 on this machine. Run it alone (it starts Ray):
  flock /tmp/objmae-ray.lock .venv/bin/python bench/sweep.py
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 300.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(REPO / "search_spaces" / "smoke.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from objmae_ray.results.records import records_from_dir

    with tempfile.TemporaryDirectory(prefix="objmae-bench-") as storage:
        command = [str(Path(sys.executable).parent / "objmae-sweep"), args.spec, "--storage", storage,
                   "--name", "bench"] + [f"--set={o}" for o in args.overrides]
        start = time.perf_counter()
        env = {**os.environ, "OBJMAE_CACHE": str(Path(storage) / "cache")}  # cold: synthetic set generated too
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        records = records_from_dir(Path(storage) / "bench")
    trials = []
    for r in records:
        end = r.last["timestamp"]
        trial_s = r.last["time_total_s"]
        compute = sum(rep.get("epoch_time_s", 0.0) for rep in r.history)
        first_step = r.history[0].get("first_step_at") or float("nan")
        trials.append({"trial_id": r.trial_id, "start": end - trial_s, "end": end, "trial_s": trial_s,
                       "compute_s": compute, "overhead_s": trial_s - compute, "reports": len(r.history),
                       "first_step_s": first_step - (end - trial_s)})
    span = max(t["end"] for t in trials) - min(t["start"] for t in trials)
    mean = lambda key: statistics.mean(t[key] for t in trials)  # noqa: E731
    result = {
        "spec": os.path.relpath(args.spec, REPO), "trials": len(trials), "cpus": os.cpu_count(),
        "wall_s": round(wall, 1), "outside_trials_s": round(wall - span, 1),
        "trial_s_mean": round(mean("trial_s"), 1), "compute_s_mean": round(mean("compute_s"), 2),
        "overhead_s_per_trial": round(mean("overhead_s"), 1),
        "first_step_s_mean": round(mean("first_step_s"), 1),
        "overhead_share": round(mean("overhead_s") / mean("trial_s"), 3),
        "target_wall_s": TARGET_S, "meets_target": wall < TARGET_S,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
