"""Ray clusters as objmae-ray needs them: launcher YAMLs checked offline, and the node types a trial can run on.

Cluster YAMLs (`cluster/gpu.yaml`, `cluster/onprem.yaml`): Ray's own schema does the structural check
(`prepare_config` fills the provider defaults, then `validate_config` runs the JSON schema); on top of that
we require what objmae-ray relies on: every worker type declares integer `CPU` and `GPU` resources
explicitly; the head trains nothing (`CPU: 0`) but hosts the trials' light drivers (`objmae_driver`); and
every node starts with token authentication (`RAY_AUTH_MODE=token` on each `ray start`, the token shipped
through `file_mounts`, never written into the file). On AWS (`aws_problems`, one line per problem): every
node type pins its `ImageId` (Ray's default AMI has a CUDA 11.2 driver that cannot run the pinned torch);
the head's `IamInstanceProfile` is one documented as able to launch workers (`objmae-ray-head`, made by
cluster/iam/create_roles.sh with cluster/iam/head-policy.json, or Ray's own `ray-autoscaler-v1`), and a
worker type names only the profile that policy lets the head pass (`objmae-ray-worker`); and every
`pip install` of the setup commands (Ray's defaults included) uses a constraints file (`-c
constraints/lock.txt`), so every node installs the same versions. No cloud API is called.

Capacity: a trial needs `num_workers` bundles of {CPU: cpus_per_worker, GPU: gpus_per_worker if use_gpu}.
`NodeType`s say what a cluster can bring up: the types of its autoscaling config x `max_workers`
(`autoscaler_node_types`: the autoscaler state in the GCS, else the config file the head's autoscaler
runs with), or, with no autoscaler, its live nodes. `capacity_problems` refuses a trial no node type can
ever host, naming the field and the largest node type; `waiting_for_nodes` says what a trial that only
needs a scale-up waits for.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from objmae_ray.config import ResourcesConfig
from objmae_ray.errors import ConfigError

# Custom resource the on-demand head offers for the trials' light Tune drivers (see objmae_ray/sweep/tuner.py driver_resources).
DRIVER_RESOURCE = "objmae_driver"
# Where Ray looks for the token when neither RAY_AUTH_TOKEN nor RAY_AUTH_TOKEN_PATH is set (ray get-auth-token --generate writes it).
TOKEN_FILE = ".ray/auth_token"
_TOKEN_PATH_ENV = re.compile(r"RAY_AUTH_TOKEN_PATH=([^\s;]+)")
# Instance profiles documented as able to launch workers: HEAD_PROFILE (cluster/iam/create_roles.sh, with
# cluster/iam/head-policy.json) and Ray's default (made by `ray up` when the head names no profile:
# AmazonEC2FullAccess + AmazonS3FullAccess, wider than needed). HEAD_PROFILE may pass WORKER_PROFILE only.
HEAD_PROFILE = "objmae-ray-head"
WORKER_PROFILE = "objmae-ray-worker"
RAY_DEFAULT_PROFILE = "ray-autoscaler-v1"
CONSTRAINTS_FILE = "constraints/lock.txt"  # refreshed by scripts/lock.sh
SETUP_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands")


@dataclass(frozen=True)
class NodeType:
    """A kind of node a trial's workers can run on: its resources and how many of it the cluster can have."""

    name: str
    resources: dict[str, float]
    max_nodes: int  # max_workers of an autoscaling type; 1 for a live node


