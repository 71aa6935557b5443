"""What the schema cannot see in a sweep file: search paths and values, grid and budget, ASHA, storage,
and every rule of objmae_ray/train/rules.py on the trials the space can produce.

`spec_problems(spec, where)` returns one line per problem; `where(loc)` turns a location in the file
(('search_space', 'alpha'), ('base', 'pretrain', 'data', 'root')) into "FILE:LINE: dotted.path".
Trial rules are checked on the base trial once, then on every combination of candidate values
(`space.candidates`: all values of choices and small int/stepped ranges, the endpoints of other
ranges) when there are at most PRODUCT_LIMIT combinations, else on each value alone with the base
trial's other values (`coverage` says which, and `objmae-sweep validate` prints it).
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable

from objmae_ray.config import FixedParam, RangeParam, SweepSpec, TrialConfigError, trial_from_dict
from objmae_ray.sweep.space import asha_milestones, base_trial, candidates, grid_values, resolve_path
from objmae_ray.train.rules import trial_problems

PRODUCT_LIMIT = 4096  # joint check of all candidate combinations up to this many
STORAGE_SCHEMES = {"s3", "gs", "gcs", "hdfs", "abfs", "abfss", "file", "memory"}

Where = Callable[[tuple], str]


def spec_problems(spec: SweepSpec, where: Where) -> list[str]:
    """Every semantic problem of a schema-valid SweepSpec, one line each (see the module docstring)."""
    paths, problems = _search_paths(spec, where)
    return problems + _trial_problems(spec, paths, where) + _budget_problems(spec, where) + _run_problems(spec, where)


def _search_paths(spec: SweepSpec, where: Where) -> tuple[dict[str, str], list[str]]:
    """(search key -> dotted path for the keys that resolve, problems of the others)."""
    problems: list[str] = []
    paths: dict[str, str] = {}
    for key, param in spec.search_space.items():
        path, problem = resolve_path(key, spec.base)
        if problem:
            problems.append(f"{where(('search_space', key))}: {problem}")
        elif path in paths.values():
            problems.append(f"{where(('search_space', key))}: {path} is already searched")
        else:
            paths[key] = path
            if isinstance(param, RangeParam) and param.type == "float" and _field_is_int(spec.base, path):
                problems.append(f"{where(('search_space', key))}: {path} is an integer: use type: int")
    if all(isinstance(p, FixedParam) for p in spec.search_space.values()):
        problems.append(f"{where(('search_space',))}: needs at least one searched dimension "
                        f"(choices or a range); for repeats of one configuration use `seed: {{choices: [...]}}`")
    return paths, problems


def _field_is_int(base, path: str) -> bool:
    value: Any = base.model_dump()
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return isinstance(value, int) and not isinstance(value, bool)


def _budget_problems(spec: SweepSpec, where: Where) -> list[str]:
    problems: list[str] = []
    grid = None
    if spec.sampler.kind == "grid":
        sizes = []
        for key, param in spec.search_space.items():
            values = grid_values(param)
            if values is None:
                problems.append(f"{where(('search_space', key))}: grid sampler needs choices, "
                                f"an int range or a range with step")
            sizes.append(len(values or [None]))
        grid = math.prod(sizes)
        if spec.num_samples is not None and spec.num_samples != grid:
            problems.append(f"{where(('num_samples',))}: grid sampler runs the whole grid "
                            f"({grid} configurations): leave num_samples out or set it to {grid}")
    elif spec.num_samples is None:
        problems.append(f"{where(('num_samples',))}: required for sampler {spec.sampler.kind!r}")
    configurations = grid if grid is not None else (spec.num_samples or 0)
    trials = configurations * spec.repeats
    if trials > spec.budget.max_trials:
        what = "grid" if grid is not None else "num_samples"
        problems.append(f"{where(('budget', 'max_trials'))}: {what} too large for the budget: "
                        f"{configurations} configurations x {spec.repeats} repeats = {trials} trials "
                        f"> budget.max_trials {spec.budget.max_trials}")
    return problems


def _run_problems(spec: SweepSpec, where: Where) -> list[str]:
    problems: list[str] = []
    if spec.scheduler.kind == "asha":
        grace, max_t = asha_milestones(spec)
        if grace >= max_t:
            problems.append(f"{where(('scheduler', 'grace_period'))}: grace period {grace} reports is not "
                            f"below the {max_t} reports of a trial: ASHA could never stop one")
    scheme = spec.storage.split("://", 1)[0] if "://" in spec.storage else None
    if scheme is not None and scheme not in STORAGE_SCHEMES:
        problems.append(f"{where(('storage',))}: unknown storage scheme {scheme!r} "
                        f"(local path, NFS mount or one of {', '.join(sorted(STORAGE_SCHEMES))}://)")
    return problems


def _combinations(options: dict[str, list]) -> list[dict[str, Any]]:
    """All combinations of the candidate values, or each value alone when there are too many."""
    if math.prod(len(v) for v in options.values()) <= PRODUCT_LIMIT:
        return [dict(zip(options, values)) for values in itertools.product(*options.values())]
    return [{key: value} for key, values in options.items() for value in values]


def coverage(spec: SweepSpec) -> str:
    """Which trials `spec_problems` checked, in words (printed by `objmae-sweep validate`)."""
    options = {key: candidates(param) for key, param in spec.search_space.items()}
    count = math.prod(len(v) for v in options.values())
    ranges = [k for k, p in spec.search_space.items() if isinstance(p, RangeParam) and grid_values(p) is None]
    sample = f" (ranges {', '.join(ranges)} at their endpoints)" if ranges else ""
    if count <= PRODUCT_LIMIT:
        return f"checked {count} trial configuration(s): every combination of the searched values{sample}"
    return (f"checked each searched value alone ({sum(len(v) for v in options.values())} trial configurations; "
            f"{count} combinations > {PRODUCT_LIMIT}){sample}")


def _base_loc(field: str) -> tuple:
    return ("base", *(int(p) if p.isdigit() else p for p in field.split(".")))


def _trial_problems(spec: SweepSpec, paths: dict[str, str], where: Where) -> list[str]:
    """trial_problems of every checked combination of search values, one line per distinct problem: at the
    search key whose value breaks the rule; else at the field's line in `base`, naming the values when only
    some combinations break it."""
    combos = _combinations({key: candidates(spec.search_space[key]) for key in paths})
    found: dict[tuple[str, str], list[dict]] = {}
    for combo in combos:
        try:
            cfg = trial_from_dict(spec.base.model_dump(), {paths[k]: v for k, v in combo.items()})
            problems = [tuple(line.split(": ", 1)) for line in trial_problems(cfg)]
        except TrialConfigError as err:
            problems = err.errors
        for problem in problems:
            found.setdefault(problem, []).append(combo)
    lines = []
    for (field, reason), hits in found.items():
        combo = hits[0]
        keys = [k for k in combo if field == paths[k] or field.startswith(paths[k] + ".")
                or paths[k].startswith(field + ".")]
        if keys:
            named = ", ".join(f"{k}={combo[k]!r}" for k in keys)
            lines.append(f"{where(('search_space', keys[0]))}: {named} gives an invalid trial: {field or 'trial'}: {reason}")
            continue
        named = ", ".join(f"{k}={v!r}" for k, v in combo.items() if not isinstance(spec.search_space[k], FixedParam))
        context = f" (with {named})" if named and len(hits) < len(combos) else ""
        lines.append(f"{where(_base_loc(field))}: {reason}{context}")
    return lines
