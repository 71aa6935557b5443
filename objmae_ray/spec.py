"""Sweep files: YAML -> validated `SweepSpec`, with every problem reported before Ray starts.

`load_spec(path, overrides)` reads the file with line numbers (PyYAML node marks), applies
`--set key=value` overrides (a key that is not a SweepSpec field is a `base` TrialConfig path:
`pretrain.data.root=/data/coco` means `base.pretrain.data.root`), expands `${VAR}` /
`${VAR:-default}` environment variables in strings, validates the schema (pydantic) and then the
meaning (search-space paths exist, every value a trial can receive gives a valid TrialConfig, grid
and budget fit). All problems are collected into one `SpecError`, one line each:
`FILE:LINE: field.path: reason`.

`plan(spec)` is what `objmae-sweep validate` prints: trial count and a GPU-hours estimate.
GPU-hours model (an assumption, documented here and printed): FLOPs of one trial =
  pre-train epochs x pre-train images x FLOPs of one ObjMAE forward+backward at the trial's alpha
  + per transfer phase: epochs x (train images x step FLOPs + val images x forward FLOPs),
divided by `estimate.gpu_tflops` sustained TFLOP/s per GPU (default 25: a TITAN RTX / V100-class
card in mixed precision at moderate utilisation). Step FLOPs are the ViT matmul count
(`objmae_ray.train.flops.objmae_flops` / `supervised_flops`: patch projection, qkv, projection, MLP, attention, heads;
backward = 2 x forward), checked against torch's FlopCounterMode in the tests. A linear-probe step counts as a forward (frozen encoder, no
backward); an eval image costs a forward (1/3 of a step). Data loading, communication and start-up
are not counted. Range dimensions are estimated at their endpoints.
"""
from __future__ import annotations

import copy
import difflib
import itertools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from objmae_ray.config import ChoiceParam, FixedParam, RangeParam, SweepSpec, TrialConfig
from objmae_ray.errors import ConfigError

# Short names for the paper's four knobs (issue: alpha / padding / patch size / selection).
ALIASES = {
    "alpha": "masking.alpha",
    "padding": "masking.padding",
    "selection": "masking.selection",
    "patch_size": "model.patch_size",
}
# Train / val images per epoch by dataset kind, for the estimate (override with estimate.*_images).
# coco: COCO 2017 train (the paper's filtered COCO 2014 train has 72,452); folder: ImageNet-100.
DATASET_IMAGES = {"coco": (118_287, 0), "folder": (126_689, 5_000), "cifar100": (50_000, 10_000)}
MAX_NODES = 100_000  # YAML nodes (aliases expanded) a sweep file may have
ENUMERATE_LIMIT = 64  # int ranges up to this many values are checked value by value
PRODUCT_LIMIT = 4096  # joint check of all candidate combinations up to this many
STORAGE_SCHEMES = {"s3", "gs", "gcs", "hdfs", "abfs", "abfss", "file", "memory"}
TRIAL_INDEX = "__trial_index__"  # ray.tune.search.repeater.TRIAL_INDEX: the repeat of a configuration
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_PARAM_TAGS = {"range", "choices", "fixed"}
_PARAM_FIELDS = {"type", "low", "high", "log", "step", "choices", "value"}


class SpecError(ConfigError):
    """A sweep file with problems; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(dict.fromkeys(problems))  # distinct, in order
        super().__init__("\n".join(self.problems))


@dataclass
class _Source:
    """Where values came from: file name, YAML line of each key path, paths set on the command line."""

    name: str
    lines: dict[tuple, int] = field(default_factory=dict)
    overridden: set[tuple] = field(default_factory=set)

    def where(self, loc: tuple) -> str:
        """'FILE:LINE: a.b.c' for the deepest located prefix of loc (or '--set a.b' for overrides)."""
        dotted = ".".join(str(p) for p in loc) or "<file>"
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.overridden:
                return f"--set {dotted}"
            if loc[:n] in self.lines:
                return f"{self.name}:{self.lines[loc[:n]]}: {dotted}"
        return f"{self.name}: {dotted}"


# ---- reading ---------------------------------------------------------------------------------------
def _read_yaml(path: Path, source: _Source) -> Any:
    """Parse the file into Python data, recording the line of every key path in source.lines."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError([f"{path}: cannot read ({err.__class__.__name__}: {err})"]) from None
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        reason = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError([f"{path}{line}: YAML syntax error: {reason}"]) from None
    except RecursionError:
        raise SpecError([f"{path}: YAML nested too deeply"]) from None
    problems: list[str] = []
    try:
        if node is not None:
            _record_lines(node, (), source, problems, budget=[MAX_NODES])
    except (RecursionError, OverflowError):
        raise SpecError([f"{path}: YAML nested too deeply or too many aliased nodes (> {MAX_NODES})"]) from None
    if problems:
        raise SpecError(problems)
    return data


