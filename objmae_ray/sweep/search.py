"""The search space as Ray Tune's searcher and scheduler: Optuna distributions and sampler (TPE, grid,
random, NSGA-II) inside OptunaSearch, Tune's Repeater for seeds, a ConcurrencyLimiter, and FIFO or
ASHA as the trial scheduler (its time is `trial_epoch`, the epoch across phases, so a trial whose pre-training
was reused, one report for that phase, meets its rungs at the same epochs as one that pre-trained).

Repeats: with `repeats: R` every configuration the sampler proposes runs R times (Tune's Repeater),
with seeds base.seed + 0 .. R-1; the sampler is told the mean of the R results, per objective.
Grid: `tune.grid_search` cannot be converted to Optuna, so exhaustive ablations use Optuna's
GridSampler with num_samples = grid size x repeats. List: the file's `configurations` are enqueued in
order (OptunaSearch's points_to_evaluate) and num_samples = rows x repeats.
Alpha: a float range on masking.alpha is searched over its achievable values L / N (sweep/space.py), and
the searcher never hands out a configuration it handed out before (equal after alpha -> L): TPE and
random sampling can propose the same point twice; the duplicate is told the earlier result (or failed,
if that one is still running), marked with the user attribute `objmae_duplicate_of` (the earlier trial's
number: it ran nothing), and the sampler is asked again.
Study: OptunaSearch keeps the study in the given `BaseStorage` (objmae_ray/sweep/study.py) and loads an
existing study of the same name. On `--resume`, Tune restores the searcher from its checkpoint and
`_OptunaSearch.restore` tells FAIL the RUNNING trials no Tune trial continues (a dead driver's).
"""
from __future__ import annotations

import warnings

import numpy as np
import optuna
import optuna.distributions as od
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter, Repeater, Searcher
from ray.tune.search.optuna import OptunaSearch

from objmae_ray.config import ChoiceParam, SweepSpec
from objmae_ray.sweep.space import (ALPHA, achievable_alphas, asha_milestones, configuration_rows, effective_key,
                                    grid_values, num_patches, searched)
from objmae_ray.sweep.study import DUPLICATE_ATTR, ORPHAN_ATTR, fail_orphans


MAX_DRAWS = 100  # proposals per trial before the searcher gives up on finding a new configuration


class _OptunaSearch(OptunaSearch):
    """OptunaSearch that never suggests the same effective configuration twice, and skips reports lacking
    its metric (Tune's own would raise KeyError)."""

    def __init__(self, *args, spec: SweepSpec, **kwargs):
        super().__init__(*args, **kwargs)
        self._spec = spec
        self._given: dict[str, str] = {}  # effective key -> trial id
        self._finals: dict[str, dict | None] = {}  # trial id -> its final result (None: failed)

    def suggest(self, trial_id: str):
        for draw in range(MAX_DRAWS):
            draw_id = f"{trial_id}~draw{draw}"  # OptunaSearch keeps one Optuna trial per id: one id per draw
            config = super().suggest(draw_id)
            if not isinstance(config, dict):  # None (wait) or Searcher.FINISHED
                return config
            key = effective_key(config, self._spec)
            if key not in self._given:
                self._given[key] = trial_id
                self._ot_trials[trial_id] = self._ot_trials.pop(draw_id)  # the Tune trial owns this Optuna trial
                return config
            earlier = self._finals.get(self._given[key])  # tell Optuna what this point scored; draw again
            self._ot_trials[draw_id].set_user_attr(DUPLICATE_ATTR, self._ot_trials[self._given[key]].number)
            super().on_trial_complete(draw_id, result=earlier, error=earlier is None)
        return Searcher.FINISHED  # every configuration the sampler keeps proposing has run

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, str) and self.metric not in result:
            return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._finals[trial_id] = None if error else result
        super().on_trial_complete(trial_id, result=result, error=error)

    def restore(self, checkpoint_path: str) -> None:
        """Tune's restore, then fail the study's RUNNING trials that no restored Tune trial continues."""
        super().restore(checkpoint_path)
        live = {t.number for tid, t in self._ot_trials.items() if tid not in self._completed_trials}
        fail_orphans(self._ot_study, live)


