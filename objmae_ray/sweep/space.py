"""A sweep's search space: which TrialConfig fields vary, the values they can take, and the TrialConfig
of one Tune trial.

Keys of `search_space` are dotted TrialConfig paths (`masking.alpha`, `transfer.0.lr`) or the short
names in ALIASES. A FixedParam sets a field for every trial (it goes into `base_trial`); choices and
ranges are searched. Tune's trial config is the base trial's model_dump() plus the searcher's flat
dotted keys and the repeat index (`__trial_index__`), which `trial_from_tune_config` turns back into
a TrialConfig (seed = base seed + repeat).
"""
from __future__ import annotations

import difflib
import math
from typing import Any

from pydantic import BaseModel

from objmae_ray.config import (ChoiceParam, FixedParam, RangeParam, SweepSpec, TrialConfig, TrialConfigError,
                               trial_from_dict)
from objmae_ray.method.masking import CANONICAL_PADDING, padding_applies, target_length

# Short names for the paper's four knobs.
ALIASES = {
    "alpha": "masking.alpha",
    "padding": "masking.padding",
    "selection": "masking.selection",
    "patch_size": "model.patch_size",
}
SHORT_NAMES = {path: alias for alias, path in ALIASES.items()}
TRIAL_INDEX = "__trial_index__"  # ray.tune.search.repeater.TRIAL_INDEX: the repeat of a configuration
ENUMERATE_LIMIT = 64  # int ranges up to this many values are checked value by value

Param = RangeParam | ChoiceParam | FixedParam


def resolve_path(key: str, base: TrialConfig) -> tuple[str, str | None]:
    """Search-space key -> (dotted TrialConfig path, problem or None). Lists take an index: transfer.0.lr."""
    path = ALIASES.get(key, key)
    node: Any = base
    walked = []
    for part in path.split("."):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return path, f"{'.'.join(walked)} is a list of {len(node)}: use an index 0..{len(node) - 1}"
            node = node[int(part)]
        elif isinstance(node, BaseModel):
            names = list(type(node).model_fields)
            if part not in names:
                hint = difflib.get_close_matches(part, names + list(ALIASES), n=1)
                return path, f"unknown field {'.'.join(walked + [part])!r}" + (
                    f" (did you mean {hint[0]!r}?)" if hint else "")
            node = getattr(node, part)
        else:
            return path, f"{'.'.join(walked)} is not a section"
        walked.append(part)
    if isinstance(node, (BaseModel, list)):
        return path, f"{path} is a section, not a single setting"
    return path, None


def search_paths(spec: SweepSpec) -> dict[str, str]:
    """Search-space key -> dotted TrialConfig path (spec already validated)."""
    return {key: resolve_path(key, spec.base)[0] for key in spec.search_space}


def get_path(config: dict, path: str) -> Any:
    """The value at a dotted path of a TrialConfig.model_dump() dict."""
    for part in path.split("."):
        config = config[int(part)] if isinstance(config, list) else config[part]
    return config


def configuration_rows(spec: SweepSpec) -> list[dict[str, Any]]:
    """sampler list: each row of `configurations` as {dotted path: value}, with every path any row names
    (a row that leaves one out gets the base trial's value). Keys that do not resolve are left out (the
    checks report them)."""
    resolved = [{resolve_path(k, spec.base)[0]: v for k, v in row.settings.items()
                 if resolve_path(k, spec.base)[1] is None} for row in spec.configurations]
    paths = list(dict.fromkeys(path for row in resolved for path in row))
    base = base_trial(spec).model_dump()
    return [{path: row[path] if path in row else get_path(base, path) for path in paths} for row in resolved]


def searched(spec: SweepSpec) -> dict[str, RangeParam | ChoiceParam]:
    """Dotted TrialConfig path -> its (non-fixed) search dimension, in file order. With the list sampler,
    each field the rows set is a choice among the values the rows give it (in order of appearance)."""
    if spec.sampler.kind == "list":
        rows = configuration_rows(spec)
        return {path: ChoiceParam(choices=list(dict.fromkeys(row[path] for row in rows)))
                for path in (rows[0] if rows else {})}
    return {path: spec.search_space[key] for key, path in search_paths(spec).items()
            if not isinstance(spec.search_space[key], FixedParam)}


def short_name(path: str) -> str:
    """'masking.alpha' -> 'alpha' (the paper's knobs); any other path as it is."""
    return SHORT_NAMES.get(path, path)


def describe(values: dict[str, Any]) -> str:
    """'alpha=0.1379, padding=zero': a configuration's searched values (short names, 4 significant digits)."""
    return ", ".join(f"{short_name(k)}={v:.4g}" if isinstance(v, float) else f"{short_name(k)}={v}"
                     for k, v in values.items()) or "base"


def describe_param(param: Param) -> str:
    """'choices [...]', 'float [0.1, 0.5] log', 'fixed 8'."""
    if isinstance(param, FixedParam):
        return f"fixed {param.value!r}"
    if isinstance(param, ChoiceParam):
        return f"choices {param.choices}"
    return (f"{param.type} [{param.low:g}, {param.high:g}]" + (" log" if param.log else "")
            + (f" step {param.step:g}" if param.step else ""))


