"""Offline checks of a Ray cluster-launcher YAML (`cluster/gpu.yaml`) and of whether it can host a trial.

Ray's own schema does the structural check (`prepare_config` fills the provider defaults, then
`validate_config` runs the JSON schema); on top of that we require what objmae-ray relies on:
every worker type declares integer `CPU` and `GPU` resources explicitly, and the head trains
nothing (`CPU: 0`) but hosts the trials' light drivers (`objmae_driver`). No cloud API is called.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from objmae_ray.config import ResourcesConfig
from objmae_ray.errors import ConfigError

# Custom resource the on-demand head offers for the trials' light Tune drivers (see objmae_ray/sweep/tuner.py driver_resources).
DRIVER_RESOURCE = "objmae_driver"


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


def worker_types(config: dict[str, Any]) -> dict[str, dict[str, int]]:
    """{node type: resources} for the types trials can run on (everything but the head)."""
    head = config["head_node_type"]
    return {n: dict(t.get("resources", {})) for n, t in config["available_node_types"].items() if n != head}


def trial_fits(resources: ResourcesConfig, config: dict[str, Any]) -> list[str]:
    """Node types on which one Train worker of `resources` fits, given the whole trial fits the cluster.

    A trial needs `num_workers` bundles of {CPU: cpus_per_worker, GPU: gpus_per_worker if use_gpu};
    Ray may spread bundles across nodes, so each bundle must fit one node and all bundles must fit
    the cluster at its maximum size. Returns [] when the trial cannot be placed.
    """
    gpus = resources.gpus_per_worker if resources.use_gpu else 0.0
    fits = []
    capacity = 0
    for name, res in worker_types(config).items():
        if res.get("CPU", 0) >= resources.cpus_per_worker and res.get("GPU", 0) >= gpus:
            fits.append(name)
            per_node = int(res.get("CPU", 0) // resources.cpus_per_worker)
            if gpus:
                per_node = min(per_node, int(res.get("GPU", 0) // gpus))
            capacity += per_node * config["available_node_types"][name].get("max_workers", 0)
    return fits if capacity >= resources.num_workers else []


def main(argv: list[str] | None = None) -> int:
    """`python -m objmae_ray.sweep.cluster FILE...`: validate cluster YAMLs offline, one line per file."""
    import sys

    status = 0
    for arg in argv if argv is not None else sys.argv[1:]:
        try:
            config = load_cluster_config(arg)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
            continue
        print(f"{arg}: ok ({', '.join(f'{n} {r}' for n, r in worker_types(config).items())})")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