def _record_lines(node: yaml.Node, loc: tuple, source: _Source, problems: list[str], budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:  # aliases can make a small file a huge tree
        raise OverflowError
    source.lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node.value)
            if key in seen:
                problems.append(f"{source.name}:{key_node.start_mark.line + 1}: "
                                f"{'.'.join(map(str, loc + (key,)))}: duplicate key")
            seen.add(key)
            source.lines[loc + (key,)] = key_node.start_mark.line + 1
            _record_lines(value_node, loc + (key,), source, problems, budget)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _record_lines(item, loc + (i,), source, problems, budget)


def _split_path(container: Any, dotted: str) -> list:
    """'search_space.masking.alpha.low' -> ['search_space', 'masking.alpha', 'low'] (longest existing key first)."""
    parts, out, node = dotted.split("."), [], container
    while parts:
        take = 1
        if isinstance(node, dict):
            for n in range(len(parts), 0, -1):
                if ".".join(parts[:n]) in node:
                    take = n
                    break
            else:
                if out == ["search_space"]:  # a new dotted key, optionally followed by a parameter field
                    take = len(parts) - 1 if len(parts) > 1 and parts[-1] in _PARAM_FIELDS else len(parts)
        key = ".".join(parts[:take])
        if isinstance(node, list) and key.lstrip("-").isdigit():
            key = int(key)
        out.append(key)
        parts = parts[take:]
        node = node.get(key) if isinstance(node, dict) else (
            node[key] if isinstance(node, list) and isinstance(key, int) and -len(node) <= key < len(node) else None)
    return out


def _apply_override(data: dict, item: str, source: _Source) -> str | None:
    """Apply one 'key=value' to data in place; return a problem line or None."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        return f"--set {item}: expected key=value with a dotted key (e.g. pretrain.data.root=/data/coco)"
    if key.split(".")[0] not in SweepSpec.model_fields:
        key = "base." + key
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    path = _split_path(data, key)
    node = data
    for i, part in enumerate(path[:-1]):
        nxt = node.get(part) if isinstance(node, dict) else (
            node[part] if isinstance(node, list) and isinstance(part, int) and -len(node) <= part < len(node) else None)
        if nxt is None:
            if not isinstance(node, dict):
                return f"--set {key}: {'.'.join(map(str, path[:i + 1]))} is not a mapping"
            nxt = node[part] = {}
        if not isinstance(nxt, (dict, list)):
            return f"--set {key}: {'.'.join(map(str, path[:i + 1]))} is not a mapping"
        node = nxt
    last = path[-1]
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and -len(node) <= last < len(node):
        node[last] = value
    else:
        return f"--set {key}: no such list item"
    source.overridden.add(tuple(path))
    return None


def _expand_env(data: Any, loc: tuple, source: _Source, problems: list[str]) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string; an unset VAR without default is a problem."""
    if isinstance(data, dict):
        return {k: _expand_env(v, loc + (k,), source, problems) for k, v in data.items()}
    if isinstance(data, list):
        return [_expand_env(v, loc + (i,), source, problems) for i, v in enumerate(data)]
    if not isinstance(data, str) or "${" not in data:
        return data

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        field = ".".join(str(p) for p in (loc[1:] if loc[:1] == ("base",) else loc))
        problems.append(f"{source.where(loc)}: environment variable {name} is not set "
                        f"(export {name}=... or pass --set {field}=...)")
        return match.group(0)

    return _ENV.sub(substitute, data)


