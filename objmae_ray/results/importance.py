"""The report's view of the stored Optuna study: hyper-parameter importance and parallel coordinates.

Importance: PED-ANOVA (`optuna.importance.PedAnovaImportanceEvaluator`, target quantile TARGET_QUANTILE):
how much each searched parameter matters for reaching the top quarter of the study's COMPLETE trials,
per objective. With repeats, the study holds one trial per configuration (the mean of its seeds, see
objmae_ray/sweep/search.py), so importance is over configurations. Optuna's documentation advises at
least 5 trials in the top quantile, hence MIN_IMPORTANCE_TRIALS completed trials; below that the page
says how many there are instead of plotting noise. A parameter with one value only (a fixed search
dimension) has importance 0.
Parallel coordinates: `optuna.visualization.matplotlib.plot_parallel_coordinate`, one line per
completed trial, coloured by the first objective (needs MIN_PARALLEL_TRIALS).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import optuna
from matplotlib.figure import Figure
from optuna.trial import TrialState

from objmae_ray.config import SweepSpec
from objmae_ray.sweep.space import short_name

TARGET_QUANTILE = 0.25
TOP_TRIALS = 5  # in the top quantile (Optuna's advice for a stable PED-ANOVA estimate)
MIN_IMPORTANCE_TRIALS = math.floor((TOP_TRIALS - 1) / TARGET_QUANTILE) + 1  # least n with ceil(q n) >= 5: 17
MIN_PARALLEL_TRIALS = 2
EVALUATOR = (f"PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator, target quantile {TARGET_QUANTILE}: "
             f"importance of reaching the top quarter of completed trials)")


def importances(study: optuna.Study, spec: SweepSpec) -> dict[str, dict[str, float]]:
    """objective metric -> {searched parameter: importance}, by EVALUATOR (lower-is-better targets)."""
    evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=TARGET_QUANTILE)
    out = {}
    for i, objective in enumerate(spec.objectives):
        sign = -1.0 if objective.mode == "max" else 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "assumes lower target values are better": the sign handles it
            out[objective.key] = optuna.importance.get_param_importances(
                study, evaluator=evaluator, target=lambda t, i=i, sign=sign: sign * t.values[i], normalize=True)
    return out


def plot_importances(values: dict[str, dict[str, float]], path: Path) -> None:
    """One horizontal bar group per objective."""
    fig = Figure(figsize=(4.5 * len(values), 0.8 + 0.45 * max(map(len, values.values()))), dpi=110)
    axes = fig.subplots(1, len(values), squeeze=False)
    for ax, (metric, scores) in zip(axes[0], values.items()):
        names = list(scores)[::-1]
        ax.barh([short_name(n) for n in names], [scores[n] for n in names], color="#4c72b0")
        ax.set_xlabel(f"importance for {metric}")
        ax.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path)


def plot_parallel(study: optuna.Study, spec: SweepSpec, path: Path) -> None:
    """Optuna's parallel-coordinate plot, coloured by the first objective (Optuna draws with pyplot: the
    figure is closed after saving)."""
    metric = spec.objectives[0].key
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = optuna.visualization.matplotlib.plot_parallel_coordinate(
            study, target=lambda t: t.values[0], target_name=metric)
    fig = ax.figure
    fig.set_size_inches(9, 4.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def study_figures(study: optuna.Study | None, spec: SweepSpec, out: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Write importance.png and parallel_coordinates.png into out when the study allows; return
    ({caption: file name}, numbers) where numbers["skipped"] gives each reason for not plotting."""
    made: dict[str, str] = {}
    numbers: dict[str, Any] = {"skipped": {}}
    if study is None:
        numbers["skipped"]["search importance and parallel coordinates"] = (
            "no stored Optuna study (run made before studies were stored)")
        return made, numbers
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    numbers["study"] = {"name": study.study_name, "complete_trials": complete, "trials": len(study.trials)}
    if complete >= MIN_IMPORTANCE_TRIALS:
        values = importances(study, spec)
        plot_importances(values, out / "importance.png")
        made[f"Hyper-parameter importance over {complete} configurations: {EVALUATOR}"] = "importance.png"
        numbers["importance"] = {"evaluator": EVALUATOR, "values": values}
    else:
        numbers["skipped"]["hyper-parameter importance"] = (
            f"{complete} completed trial(s) in the study; {EVALUATOR} needs at least {MIN_IMPORTANCE_TRIALS} "
            f"({TOP_TRIALS} in the top quantile)")
    if complete >= MIN_PARALLEL_TRIALS:
        plot_parallel(study, spec, out / "parallel_coordinates.png")
        made[f"Parallel coordinates of the {complete} completed configurations, coloured by "
             f"{spec.objectives[0].key} (optuna.visualization.matplotlib)"] = "parallel_coordinates.png"
    else:
        numbers["skipped"]["parallel coordinates"] = (
            f"{complete} completed trial(s) in the study; needs at least {MIN_PARALLEL_TRIALS}")
    return made, numbers
