"""Sweep files: YAML -> validated `SweepSpec`, with every problem reported before Ray starts.

`load_spec(path, overrides)` reads the file with line numbers (PyYAML node marks), applies
`--set key=value` overrides (a key that is not a SweepSpec field is a `base` TrialConfig path:
`pretrain.data.root=/data/coco` means `base.pretrain.data.root`), expands `${VAR}` /
`${VAR:-default}` environment variables in strings, validates the schema (pydantic), resolves
`pretrained_from: RUN_DIR` into one trial per finished pre-training of that run (sweep/pretrained.py), and then the
meaning (objmae_ray/sweep/checks.py: search paths, every trial rule on the trials the space can
produce, grid, budget). All problems are collected into one `SpecError`, one line each:
`FILE:LINE: field.path: reason`. A missing environment variable is one more line, not a stop: the
rest of the file is still checked (with the `${VAR}` text in place). Schema errors do stop before
the semantic checks, which need a schema-valid spec.
"""
from __future__ import annotations

import copy
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from objmae_ray.config import SweepSpec, dotted
from objmae_ray.errors import ConfigError
from objmae_ray.sweep.checks import spec_problems
from objmae_ray.sweep.plan import plan
from objmae_ray.sweep.pretrained import transfer_study

MAX_NODES = 100_000  # YAML nodes (aliases expanded) a sweep file may have
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
    unset_env: set[tuple] = field(default_factory=set)  # locations holding an unset ${VAR}

    def where(self, loc: tuple) -> str:
        """'FILE:LINE: a.b.c' for the deepest located prefix of loc (or '--set a.b' for overrides)."""
        path = dotted(loc) or "<file>"
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.overridden:
                return f"--set {path}"
            if loc[:n] in self.lines:
                return f"{self.name}:{self.lines[loc[:n]]}: {path}"
        return f"{self.name}: {path}"


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


def _split_path(container: Any, key: str) -> list:
    """'search_space.masking.alpha.low' -> ['search_space', 'masking.alpha', 'low'] (longest existing key first)."""
    parts, out, node = key.split("."), [], container
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
        part: Any = ".".join(parts[:take])
        if isinstance(node, list) and part.lstrip("-").isdigit():
            part = int(part)
        out.append(part)
        parts = parts[take:]
        node = node.get(part) if isinstance(node, dict) else (
            node[part] if isinstance(node, list) and isinstance(part, int) and -len(node) <= part < len(node) else None)
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
        source.unset_env.add(loc)
        problems.append(f"{source.where(loc)}: environment variable {name} is not set "
                        f"(export {name}=... or pass --set {dotted(loc[1:] if loc[:1] == ('base',) else loc)}=...)")
        return match.group(0)

    return _ENV.sub(substitute, data)


# ---- checking --------------------------------------------------------------------------------------
def _pydantic_problems(err: ValidationError, source: _Source) -> list[tuple[str, tuple]]:
    """(problem line, location) per schema error."""
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        if loc[:1] == ("search_space",) and len(loc) > 2 and loc[2] in _PARAM_TAGS:
            loc = loc[:2] + loc[3:]  # drop the discriminator tag pydantic puts in the location
        msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if e["type"] == "extra_forbidden":
            parent_fields = _fields_at(loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), parent_fields, n=1)
            msg = "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        elif e["type"] in ("model_type", "dict_type") and loc:
            msg = f"expected a mapping, got {type(e.get('input')).__name__}"
        elif isinstance(e.get("input"), (int, float, str)) and e["type"] != "missing":
            msg = f"{msg} (got {e['input']!r})"
        problems.append((f"{source.where(loc)}: {msg}", loc))
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
    if problems:
        raise SpecError(problems)
    data = _expand_env(data, (), source, problems)  # an unset variable is one problem; checking goes on
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as err:
        unset = source.unset_env
        raise SpecError(problems + [p for p, loc in _pydantic_problems(err, source) if loc not in unset]) from None
    except (TypeError, ValueError, RecursionError) as err:  # e.g. unhashable keys in odd YAML
        raise SpecError(problems + [f"{path}: cannot be read as a sweep file ({err.__class__.__name__})"]) from None
    if spec.pretrained_from and not problems:  # one trial per stored pre-training of that run (sweep/pretrained.py)
        try:
            spec = transfer_study(spec)
        except ConfigError as err:
            raise SpecError([f"{source.where(('pretrained_from',))}: {err}"]) from None
    problems += spec_problems(spec, source.where)
    if not problems and spec.budget.max_gpu_hours is not None:
        hours = plan(spec).gpu_hours
        if hours > spec.budget.max_gpu_hours:
            problems.append(f"{source.where(('budget', 'max_gpu_hours'))}: estimated {hours:.1f} GPU-hours "
                            f"> budget.max_gpu_hours {spec.budget.max_gpu_hours}")
    if problems:
        raise SpecError(problems)
    return spec