class _GridSampler(optuna.samplers.GridSampler):
    """GridSampler without its `study.stop()` once the grid is used up: Tune asks for exactly the grid
    size (x repeats), and stop() outside `study.optimize` raises, which would leave the told trial RUNNING."""

    def after_trial(self, study, trial, state, values) -> None:
        return None

    def _get_unvisited_grid_ids(self, study) -> list[int]:
        """Optuna's rule (finished and running points are taken; once all are, the unfinished ones) with the
        trials fail_orphans marked left out: their points were never run, so a resumed sweep runs them."""
        visited, running = set(), set()
        for t in study._storage.get_all_trials(study._study_id, deepcopy=False):
            if ("grid_id" not in t.system_attrs or ORPHAN_ATTR in t.user_attrs
                    or not self._same_search_space(t.system_attrs["search_space"])):
                continue
            if t.state.is_finished():
                visited.add(t.system_attrs["grid_id"])
            elif t.state == optuna.trial.TrialState.RUNNING:
                running.add(t.system_attrs["grid_id"])
        every = set(range(self._n_min_trials))
        return list(every - visited - running or every - visited)


class _Repeater(Repeater):
    """Repeater that averages every objective (Tune's handles a single metric only)."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, **kwargs) -> None:
        group = self._trial_id_to_group[trial_id]
        metrics = self.searcher.metric if isinstance(self.searcher.metric, list) else [self.searcher.metric]
        group.report(trial_id, [float((result or {}).get(m, np.nan)) for m in metrics])
        if group.finished_reporting():
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: a failed configuration
                means = np.nanmean(np.array(group.scores(), dtype=float), axis=0)
            values = [None if np.isnan(v) else float(v) for v in means]
            mean_result = None if None in values else dict(zip(metrics, values))
            self.searcher.on_trial_complete(group.primary_trial_id, result=mean_result, **kwargs)


def optuna_space(spec: SweepSpec) -> dict[str, od.BaseDistribution]:
    """Dotted path -> optuna distribution (grid: every dimension categorical over its values)."""
    space = {}
    for path, param in searched(spec).items():
        if spec.sampler.kind == "grid":
            space[path] = od.CategoricalDistribution(grid_values(param))
        elif isinstance(param, ChoiceParam):
            space[path] = od.CategoricalDistribution(param.choices)
        elif path == ALPHA and param.type == "float":  # only the alphas that change L (module docstring)
            space[path] = od.CategoricalDistribution(achievable_alphas(param.low, param.high, num_patches(spec)))
        elif param.type == "int":
            space[path] = od.IntDistribution(int(param.low), int(param.high), log=param.log,
                                             step=int(param.step or 1))
        else:
            space[path] = od.FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    return space


def build_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of spec.sampler (seeded)."""
    s = spec.sampler
    if s.kind == "grid":
        return _GridSampler({p: grid_values(v) for p, v in searched(spec).items()}, seed=s.seed)
    if s.kind in ("random", "list"):  # list: every trial is an enqueued row; the sampler is never asked
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.kind == "nsga2":  # population: a third of the budget, 2..50 (Optuna's default is 50)
        return optuna.samplers.NSGAIISampler(seed=s.seed, population_size=max(2, min(50, spec.num_samples // 3)))
    return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials)


def build_search(spec: SweepSpec, storage: optuna.storages.BaseStorage | None = None,
                 study_name: str | None = None) -> ConcurrencyLimiter:
    """OptunaSearch over the spec's objectives (their report keys, `Objective.key`) (+ repeats), limited to
    spec.concurrency live trials; the
    study (named study_name, default spec.study) lives in `storage` (default: Optuna's in-memory storage)."""
    metrics = [o.key for o in spec.objectives]  # phase_key(metric, phase) where an objective names its phase
    modes = [o.mode for o in spec.objectives]
    multi = len(metrics) > 1
    points = configuration_rows(spec) if spec.sampler.kind == "list" else None
    searcher = _OptunaSearch(space=optuna_space(spec), metric=metrics if multi else metrics[0],
                             mode=modes if multi else modes[0], sampler=build_sampler(spec),
                             study_name=study_name or spec.study, storage=storage, points_to_evaluate=points,
                             spec=spec)
    if spec.repeats > 1:
        searcher = _Repeater(searcher, repeat=spec.repeats, set_index=True)
    return ConcurrencyLimiter(searcher, max_concurrent=spec.concurrency)


def build_trial_scheduler(spec: SweepSpec) -> FIFOScheduler | ASHAScheduler:
    """Tune's trial scheduler: FIFO, or ASHA on spec.scheduler.metric with one rung step per reported epoch."""
    if spec.scheduler.kind == "fifo":
        return FIFOScheduler()
    grace, max_t = asha_milestones(spec)
    return ASHAScheduler(time_attr="trial_epoch", metric=spec.scheduler.metric, mode=spec.scheduler.mode,
                         grace_period=grace, max_t=max_t, reduction_factor=spec.scheduler.reduction_factor)