# ---- cluster YAMLs ---------------------------------------------------------------------------------------
def load_cluster_config(path: str | Path) -> dict[str, Any]:
    """Read, fill defaults and validate a cluster YAML; raise ConfigError '<file>: <field>: <reason>'."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: cluster config not found")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: not a YAML mapping")
    try:
        config = prepare_config(raw)
        validate_config(config)
    except Exception as err:  # jsonschema.ValidationError, ValueError from Ray's checks
        where = "/".join(str(p) for p in getattr(err, "absolute_path", [])) or "config"
        reason = getattr(err, "message", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: {where}: {reason}") from None
    _check_resources(path, config)
    _check_token_auth(path, config)
    problems = aws_problems(config) + pip_problems(raw)
    if problems:
        raise ConfigError("\n".join(f"{path}: {problem}" for problem in problems))
    return config


def _check_resources(path: Path, config: dict[str, Any]) -> None:
    if config["provider"]["type"] == "local":
        return  # the local provider reads resources off the machines themselves
    head = config["head_node_type"]
    for name, node in config["available_node_types"].items():
        resources = node.get("resources", {})
        field = f"available_node_types/{name}/resources"
        if name == head:
            if resources.get("CPU") != 0:
                raise ConfigError(f"{path}: {field}/CPU: the head must declare CPU: 0 so no trial lands on it")
            if resources.get(DRIVER_RESOURCE, 0) < 1:
                raise ConfigError(f"{path}: {field}: missing '{DRIVER_RESOURCE}' (trial drivers would land on spot workers)")
            continue
        for key in ("CPU", "GPU"):
            if key not in resources:
                raise ConfigError(f"{path}: {field}: missing explicit '{key}' (autoscaler needs it to plan GPU trials)")
        if resources["GPU"] < 1:
            raise ConfigError(f"{path}: {field}/GPU: a GPU worker type needs GPU >= 1")


def _check_token_auth(path: Path, config: dict[str, Any]) -> None:
    """Every `ray start` runs with RAY_AUTH_MODE=token and finds the token in a file that file_mounts ships."""
    mounts = [str(dest) for dest in config.get("file_mounts", {})]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for i, command in enumerate(config.get(key, [])):
            if "RAY_AUTH_TOKEN=" in command:
                raise ConfigError(f"{path}: {key}/{i}: a token written into the file leaks with it; "
                                  f"ship it through file_mounts (see README, On a GPU cluster)")
            if not re.search(r"\bray start\b", command):
                continue
            if "RAY_AUTH_MODE=token" not in command:
                raise ConfigError(f"{path}: {key}/{i}: `ray start` without RAY_AUTH_MODE=token would start a node "
                                  f"anyone on its network can run code on")
            token_path = _TOKEN_PATH_ENV.search(command)
            wanted = token_path.group(1) if token_path else f"~/{TOKEN_FILE}"
            if not any(_same_remote_path(dest, wanted) for dest in mounts):
                raise ConfigError(f"{path}: file_mounts: nothing ships the auth token to {wanted} "
                                  f"(add `{wanted}: ~/{TOKEN_FILE}`, made by `ray get-auth-token --generate`)")


def _same_remote_path(dest: str, wanted: str) -> bool:
    """file_mounts destination equals the token path (`~/` and `/home/<user>/` or `/root/` count as the same home)."""
    def norm(p: str) -> str:
        return re.sub(r"^(~|/home/[^/]+|/root)/", "~/", p.rstrip("/"))
    return norm(dest) == norm(wanted)


# ---- AWS: image, instance profiles; pinned installs ----------------------------------------------------
def _profile_name(profile: Any) -> str | None:
    """The instance profile's name from `IamInstanceProfile: {Name: ...}` or `{Arn: ...:instance-profile/NAME}`."""
    if not isinstance(profile, dict):
        return str(profile) if profile else None
    return str(profile.get("Name") or str(profile.get("Arn", "")).rsplit("/", 1)[-1]) or None


