"""What the schema cannot see in a sweep file: search paths and values, grid, list and budget, ASHA
(refused with several objectives: it prunes on one metric), storage, objectives (one naming no phase in a
study with several transfer phases), the rows' `paper` annotations (on every row or none, one number per
transfer phase, masking.alpha as the annotation's α reading maps it), `baseline` (one row at most), and
every rule of
objmae_ray/train/rules.py on the trials the space can produce, and what their
phases need of the packed stores present on this machine (objmae_ray/data/store_check.py).

`spec_problems(spec, where)` returns one line per problem; `where(loc)` turns a location in the file
(('search_space', 'alpha'), ('base', 'pretrain', 'data', 'root')) into "FILE:LINE: dotted.path".
Trial rules are checked on every row of a list sampler, or on every combination of candidate values
(`space.candidates`: all values of choices and small int/stepped ranges, the endpoints of other ranges)
when there are at most PRODUCT_LIMIT combinations, else on each value alone with the base trial's other
values (`coverage` says which, and `objmae-sweep validate` prints it).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable

from objmae_ray.config import (PHASE_METRICS, FixedParam, RangeParam, SweepSpec, TrialConfig, TrialConfigError,
                               trial_from_dict)
from objmae_ray.data.store_check import store_problems
from objmae_ray.method.masking import target_length
from objmae_ray.sweep.space import (ALPHA, achievable_alphas, asha_milestones, candidates, configuration_rows,
                                    effective_key, get_path, grid_values, num_patches, resolve_path)
from objmae_ray.train.rules import trial_problems

PRODUCT_LIMIT = 4096  # joint check of all candidate combinations up to this many
STORAGE_SCHEMES = {"s3", "gs", "gcs", "hdfs", "abfs", "abfss", "file", "memory"}
PRETRAIN_METRICS = ("recon_loss", "pretrain_time_s", "speedup_est", "fallback_frac")  # none without pre-training

Where = Callable[[tuple], str]


@dataclass
class Case:
    """One trial configuration the checks try: its searched values and, per path, the file location and
    name that set it (for the problem line)."""

    values: dict[str, Any]  # dotted path -> value
    origin: dict[str, tuple[tuple, str]]  # dotted path -> (file location, key as written)


def spec_problems(spec: SweepSpec, where: Where) -> list[str]:
    """Every semantic problem of a schema-valid SweepSpec, one line each (see the module docstring)."""
    paths, problems = _search_paths(spec, where)
    problems += _list_problems(spec, where)
    cases = checked_cases(spec, paths)
    return (problems + _alpha_problems(spec, paths, where) + _trial_problems(spec, cases, where)
            + _metric_problems(spec, cases, where) + _objective_problems(spec, where) + _paper_problems(spec, where)
            + _baseline_problems(spec, where)
            + _budget_problems(spec, where) + _run_problems(spec, where))


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
    if spec.sampler.kind != "list" and all(isinstance(p, FixedParam) for p in spec.search_space.values()):
        problems.append(f"{where(('search_space',))}: needs at least one searched dimension "
                        f"(choices or a range); for repeats of one configuration use `seed: {{choices: [...]}}`")
    return paths, problems


def _field_is_int(base: TrialConfig, path: str) -> bool:
    value = get_path(base.model_dump(), path)
    return isinstance(value, int) and not isinstance(value, bool)


def _list_problems(spec: SweepSpec, where: Where) -> list[str]:
    """The list sampler runs exactly `configurations`: rows that resolve, differ, and nothing else searched."""
    if spec.sampler.kind != "list":
        return [f"{where(('configurations',))}: only the list sampler runs configurations "
                f"(sampler: {{kind: list}})"] if spec.configurations else []
    if not spec.configurations:
        return [f"{where(('sampler', 'kind'))}: the list sampler needs `configurations` (one mapping per row)"]
    problems = [f"{where(('search_space', key))}: the list sampler runs the configurations only: fix this value "
                f"or set it in each configuration" for key, param in spec.search_space.items()
                if not isinstance(param, FixedParam)]
    for i, row in enumerate(spec.configurations):
        for key in row.settings:
            path, problem = resolve_path(key, spec.base)
            if problem:
                problems.append(f"{where(('configurations', i, key))}: {problem}")
    if not problems:
        seen: dict[str, int] = {}
        for i, row in enumerate(configuration_rows(spec)):
            first = seen.setdefault(effective_key(row, spec), i)
            if first != i:
                problems.append(f"{where(('configurations', i))}: the same trial as configurations.{first}")
    return problems


def _alpha_problems(spec: SweepSpec, paths: dict[str, str], where: Where) -> list[str]:
    """Alpha values that give the same L (source and target length) are the same trial: refuse them."""
    problems = []
    for key, path in paths.items():
        values = grid_values(spec.search_space[key]) if path == ALPHA else None
        if values is None or len(values) < 2:
            continue
        n = num_patches(spec)
        lengths: dict[int, float] = {}
        for value in values:
            length = target_length(float(value), n)
            if length in lengths:
                problems.append(f"{where(('search_space', key))}: {key} {lengths[length]:g} and {value:g} give the same "
                                f"L = {length} source and target patches of N = {n}: one trial twice "
                                f"(achievable alphas are multiples of 1/{n})")
            lengths.setdefault(length, float(value))
    return problems


def _budget_problems(spec: SweepSpec, where: Where) -> list[str]:
    problems: list[str] = []
    configurations = None
    if spec.sampler.kind == "grid":
        sizes = []
        for key, param in spec.search_space.items():
            values = grid_values(param)
            if values is None:
                problems.append(f"{where(('search_space', key))}: grid sampler needs choices, "
                                f"an int range or a range with step")
            sizes.append(len(values or [None]))
        configurations = math.prod(sizes)
        if spec.num_samples is not None and spec.num_samples != configurations:
            problems.append(f"{where(('num_samples',))}: grid sampler runs the whole grid "
                            f"({configurations} configurations): leave num_samples out or set it to {configurations}")
    elif spec.sampler.kind == "list":
        configurations = len(spec.configurations)
        if spec.num_samples is not None and spec.num_samples != configurations:
            problems.append(f"{where(('num_samples',))}: the list sampler runs its {configurations} configurations: "
                            f"leave num_samples out or set it to {configurations}")
    elif spec.num_samples is None:
        problems.append(f"{where(('num_samples',))}: required for sampler {spec.sampler.kind!r}")
    else:
        distinct = distinct_configurations(spec)
        if distinct is not None and spec.num_samples > distinct:
            problems.append(f"{where(('num_samples',))}: {spec.num_samples} configurations asked, but the space "
                            f"holds only {distinct} distinct ones (a trial never runs twice)")
    configurations = configurations if configurations is not None else (spec.num_samples or 0)
    trials = configurations * spec.repeats
    if trials > spec.budget.max_trials:
        what = {"grid": "grid", "list": "configurations"}.get(spec.sampler.kind, "num_samples")
        problems.append(f"{where(('budget', 'max_trials'))}: {what} too large for the budget: "
                        f"{configurations} configurations x {spec.repeats} repeats = {trials} trials "
                        f"> budget.max_trials {spec.budget.max_trials}")
    return problems


def distinct_configurations(spec: SweepSpec) -> int | None:
    """How many different trials the search space holds (alpha counted by its L), None when unbounded."""
    count = 1
    for key, param in spec.search_space.items():
        path = resolve_path(key, spec.base)[0]
        if path == ALPHA and isinstance(param, RangeParam):
            count *= len(achievable_alphas(param.low, param.high, num_patches(spec)))
            continue
        values = grid_values(param)
        if values is None:
            return None
        count *= len(values)
    return count


def _phase_list(spec: SweepSpec) -> str:
    """"0: finetune folder, 1: linear folder, 2: finetune cifar100" (the transfer phases an objective can name)."""
    return ", ".join(f"{i}: {t.mode} {t.data.kind}" for i, t in enumerate(spec.base.transfer))


def _objective_problems(spec: SweepSpec, where: Where) -> list[str]:
    """An objective on a transfer metric reads one phase: with several transfer phases it must name it."""
    problems, phases = [], len(spec.base.transfer)
    for i, objective in enumerate(spec.objectives):
        if objective.phase is not None and objective.phase >= phases:
            problems.append(f"{where(('objectives', i, 'phase'))}: no transfer phase {objective.phase} "
                            f"(base.transfer has {phases}: {_phase_list(spec)})")
        elif objective.phase is None and objective.metric in PHASE_METRICS and phases > 1:
            problems.append(f"{where(('objectives', i))}: {objective.metric!r} names no phase, but the study has "
                            f"{phases} transfer phases ({_phase_list(spec)}): say which one it ranks by, e.g. "
                            f"{{metric: {objective.metric}, mode: {objective.mode}, phase: 0}}")
    return problems


def _paper_problems(spec: SweepSpec, where: Where) -> list[str]:
    """`paper` annotations: on every row or none, one number per transfer phase, and masking.alpha as the
    annotation's α reads (side: α, region: α / 2; README "What alpha means")."""
    annotated = [i for i, row in enumerate(spec.configurations) if row.paper is not None]
    if not annotated or spec.sampler.kind != "list" or _list_problems(spec, lambda loc: ""):
        return []
    problems = [f"{where(('configurations', i))}: no `paper` annotation, but other rows have one: say which "
                f"paper row it reproduces, or `paper: {{table: N, extra: REASON}}`"
                for i in range(len(spec.configurations)) if i not in annotated]
    phases = len(spec.base.transfer)
    rows = configuration_rows(spec)
    base = spec.base.model_dump()
    for i in annotated:
        paper = spec.configurations[i].paper
        for name in ("top1", "top5"):
            numbers = getattr(paper, name)
            if numbers is not None and len(numbers) != phases:
                problems.append(f"{where(('configurations', i, 'paper', name))}: {len(numbers)} number(s) for "
                                f"{phases} transfer phase(s) ({_phase_list(spec)}): give one per phase, null "
                                f"where the paper has none")
        expected = paper.masking_alpha()
        alpha = rows[i].get(ALPHA, get_path(base, ALPHA))
        if expected is not None and not math.isclose(float(alpha), expected, rel_tol=1e-9):
            problems.append(f"{where(('configurations', i, 'paper', 'alpha_reading'))}: the paper's α "
                            f"{paper.alpha:g} read as {paper.alpha_reading!r} is masking.alpha {expected:g}, "
                            f"but this row runs masking.alpha {alpha:g}")
    return problems