# ---- checking --------------------------------------------------------------------------------------
def _pydantic_problems(err: ValidationError, source: _Source, prefix: tuple = ()) -> list[str]:
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        if loc[:1] == ("search_space",) and len(loc) > 2 and loc[2] in _PARAM_TAGS:
            loc = loc[:2] + loc[3:]  # drop the discriminator tag pydantic puts in the location
        loc = prefix + loc
        msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if e["type"] == "extra_forbidden":
            parent_fields = _fields_at(loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), parent_fields, n=1)
            msg = "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        elif e["type"] in ("model_type", "dict_type") and loc:
            msg = f"expected a mapping, got {type(e.get('input')).__name__}"
        elif isinstance(e.get("input"), (int, float, str)) and e["type"] != "missing":
            msg = f"{msg} (got {e['input']!r})"
        problems.append(f"{source.where(loc)}: {msg}")
    return problems


def _fields_at(loc: tuple) -> list[str]:
    """Field names of the pydantic model at loc inside a SweepSpec (for 'did you mean')."""
    model: Any = SweepSpec
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        info = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        model = _model_of(info.annotation) if info else None
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _model_of(annotation: Any) -> Any:
    """The BaseModel class inside an annotation (X, list[X], Optional[X]) or the annotation itself."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return found
    return annotation


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


def set_path(config: dict, path: str, value: Any) -> None:
    """Set a dotted TrialConfig path in a model_dump() dict (list items by index)."""
    parts = path.split(".")
    node: Any = config
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _field_is_int(base: TrialConfig, path: str) -> bool:
    value: Any = base.model_dump()
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return isinstance(value, int) and not isinstance(value, bool)


def candidates(param: RangeParam | ChoiceParam | FixedParam) -> list:
    """Values a trial can receive that we check (all of them where few, else the range endpoints)."""
    if isinstance(param, FixedParam):
        return [param.value]
    if isinstance(param, ChoiceParam):
        return list(param.choices)
    values = grid_values(param)
    if values is not None and len(values) <= ENUMERATE_LIMIT:
        return values
    if param.type == "int":
        return [int(param.low), int(param.high)]
    return [param.low, param.high]


def grid_values(param: RangeParam | ChoiceParam | FixedParam) -> list | None:
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


def trial_config(base: TrialConfig, params: dict[str, Any]) -> TrialConfig:
    """base with each dotted path in params set (raises pydantic ValidationError when invalid)."""
    config = base.model_dump()
    for path, value in params.items():
        set_path(config, path, value)
    return TrialConfig.model_validate(config)


def trial_config_from(config: dict) -> TrialConfig:
    """The TrialConfig of one Tune trial config: base keys, dotted searched values, seed + repeat index."""
    body = {k: v for k, v in config.items() if "." not in k and not k.startswith("_")}
    for path, value in config.items():
        if "." in path:
            set_path(body, path, value)
    body["seed"] = int(body.get("seed", 0)) + int(config.get(TRIAL_INDEX, 0))
    return TrialConfig.model_validate(body)


def _semantic_problems(spec: SweepSpec, source: _Source) -> list[str]:
    """What the schema cannot see: search paths and values, grid and budget, data roots, ASHA, storage."""
    return _search_space_problems(spec, source) + _budget_problems(spec, source) + _run_problems(spec, source)


def _search_space_problems(spec: SweepSpec, source: _Source) -> list[str]:
    problems: list[str] = []
    paths: dict[str, str] = {}
    for key in spec.search_space:
        path, problem = resolve_path(key, spec.base)
        if problem:
            problems.append(f"{source.where(('search_space', key))}: {problem}")
        elif path in paths.values():
            problems.append(f"{source.where(('search_space', key))}: {path} is already searched")
        else:
            paths[key] = path
    for key, path in paths.items():
        param = spec.search_space[key]
        if isinstance(param, RangeParam) and param.type == "float" and _field_is_int(spec.base, path):
            problems.append(f"{source.where(('search_space', key))}: {path} is an integer: use type: int")
    problems += _value_problems(spec, paths, source)
    if not any(not isinstance(p, FixedParam) for p in spec.search_space.values()):
        problems.append(f"{source.where(('search_space',))}: needs at least one searched dimension "
                        f"(choices or a range); for repeats of one configuration use `seed: {{choices: [...]}}`")
    return problems


def _budget_problems(spec: SweepSpec, source: _Source) -> list[str]:
    problems: list[str] = []
    grid = None
    if spec.sampler.kind == "grid":
        sizes = []
        for key, param in spec.search_space.items():
            values = grid_values(param)
            if values is None:
                problems.append(f"{source.where(('search_space', key))}: grid sampler needs choices, "
                                f"an int range or a range with step")
            sizes.append(len(values or [None]))
        grid = math.prod(sizes)
        if spec.num_samples is not None and spec.num_samples != grid:
            problems.append(f"{source.where(('num_samples',))}: grid sampler runs the whole grid "
                            f"({grid} configurations): leave num_samples out or set it to {grid}")
    elif spec.num_samples is None:
        problems.append(f"{source.where(('num_samples',))}: required for sampler {spec.sampler.kind!r}")
    configurations = grid if grid is not None else (spec.num_samples or 0)
    trials = configurations * spec.repeats
    if trials > spec.budget.max_trials:
        what = "grid" if grid is not None else "num_samples"
        problems.append(f"{source.where(('budget', 'max_trials'))}: {what} too large for the budget: "
                        f"{configurations} configurations x {spec.repeats} repeats = {trials} trials "
                        f"> budget.max_trials {spec.budget.max_trials}")
    return problems


def _run_problems(spec: SweepSpec, source: _Source) -> list[str]:
    problems: list[str] = []
    phases = [(("pretrain",), spec.base.pretrain.data)]
    phases += [(("transfer", i), t.data) for i, t in enumerate(spec.base.transfer)]
    for loc, data in phases:
        if data.kind != "synthetic" and not data.root:
            dotted = ".".join(map(str, loc))
            problems.append(f"{source.where(('base', *loc, 'data', 'root'))}: required for kind {data.kind!r} "
                            f"(set it, use ${{VAR}}, or --set {dotted}.data.root=PATH)")
    if spec.scheduler.kind == "asha":
        grace, max_t = asha_milestones(spec)
        if grace >= max_t:
            problems.append(f"{source.where(('scheduler', 'grace_period'))}: grace period {grace} reports is not "
                            f"below the {max_t} reports of a trial: ASHA could never stop one")
    scheme = spec.storage.split("://", 1)[0] if "://" in spec.storage else None
    if scheme is not None and scheme not in STORAGE_SCHEMES:
        problems.append(f"{source.where(('storage',))}: unknown storage scheme {scheme!r} "
                        f"(local path, NFS mount or one of {', '.join(sorted(STORAGE_SCHEMES))}://)")
    return problems


def _value_problems(spec: SweepSpec, paths: dict[str, str], source: _Source) -> list[str]:
    """Every checked candidate value (jointly where the product is small) must give a valid TrialConfig."""
    options = {key: candidates(spec.search_space[key]) for key in paths}
    problems: list[str] = []
    if math.prod(len(v) for v in options.values()) <= PRODUCT_LIMIT:
        combos = (dict(zip(options, values)) for values in itertools.product(*options.values()))
    else:
        combos = ({key: value} for key, values in options.items() for value in values)
    for combo in combos:
        try:
            cfg = trial_config(spec.base, {paths[k]: v for k, v in combo.items()})
            for field, msg in _trial_problems(cfg):
                keys = [k for k in combo if paths[k] == field]
                if keys:
                    problems.append(f"{source.where(('search_space', keys[0]))}: {keys[0]}={combo[keys[0]]!r}: {msg}")
                else:
                    context = ", ".join(f"{k}={v!r}" for k, v in combo.items())
                    loc = ("base", *(int(p) if p.isdigit() else p for p in field.split(".")))
                    problems.append(f"{source.where(loc)}: {msg}" + (f" (with {context})" if context else ""))
        except ValidationError as err:
            for e in err.errors():
                field = ".".join(str(p) for p in e["loc"]) or "trial"
                msg = e["msg"].removeprefix("Value error, ")
                keys = [k for k in combo if field.startswith(paths[k]) or paths[k].startswith(field + ".")]
                keys = keys or list(combo)
                values = ", ".join(f"{k}={combo[k]!r}" for k in keys)
                loc = ("search_space", keys[0]) if keys else ("base",)
                problems.append(f"{source.where(loc)}: {values} gives an invalid trial: {field}: {msg}")
    return problems


def _trial_problems(cfg: TrialConfig) -> list[tuple[str, str]]:
    """What pydantic cannot see in one trial: unknown model preset, warm-up longer than the phase."""
    from objmae_ray.model import PRESETS

    problems = []
    if cfg.model.preset not in PRESETS:
        problems.append(("model.preset", f"unknown preset {cfg.model.preset!r} (choose from {', '.join(PRESETS)})"))
    phases = [("pretrain", cfg.pretrain)] + [(f"transfer.{i}", t) for i, t in enumerate(cfg.transfer)]
    for name, phase in phases:
        if phase.warmup_epochs > phase.epochs:
            problems.append((f"{name}.warmup_epochs", f"{phase.warmup_epochs} is more than epochs ({phase.epochs})"))
    return problems


def base_trial(spec: SweepSpec) -> TrialConfig:
    """spec.base with the search space's fixed values applied (the config every trial starts from)."""
    fixed = {}
    for key, param in spec.search_space.items():
        path, problem = resolve_path(key, spec.base)
        if isinstance(param, FixedParam) and problem is None:
            fixed[path] = param.value
    try:
        return trial_config(spec.base, fixed)
    except ValidationError:  # reported by _value_problems
        return spec.base