def aws_problems(config: dict[str, Any]) -> list[str]:
    """What keeps an AWS cluster of this config from starting GPU workers that train: a node type without a
    pinned `ImageId`, a head profile not documented as able to launch workers, a worker profile that head
    cannot pass. [] for other providers. One line each, naming the field."""
    if config["provider"]["type"] != "aws":
        return []
    from ray.autoscaler._private.aws.config import DEFAULT_AMI_NAME

    problems = []
    head = config["head_node_type"]
    types = config["available_node_types"]
    for name, node in types.items():
        image = str(node.get("node_config", {}).get("ImageId", "")).strip()
        if image.lower() in ("", "latest_dlami"):
            problems.append(
                f"available_node_types/{name}/node_config/ImageId: missing, so Ray boots its default "
                f"'{DEFAULT_AMI_NAME}' (CUDA 11.2 driver), which cannot run the pinned torch; set the Deep Learning "
                f"Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) of the region (README, On a GPU cluster)")
    head_config = types[head].get("node_config", {})
    head_profile = _profile_name(head_config.get("IamInstanceProfile"))
    if head_profile not in (None, HEAD_PROFILE, RAY_DEFAULT_PROFILE):
        problems.append(
            f"available_node_types/{head}/node_config/IamInstanceProfile: '{head_profile}' is not documented as able "
            f"to launch workers; use {HEAD_PROFILE} (cluster/iam/create_roles.sh) or leave it out for Ray's "
            f"{RAY_DEFAULT_PROFILE}")
    if head_profile == HEAD_PROFILE:
        for name, node in types.items():
            profile = node.get("node_config", {}).get("IamInstanceProfile")
            if name != head and profile is not None and _profile_name(profile) != WORKER_PROFILE:
                problems.append(
                    f"available_node_types/{name}/node_config/IamInstanceProfile: '{_profile_name(profile)}' cannot "
                    f"be passed by the head's {HEAD_PROFILE} (cluster/iam/head-policy.json allows {WORKER_PROFILE} "
                    f"only)")
        if "cloudwatch" in config["provider"]:
            problems.append(f"provider/cloudwatch: {HEAD_PROFILE} (cluster/iam/head-policy.json) does not cover Ray's "
                            f"CloudWatch calls; leave it out or give the head {RAY_DEFAULT_PROFILE}")
    return problems