def _baseline_problems(spec: SweepSpec, where: Where) -> list[str]:
    """`baseline: true`: on one row at most (with one repeat the tables say that no call can be made)."""
    marked = [i for i, row in enumerate(spec.configurations) if row.baseline]
    return [f"{where(('configurations', i, 'baseline'))}: rows {', '.join(map(str, marked))} are all marked "
            f"baseline; the tables compare every row with one" for i in marked[1:]]


def _run_problems(spec: SweepSpec, where: Where) -> list[str]:
    problems: list[str] = []
    if spec.scheduler.kind == "asha" and len(spec.objectives) > 1:
        problems.append(f"{where(('scheduler', 'kind'))}: ASHA prunes on scheduler.metric "
                        f"{spec.scheduler.metric!r} alone, but the study has {len(spec.objectives)} objectives "
                        f"({', '.join(o.key for o in spec.objectives)}): it would stop trials that are "
                        f"Pareto-optimal on the others; use scheduler: {{kind: fifo}} or a single objective")
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


# ---- the trials the space can produce ----------------------------------------------------------------
def checked_cases(spec: SweepSpec, paths: dict[str, str] | None = None) -> list[Case]:
    """The trials the checks (and the cost plan) try: the list's rows, or combinations of candidate values
    (see the module docstring). paths: search key -> dotted path of the keys that resolve (default: all)."""
    if paths is None:
        paths = {key: path for key in spec.search_space
                 for path, problem in [resolve_path(key, spec.base)] if problem is None}
    if spec.sampler.kind == "list":
        if _list_problems(spec, lambda loc: ""):
            return []
        cases = []
        for i, (row, written) in enumerate(zip(configuration_rows(spec), spec.configurations)):
            keys = {resolve_path(k, spec.base)[0]: k for k in written.settings}
            cases.append(Case(row, {p: (("configurations", i, keys[p]), keys[p]) for p in row if p in keys}))
        return cases
    options = {key: candidates(spec.search_space[key]) for key in paths}
    if math.prod(len(v) for v in options.values()) <= PRODUCT_LIMIT:
        combos = [dict(zip(options, values)) for values in itertools.product(*options.values())]
    else:
        combos = [{key: value} for key, values in options.items() for value in values]
    return [Case({paths[k]: v for k, v in combo.items()}, {paths[k]: (("search_space", k), k) for k in combo})
            for combo in combos]