def asha_milestones(spec: SweepSpec) -> tuple[int, int]:
    """(grace_period, max_t) in reports (one per epoch): default grace = pre-train epochs + 1."""
    base = base_trial(spec)
    max_t = base.pretrain.epochs + sum(t.epochs for t in base.transfer)
    grace = spec.scheduler.grace_period or base.pretrain.epochs + 1
    return grace, max_t


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepSpec:
    """Read, override, expand and validate a sweep file; raise SpecError listing every problem."""
    path = Path(path)
    source = _Source(str(path))
    if not path.is_file():
        raise SpecError([f"{path}: sweep file not found"])
    data = _read_yaml(path, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError([f"{path}:1: the file must be a YAML mapping (study, objectives, base, search_space, ...)"])
    data = copy.deepcopy(data)
    problems = [p for p in (_apply_override(data, item, source) for item in overrides) if p]
    data = _expand_env(data, (), source, problems)
    if problems:
        raise SpecError(problems)
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_pydantic_problems(err, source)) from None
    except (TypeError, ValueError, RecursionError) as err:  # e.g. unhashable keys in odd YAML
        raise SpecError([f"{path}: cannot be read as a sweep file ({err.__class__.__name__})"]) from None
    problems = _semantic_problems(spec, source)
    if not problems and spec.budget.max_gpu_hours is not None:
        hours = plan(spec).gpu_hours
        if hours > spec.budget.max_gpu_hours:
            problems.append(f"{source.where(('budget', 'max_gpu_hours'))}: estimated {hours:.1f} GPU-hours "
                            f"> budget.max_gpu_hours {spec.budget.max_gpu_hours}")
    if problems:
        raise SpecError(problems)
    return spec


