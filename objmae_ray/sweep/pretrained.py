"""Stored pre-trainings seen from the sweep side (objmae_ray/train/reuse.py stores and reuses them):

  reuse_plan / reuse_lines   `objmae-sweep validate A.yaml B.yaml ...`: each file's trials with their
                             pre-training keys, the pre-trainings the files share or find stored already,
                             and the GPU-hours with and without reuse
  transfer_study             a sweep file with `pretrained_from: RUN_DIR`: one trial per trial of that
                             finished run whose pre-training finished, with that trial's pre-training
                             (seed, model, masking, pre-train phase, the workers that ran it) and this
                             file's transfer phases, so each trial's key finds the stored pre-training

Trials per file: the grid's every combination and the list's rows (x repeats, seeds base.seed + r), exactly.
TPE / random / NSGA-II draw their configurations while running: when no searched value changes the
pre-training (say, a search over transfer learning rates), every draw of a seed shares one key; otherwise
each draw is counted as its own pre-training (an upper bound, said so).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from objmae_ray.config import SweepSpec, TrialConfig, trial_from_dict
from objmae_ray.errors import ConfigError
from objmae_ray.sweep.checks import checked_cases
from objmae_ray.sweep.plan import Target, phase_costs
from objmae_ray.sweep.rundir import is_remote, join, load_run_spec, run_name, storage_uri, trial_dirs
from objmae_ray.sweep.space import base_trial, configuration_rows, grid_values, num_configurations, searched, \
    trial_from_tune_config
from objmae_ray.train.reuse import find, pretrain_key, store_root

PRETRAIN_PHASE = "pre-train"  # plan.phase_costs' name of the pre-training


# ---- validate: reuse across files ---------------------------------------------------------------------
def planned_configs(spec: SweepSpec) -> tuple[list[TrialConfig], bool]:
    """(the trial configs the sweep runs, exact?): module docstring."""
    base = base_trial(spec).model_dump()
    if spec.sampler.kind == "list":
        rows = configuration_rows(spec)
    elif spec.sampler.kind == "grid":
        dims = searched(spec)
        rows = [dict(zip(dims, values)) for values in itertools.product(*(grid_values(p) for p in dims.values()))]
    else:
        rows = [case.values for case in checked_cases(spec)] or [{}]
    configs = []
    for row in rows:
        for repeat in range(spec.repeats):
            cfg = trial_from_dict(base, row)
            configs.append(cfg.model_copy(update={"seed": cfg.seed + repeat}))
    if spec.sampler.kind in ("list", "grid"):
        return configs, True
    samples = num_configurations(spec) * spec.repeats
    keys = {pretrain_key(c) for c in configs}
    if len(keys) <= spec.repeats:  # no searched value changes the pre-training: one key per seed
        seeds = configs[:spec.repeats]
        return [seeds[i % len(seeds)] for i in range(samples)], True
    return [configs[i % len(configs)] for i in range(samples)], False


@dataclass
class StudyReuse:
    file: str
    trials: int = 0
    pretrainings: int = 0  # pre-trainings this study runs itself
    shared: int = 0  # trials whose pre-training an earlier file (or trial of this one) runs
    stored: int = 0  # trials whose pre-training the storage holds already
    hours_without: float = 0.0
    hours_with: float = 0.0
    exact: bool = True


@dataclass
class ReusePlan:
    studies: list[StudyReuse] = field(default_factory=list)

    @property
    def hours_without(self) -> float:
        return sum(s.hours_without for s in self.studies)

    @property
    def hours_with(self) -> float:
        return sum(s.hours_with for s in self.studies)


def _stored(storage: str, key: str, cache: dict[tuple[str, str], bool]) -> bool:
    """Whether a local storage holds a complete pre-training of key (remote storage is not contacted)."""
    if is_remote(storage):
        return False
    if (storage, key) not in cache:
        cache[(storage, key)] = find(store_root(storage_uri(storage)), key)[0] is not None
    return cache[(storage, key)]


def reuse_plan(files: list[tuple[str, SweepSpec]], targets: dict[str, Target | None] | None = None) -> ReusePlan:
    """Each file's trials in order (files run one after the other, as `objmae-sweep A.yaml B.yaml` does): the
    first trial of a key pre-trains, every later one with that key (same storage) reuses it. `targets`: the
    GPU each file is planned on (`validate --cluster`), as its own plan lines use."""
    seen: set[tuple[str, str]] = set()
    cache: dict[tuple[str, str], bool] = {}
    result = ReusePlan()
    for file, spec in files:
        study = StudyReuse(file)
        configs, study.exact = planned_configs(spec)
        storage = storage_uri(spec.storage) if not is_remote(spec.storage) else spec.storage
        for cfg in configs:
            costs = phase_costs(cfg, spec, target=(targets or {}).get(file))
            total = sum(p.gpu_hours for p in costs)
            pretrain = sum(p.gpu_hours for p in costs if p.name == PRETRAIN_PHASE)
            study.trials += 1
            study.hours_without += total
            key = (storage, pretrain_key(cfg))
            if cfg.pretrain.epochs == 0 or not spec.reuse_pretraining:
                study.hours_with += total
                study.pretrainings += cfg.pretrain.epochs > 0
                continue
            if key in seen or _stored(storage, key[1], cache):
                study.stored += key not in seen
                study.shared += key in seen
                study.hours_with += total - pretrain
            else:
                study.pretrainings += 1
                study.hours_with += total
            seen.add(key)
        result.studies.append(study)
    return result


def reuse_lines(files: list[tuple[str, SweepSpec]], targets: dict[str, Target | None] | None = None) -> list[str]:
    """What `objmae-sweep validate` prints about pre-training reuse (one line per file, then the total)."""
    plan = reuse_plan(files, targets)
    lines = ["pre-training reuse (same key: model, masking, pre-train phase, data, seed, code; "
             "objmae_ray/train/reuse.py):"]
    for s in plan.studies:
        reused = s.shared + s.stored
        lines.append(f"  {s.file}: {s.trials} trials, {s.pretrainings} pre-trainings run, {reused} reused"
                     f" ({s.shared} shared with earlier trials, {s.stored} already stored)"
                     f"{'' if s.exact else ' (sampled configurations counted as distinct pre-trainings)'}; "
                     f"{s.hours_without:.3g} GPU-h without reuse, {s.hours_with:.3g} with")
    saved = plan.hours_without - plan.hours_with
    lines.append(f"  all {len(plan.studies)} file(s): {plan.hours_without:.3g} GPU-hours without reuse, "
                 f"{plan.hours_with:.3g} with reuse (saves {saved:.3g}, "
                 f"{100 * saved / plan.hours_without if plan.hours_without else 0:.0f}%)")
    return lines


# ---- a transfer-only study over a finished run's pre-trainings -------------------------------------------
def _leaves(prefix: str, value) -> dict:
    """Dotted leaf paths of a nested dump: {'pretrain.data.root': ..., ...}."""
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _leaves(f"{prefix}.{key}" if prefix else key, sub).items()}
    return {prefix: value}


def _pretraining(cfg: TrialConfig) -> dict:
    """The leaves of a trial config that make its pre-training key (train/reuse.py pretrain_fields)."""
    dump = cfg.model_dump()
    leaves = {"seed": dump["seed"], "resources.num_workers": dump["resources"]["num_workers"],
              "resources.use_gpu": dump["resources"]["use_gpu"], "precision": dump["precision"]}
    for section in ("model", "masking", "pretrain"):
        leaves.update(_leaves(section, dump[section]))
    return leaves


def source_trials(run_dir: str) -> list[TrialConfig]:
    """The TrialConfigs of a run's trials whose pre-training finished (a report of the last pre-train epoch or
    of a later phase), in trial order."""
    out = []
    for trial in trial_dirs(run_dir):
        try:
            cfg = trial_from_tune_config(trial.config)
        except ConfigError:
            continue
        last = cfg.pretrain.epochs - 1
        if cfg.pretrain.epochs > 0 and any(int(r.get("phase_index", 0)) > 0 or int(r.get("epoch", -1)) == last
                                           for r in trial.history):
            out.append(cfg)
    return out


def transfer_study(spec: SweepSpec) -> SweepSpec:
    """spec with `pretrained_from` resolved (module docstring): the list sampler over the source run's finished
    pre-trainings, one row each, repeats 1; what all rows share goes into base. Unchanged without the field."""
    if not spec.pretrained_from:
        return spec
    source = spec.pretrained_from.rstrip("/")
    if spec.sampler.kind != "list" and any(not hasattr(p, "value") for p in spec.search_space.values()):
        raise ConfigError(f"runs one trial per pre-training of {source}: fix every search_space "
                          f"value (searched: {', '.join(k for k, p in spec.search_space.items() if not hasattr(p, 'value'))})")
    if spec.configurations:
        raise ConfigError(f"makes the configurations itself (one per pre-training of {source}): remove `configurations`")
    load_run_spec(source)  # a run directory (ConfigError otherwise)
    configs = source_trials(source)
    if not configs:
        raise ConfigError(f"{source} has no trial whose pre-training finished")
    rows = [_pretraining(cfg) for cfg in configs]
    varying = [k for k in rows[0] if len({repr(r[k]) for r in rows}) > 1]
    shared = {k: v for k, v in rows[0].items() if k not in varying}
    base = trial_from_dict(base_trial(spec).model_dump(), shared)
    unique = list({repr([(k, r[k]) for k in varying]): {k: r[k] for k in varying} for r in rows}.values()) \
        if varying else []  # one shared pre-training: one row (the list sampler needs a key)
    body = spec.model_dump()
    body.update(base=base.model_dump(), search_space={}, sampler={**body["sampler"], "kind": "list"},
                configurations=unique or [{"seed": base.seed}], repeats=1, num_samples=None)
    return SweepSpec.model_validate(body)


def source_line(spec: SweepSpec) -> str | None:
    """'pretrained_from RUN: N trials, each on one of its stored pre-trainings' for validate (None without it)."""
    if not spec.pretrained_from:
        return None
    return (f"pretrained_from {run_name(spec.pretrained_from)}: {len(spec.configurations)} trial(s), one per "
            f"finished pre-training of {join(spec.pretrained_from)} (transfer phases of this file)")