def _setup_commands(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, command) for every setup command a node runs: the file's own, Ray's defaults for the keys it
    leaves out (AWS's default head_setup_commands runs `pip install 'boto3>=1.4.8'`), and per node type."""
    from ray.autoscaler._private.util import _get_default_config

    defaults = _get_default_config(raw.get("provider", {}))
    found = []
    for key in SETUP_KEYS:
        own = key in raw
        for i, command in enumerate(raw[key] if own else defaults.get(key) or []):
            found.append((f"{key}/{i}" if own else f"{key} (Ray's default, the file sets none)", str(command)))
    for name, node in (raw.get("available_node_types") or {}).items():
        for key in ("initialization_commands", "worker_setup_commands"):
            for i, command in enumerate(node.get(key) or []):
                found.append((f"available_node_types/{name}/{key}/{i}", str(command)))
    return found


_SHELL_SEPARATORS = re.compile(r"&&|\|\||[;|\n]")
_PIP_VALUE_OPTIONS = {"-c", "--constraint", "-r", "--requirement", "-e", "--editable", "-i", "--index-url",
                      "--extra-index-url", "-f", "--find-links", "-t", "--target", "--prefix", "--root", "--src",
                      "--upgrade-strategy", "--cache-dir", "--log", "--progress-bar", "--python-version",
                      "--platform", "--implementation", "--abi", "--no-binary", "--only-binary", "-C",
                      "--config-settings", "--trusted-host", "--proxy", "--timeout", "--retries"}


def _unpinned(args: list[str]) -> list[str]:
    """What one `pip install ARGS` would install unpinned: [] when it uses a constraints file, else its
    requirements that are not `==` pins, plus any -e/-r/path install (their dependencies float)."""
    from packaging.requirements import InvalidRequirement, Requirement

    loose, no_deps, constrained, i = [], False, False, 0
    while i < len(args):
        arg = args[i]
        option = arg.split("=", 1)[0] if arg.startswith("--") else arg[:2] if arg.startswith("-") else None
        if option in ("-c", "--constraint"):
            constrained = True
        if arg == "--no-deps":
            no_deps = True
        elif option in _PIP_VALUE_OPTIONS:
            value = (arg.split("=", 1)[1] if "=" in arg else None) if arg.startswith("--") else (arg[2:] or None)
            if value is None:
                i += 1
                value = args[i] if i < len(args) else ""
            if option in ("-e", "--editable", "-r", "--requirement"):
                loose.append(f"{option} {value}")
        elif option is None:
            try:
                requirement = Requirement(arg)
                pinned = [s.operator for s in requirement.specifier] in (["=="], ["==="]) and "*" not in str(
                    requirement.specifier)
                if not pinned or not no_deps:
                    loose.append(arg)
            except InvalidRequirement:  # a path or URL: its dependencies float
                loose.append(arg)
        i += 1
    return [] if constrained else loose


def pip_problems(raw: dict[str, Any]) -> list[str]:
    """Setup commands whose `pip install` would install whatever is newest when a node boots (no `-c`
    constraints file, and not every requirement an `==` pin with --no-deps). One line each, naming the field."""
    problems = []
    for field, command in _setup_commands(raw):
        for part in _SHELL_SEPARATORS.split(command.replace("\\\n", " ")):  # joined continuation lines
            try:
                words = shlex.split(part)
            except ValueError:
                continue
            for i in range(len(words) - 1):
                # pip as the command itself (after VAR=value, sudo), or run by `python -m` / `uv`
                runs_pip = words[i - 1] in ("-m", "uv") or all("=" in w or w in ("env", "sudo") for w in words[:i])
                if runs_pip and re.fullmatch(r"pip[0-9.]*", Path(words[i]).name) and words[i + 1] == "install":
                    loose = _unpinned(words[i + 2:])
                    if loose:
                        problems.append(
                            f"{field}: `pip install` of {', '.join(loose)} without a constraints file installs "
                            f"whatever is newest when each node boots; add -c <checkout>/{CONSTRAINTS_FILE} "
                            f"(refreshed by scripts/lock.sh)")
                    break
    return problems


# ---- node types ------------------------------------------------------------------------------------------
def config_node_types(config: dict[str, Any]) -> list[NodeType]:
    """The worker node types of a launcher / autoscaling config (the head trains nothing), with max_workers.

    A type without declared resources (Ray's local provider reads them off the machines) is left out."""
    head = config.get("head_node_type")
    return [NodeType(name, dict(t.get("resources", {})), int(t.get("max_workers", 0)))
            for name, t in config["available_node_types"].items()
            if name != head and t.get("resources") and t.get("max_workers", 0) > 0]


def worker_types(config: dict[str, Any]) -> dict[str, dict[str, int]]:
    """{node type: resources} for the types trials can run on (everything but the head)."""
    head = config["head_node_type"]
    return {n: dict(t.get("resources", {})) for n, t in config["available_node_types"].items() if n != head}


def live_node_types() -> list[NodeType]:
    """Each alive node of the connected cluster as its own type (count 1): `node <ip> <id>`."""
    import ray

    return [NodeType(f"node {n['NodeManagerAddress']} {n['NodeID'][:8]}", dict(n["Resources"]), 1)
            for n in ray.nodes() if n["Alive"]]


def autoscaler_node_types() -> list[NodeType] | None:
    """Node types the connected cluster's autoscaler can start, or None when it has no autoscaler (or one
    whose node types declare no resources, like Ray's local provider).

    Read from the autoscaler state in the GCS (KubeRay and autoscaler v2 report it), else from the
    autoscaling config the head's autoscaler (`monitor.py --autoscaling-config FILE`, what `ray up` starts)
    runs with, read by a zero-CPU task on the head."""
    import ray
    import ray._private.state

    reported = ray._private.state.state.get_cluster_config()
    if reported is not None and reported.node_group_configs:
        return [NodeType(g.name, dict(g.resources), g.max_count if g.max_count >= 0 else 10**6)
                for g in reported.node_group_configs if g.resources and g.max_count != 0]
    head = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"]]
    if not head:
        return None
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    read = ray.remote(num_cpus=0, max_retries=0)(_head_autoscaling_config).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(head[0], soft=False))
    config = ray.get(read.remote(), timeout=120)
    # no types with declared resources (Ray's local provider reads them off the machines): its live nodes count
    return (config_node_types(config) or None) if config else None


def _head_autoscaling_config() -> dict | None:
    """On the head: the config file this cluster's autoscaler (monitor.py of its GCS) runs with, or None."""
    import psutil  # vendored by Ray (ray/thirdparty_files), importable in every Ray worker
    import ray

    gcs = f"--gcs-address={ray.get_runtime_context().gcs_address}"
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if gcs not in cmdline or not any(part.endswith("monitor.py") for part in cmdline):
            continue
        for part in cmdline:
            if part.startswith("--autoscaling-config="):
                return yaml.safe_load(Path(part.split("=", 1)[1]).expanduser().read_text())  # YAML or JSON
    return None


def cluster_node_types() -> tuple[list[NodeType], bool]:
    """(node types, autoscaling) of the connected cluster: the autoscaler's types, else its live nodes."""
    types = autoscaler_node_types()
    return (types, True) if types is not None else (live_node_types(), False)