def search_paths(spec: SweepSpec) -> dict[str, str]:
    """Search-space key -> dotted TrialConfig path (spec already validated)."""
    return {key: resolve_path(key, spec.base)[0] for key in spec.search_space}


# ---- plan ------------------------------------------------------------------------------------------
@dataclass
class Plan:
    configurations: int
    trials: int
    epochs_per_trial: int
    gpu_hours_per_trial: float  # mean over the checked candidate configurations
    gpu_hours: float

    def lines(self, spec: SweepSpec) -> list[str]:
        dims = [f"  {key} ({path}): {_describe(spec.search_space[key])}" for key, path in search_paths(spec).items()]
        objectives = ", ".join(f"{o.metric} ({o.mode})" for o in spec.objectives)
        sched = spec.scheduler.kind
        if sched == "asha":
            grace, max_t = asha_milestones(spec)
            sched += f" on {spec.scheduler.metric} ({spec.scheduler.mode}), grace {grace}, max_t {max_t} reports"
        base = base_trial(spec)
        res = base.resources
        return [
            f"study {spec.study}: objectives {objectives}; sampler {spec.sampler.kind} (seed {spec.sampler.seed})",
            "search space:", *(dims or ["  (none: the base trial only)"]),
            f"trials: {self.configurations} configurations x {spec.repeats} repeats = {self.trials} "
            f"(concurrency {spec.concurrency}); scheduler {sched}",
            f"per trial: {res.num_workers} worker(s) x ({res.cpus_per_worker} CPU"
            f"{f', {res.gpus_per_worker} GPU' if res.use_gpu else ''}), {self.epochs_per_trial} epochs "
            f"(pre-train {base.pretrain.epochs} on {base.pretrain.data.kind}"
            + "".join(f", {t.mode} {t.epochs} on {t.data.kind}" for t in base.transfer) + ")",
            f"estimate: {self.gpu_hours_per_trial:.3g} GPU-hours per trial, {self.gpu_hours:.3g} GPU-hours in all "
            f"(FLOP count / {spec.estimate.gpu_tflops:g} sustained TFLOP/s per GPU; no data loading or start-up)",
            f"storage: {spec.storage}",
        ]