def coverage(spec: SweepSpec) -> str:
    """Which trials `spec_problems` checked, in words (printed by `objmae-sweep validate`)."""
    if spec.sampler.kind == "list":
        return f"checked the {len(spec.configurations)} listed configuration(s)"
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


def _searched_names(spec: SweepSpec, case: Case) -> str:
    return ", ".join(f"{name}={case.values[p]!r}" for p, (loc, name) in case.origin.items()
                     if loc[0] == "configurations" or not isinstance(spec.search_space[name], FixedParam))


def _trial_problems(spec: SweepSpec, cases: list[Case], where: Where) -> list[str]:
    """trial_problems of every checked case, one line per distinct problem: at the search key (or list row)
    whose value breaks the rule; else at the field's line in `base`, naming the values when only some cases
    break it."""
    found: dict[tuple[str, str], list[Case]] = {}
    for case in cases:
        try:
            cfg = trial_from_dict(spec.base.model_dump(), case.values)
            problems = [tuple(line.split(": ", 1)) for line in trial_problems(cfg) + store_problems(cfg)]
        except TrialConfigError as err:
            problems = err.errors
        for problem in problems:
            found.setdefault(problem, []).append(case)
    lines = []
    for (field, reason), hits in found.items():
        case = hits[0]
        culprits = [p for p in case.origin if field == p or field.startswith(p + ".") or p.startswith(field + ".")]
        if culprits:
            loc, _ = case.origin[culprits[0]]
            named = ", ".join(f"{case.origin[p][1]}={case.values[p]!r}" for p in culprits)
            lines.append(f"{where(loc)}: {named} gives an invalid trial: {field or 'trial'}: {reason}")
            continue
        named = _searched_names(spec, case)
        context = f" (with {named})" if named and len(hits) < len(cases) else ""
        lines.append(f"{where(_base_loc(field))}: {reason}{context}")
    return lines


def _metric_problems(spec: SweepSpec, cases: list[Case], where: Where) -> list[str]:
    """A trial without pre-training (pretrain.epochs 0, the scratch baseline) reports no pre-training metric:
    it cannot be an objective or ASHA's metric."""
    scratch = [case for case in cases if case.values.get("pretrain.epochs", spec.base.pretrain.epochs) == 0]
    if not scratch:
        return []
    used = [(("objectives", i, "metric"), o.metric) for i, o in enumerate(spec.objectives)]
    if spec.scheduler.kind == "asha":
        used.append((("scheduler", "metric"), spec.scheduler.metric))
    named = _searched_names(spec, scratch[0])
    return [f"{where(loc)}: {metric!r} is a pre-training metric, but a trial has pretrain.epochs 0 and reports "
            f"none" + (f" (with {named})" if named else "") for loc, metric in used if metric in PRETRAIN_METRICS]