# ---- capacity --------------------------------------------------------------------------------------------
def worker_bundle(resources: ResourcesConfig) -> dict[str, float]:
    """What one Train worker asks Ray for."""
    bundle = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        bundle["GPU"] = resources.gpus_per_worker
    return bundle


def _per_node(bundle: dict[str, float], node: dict[str, float]) -> int:
    """How many workers of `bundle` one node holds."""
    return int(min(node.get(k, 0) // v for k, v in bundle.items() if v > 0)) if any(bundle.values()) else 0


def _fits(resources: ResourcesConfig, types: list[NodeType]) -> tuple[list[str], int]:
    """(types one worker fits on, workers the whole cluster holds at its maximum size)."""
    bundle = worker_bundle(resources)
    holds = {t.name: _per_node(bundle, t.resources) for t in types}
    fits = [t.name for t in types if holds[t.name] > 0]
    return fits, sum(holds[t.name] * t.max_nodes for t in types)


def trial_fits(resources: ResourcesConfig, config: dict[str, Any]) -> list[str]:
    """Node types of a launcher config on which one Train worker of `resources` fits, given the whole trial
    fits the cluster at its maximum size (bundles may spread across nodes). [] when it cannot be placed."""
    fits, capacity = _fits(resources, config_node_types(config))
    return fits if capacity >= resources.num_workers else []


def capacity_problems(resources: ResourcesConfig, types: list[NodeType], field: str = "resources") -> list[str]:
    """Why no cluster of these node types can ever run a trial of `resources` ([] when one can).

    One line per problem, naming the field (`<field>.gpus_per_worker`) and the largest node type."""
    if not types:
        return [f"{field}: the cluster has no node that can run a trial's workers"]
    bundle = worker_bundle(resources)
    fits, capacity = _fits(resources, types)
    if not fits:
        for key, name in (("GPU", "gpus_per_worker"), ("CPU", "cpus_per_worker")):
            if key not in bundle:
                continue
            largest = max(types, key=lambda t: t.resources.get(key, 0))
            if largest.resources.get(key, 0) < bundle[key]:
                return [f"{field}.{name}: a worker needs {bundle[key]:g} {key}s, but the largest node type, "
                        f"{largest.name}, has {largest.resources.get(key, 0):g}"]
        shapes = ", ".join(f"{t.name} ({_shape(t.resources)})" for t in types)
        return [f"{field}: a worker needs {_shape(bundle)} on one node; no node type has both: {shapes}"]
    if capacity < resources.num_workers:
        sizes = ", ".join(f"{t.name} x {t.max_nodes}" for t in types if t.name in fits)
        return [f"{field}.num_workers: {resources.num_workers} workers of {_shape(bundle)}, but the cluster holds "
                f"at most {capacity} ({sizes})"]
    return []


def waiting_for_nodes(resources: ResourcesConfig, types: list[NodeType]) -> str | None:
    """What a trial waits for on an autoscaling cluster whose live nodes cannot host it yet (None: they can)."""
    live = live_node_types()
    fits, capacity = _fits(resources, live)
    if fits and capacity >= resources.num_workers:
        return None
    can = ", ".join(f"{t.name} (up to {t.max_nodes})" for t in types
                    if _per_node(worker_bundle(resources), t.resources) > 0)
    return (f"waiting for nodes: a trial needs {resources.num_workers} x {_shape(worker_bundle(resources))}; "
            f"the live nodes hold {capacity}; the autoscaler can start {can}")


def _shape(resources: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in resources.items() if k in ("CPU", "GPU"))


def main(argv: list[str] | None = None) -> int:
    """`python -m objmae_ray.sweep.cluster FILE...`: validate cluster YAMLs offline, one line per file."""
    import sys

    status = 0
    for arg in argv if argv is not None else sys.argv[1:]:
        try:
            config = load_cluster_config(arg)
        except ConfigError as err:
            for line in str(err).splitlines():  # one line per problem
                print(f"error: {line}", file=sys.stderr)
            status = 1
            continue
        print(f"{arg}: ok ({', '.join(f'{n} {r}' for n, r in worker_types(config).items())})")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