def _describe(param) -> str:
    if isinstance(param, FixedParam):
        return f"fixed {param.value!r}"
    if isinstance(param, ChoiceParam):
        return f"choices {param.choices}"
    return (f"{param.type} [{param.low:g}, {param.high:g}]" + (" log" if param.log else "")
            + (f" step {param.step:g}" if param.step else ""))


def plan(spec: SweepSpec) -> Plan:
    """Trial count and FLOP-based GPU-hours estimate (see module docstring for the model)."""
    paths = search_paths(spec)
    if spec.sampler.kind == "grid":
        configurations = math.prod(len(grid_values(p) or [None]) for p in spec.search_space.values())
    else:
        configurations = spec.num_samples or 0
    options = {key: candidates(spec.search_space[key]) for key in paths}
    combos = [dict(zip(options, values)) for values in itertools.product(*options.values())][:64]
    seconds = []
    for combo in combos or [{}]:
        cfg = trial_config(spec.base, {paths[k]: v for k, v in combo.items()})
        seconds.append(trial_flops(cfg, spec) / (spec.estimate.gpu_tflops * 1e12))
    per_trial = sum(seconds) / len(seconds) / 3600
    base = base_trial(spec)
    epochs = base.pretrain.epochs + sum(t.epochs for t in base.transfer)
    trials = configurations * spec.repeats
    return Plan(configurations, trials, epochs, per_trial, per_trial * trials)


def _images(data, override: int | None) -> tuple[int, int]:
    if override is not None:
        return override, 0
    if data.kind == "synthetic":
        return data.num_images, 0
    return DATASET_IMAGES[data.kind]


def trial_flops(cfg: TrialConfig, spec: SweepSpec) -> float:
    """FLOPs of one trial (pre-train + every transfer phase), per the module docstring's model."""
    from objmae_ray.train.flops import objmae_flops, supervised_flops

    model = cfg.model
    pre_images, _ = _images(cfg.pretrain.data, spec.estimate.pretrain_images)
    total = cfg.pretrain.epochs * pre_images * objmae_flops(model.preset, model.img_size, model.patch_size,
                                                             cfg.masking.alpha)
    step = supervised_flops(model.preset, model.img_size, model.patch_size)
    for transfer in cfg.transfer:
        train_images, val_images = _images(transfer.data, spec.estimate.transfer_images)
        train_step = step / 3 if transfer.mode == "linear" else step
        total += transfer.epochs * (train_images * train_step + val_images * step / 3)
    return float(total)