def grid_values(param: Param) -> list | None:
    """All values of an enumerable dimension (choices, fixed, int range, stepped range), else None."""
    if isinstance(param, FixedParam):
        return [param.value]
    if isinstance(param, ChoiceParam):
        return list(param.choices)
    if param.log:
        if param.type == "int" and param.high - param.low < 10 * ENUMERATE_LIMIT:
            return list(range(int(param.low), int(param.high) + 1))
        return None
    step = param.step if param.step is not None else (1 if param.type == "int" else None)
    if step is None:
        return None
    count = int(math.floor((param.high - param.low) / step + 1e-9)) + 1
    if count > 100_000:
        return None
    if param.type == "int":
        return [int(param.low) + i * int(step) for i in range(count)]
    return [round(param.low + i * step, 12) for i in range(count)]


def candidates(param: Param) -> list:
    """Values a trial can receive that the checks try (all of them where few, else the range endpoints)."""
    values = grid_values(param)
    if not isinstance(param, RangeParam) or (values is not None and len(values) <= ENUMERATE_LIMIT):
        return values
    if param.type == "int":
        return [int(param.low), int(param.high)]
    return [param.low, param.high]


def grid_size(spec: SweepSpec) -> int:
    """Configurations of the full grid over the searched dimensions (grid sampler only)."""
    return math.prod(len(grid_values(p) or [None]) for p in searched(spec).values())


def num_configurations(spec: SweepSpec) -> int:
    """Configurations the sweep tries: the grid size, the list's rows, or num_samples."""
    if spec.sampler.kind == "list":
        return len(spec.configurations)
    return grid_size(spec) if spec.sampler.kind == "grid" else (spec.num_samples or 0)


def base_trial(spec: SweepSpec) -> TrialConfig:
    """spec.base with the search space's fixed values applied (the config every trial starts from)."""
    fixed = {}
    for key, param in spec.search_space.items():
        path, problem = resolve_path(key, spec.base)
        if isinstance(param, FixedParam) and problem is None:
            fixed[path] = param.value
    try:
        return trial_from_dict(spec.base.model_dump(), fixed)
    except TrialConfigError:  # reported by the checks
        return spec.base


def trial_from_tune_config(config: dict) -> TrialConfig:
    """The TrialConfig of one Tune trial config: base keys, dotted searched values, seed + repeat index."""
    params = {k: v for k, v in config.items() if "." in k}
    body = {k: v for k, v in config.items() if "." not in k}
    body["seed"] = int(body.get("seed", 0)) + int(config.get(TRIAL_INDEX, 0))
    return trial_from_dict(body, params)


# ---- alpha as the trial sees it ---------------------------------------------------------------------
# A trial uses L = target_length(alpha, N) source and target patches, so alphas that round to the same L
# are the same trial (on a 4x4 grid, 0.23 and 0.27 both give L = 4). The sweep therefore searches alpha
# over the achievable values L / N (`achievable_alphas`), refuses choices that collide (sweep/checks.py),
# and never runs a configuration twice (`effective_key`, used by sweep/search.py's searcher). Likewise a
# padding that pads nothing (selection mae, L <= N/2) is one configuration (`canonical_values`).
ALPHA = "masking.alpha"


def num_patches(spec: SweepSpec, values: dict[str, Any] | None = None) -> int:
    """N = (img_size / patch_size)^2 of the base trial, or of a configuration that searches them."""
    model = base_trial(spec).model
    img, patch = (values or {}).get("model.img_size", model.img_size), (values or {}).get("model.patch_size",
                                                                                        model.patch_size)
    return (int(img) // int(patch)) ** 2


def achievable_alphas(low: float, high: float, n: int) -> list[float]:
    """The distinct alphas L / N with L = target_length(alpha, N) for alpha in [low, high]; none when the image
    holds no patch (N = 0, refused by the patch-divides-image rule)."""
    if n <= 0:
        return []
    return [length / n for length in range(target_length(low, n), target_length(high, n) + 1)]


PADDING, SELECTION = "masking.padding", "masking.selection"


def canonical_values(values: dict[str, Any], spec: SweepSpec) -> dict[str, Any]:
    """A configuration's searched values with knobs that have no effect set to one value: padding where no slot
    is ever padded (method/masking.py padding_applies: selection mae with L <= N/2) becomes CANONICAL_PADDING."""
    if PADDING not in values:
        return dict(values)
    base = base_trial(spec).masking
    selection, alpha = values.get(SELECTION, base.selection), float(values.get(ALPHA, base.alpha))
    if padding_applies(str(selection), alpha, num_patches(spec, values)):
        return dict(values)
    return {**values, PADDING: CANONICAL_PADDING}


def effective_key(values: dict[str, Any], spec: SweepSpec) -> str:
    """A configuration's searched values with alpha as its L and no-effect knobs canonical (canonical_values):
    equal keys are the same trial."""
    effective = canonical_values(values, spec)
    if ALPHA in effective:
        effective[ALPHA] = f"L={target_length(float(effective[ALPHA]), num_patches(spec, values))}"
    return repr(sorted(effective.items()))


def asha_milestones(spec: SweepSpec) -> tuple[int, int]:
    """(grace_period, max_t) in reports (one per epoch): default grace = pre-train epochs + 1."""
    base = base_trial(spec)
    max_t = base.pretrain.epochs + sum(t.epochs for t in base.transfer)
    grace = spec.scheduler.grace_period or base.pretrain.epochs + 1
    return grace, max_t
