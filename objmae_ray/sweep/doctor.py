"""Node preflight: `objmae-sweep doctor` on one node (cluster/gpu.yaml runs it in `worker_setup_commands`,
so a node that fails never joins), and the same checks on every node that can run the workers at sweep
start (`check_nodes`, small Ray tasks like the trial's data check), before any trial.

Checks, one line each (`ok    <check>: ...`, or `FAIL  <node>: <check>: <what>; fix: <how>`):
  cuda       CUDA initialises; torch's CUDA build and the driver's version (both in one line). A CPU node
             reports "no CUDA" and the other checks still run
  gpus       visible GPUs = the node's declared GPU count (`--expect-gpus N`, else the `GPU` of
             RAY_OVERRIDE_RESOURCES, which `ray up` sets for a node type's `worker_start_ray_commands`; at
             sweep start the node's Ray `GPU` resource), then one line per GPU with its memory
  precision  what the trial's `precision` resolves to here ("auto": bf16 with native bf16, else fp16 with
             loss scaling; fp32 on CPU; train/precision.py)
  shm        /dev/shm free space against what the loader workers need (2 prefetched float32 batches per
             loader process, twice over; `--min-shm-gb` overrides)
  data       the trial's datasets, packed stores and CAM cache (train/trial.py data_problems)
  storage    the storage path is reachable and writable from here, and is the driver's storage: the sweep's
             driver writes STORAGE_MARKER (a random token) at its start and every node must read it back.
             A local path that a worker node does not share (the head's disk, a job's working directory) is
             refused in one line naming `--storage`, before any trial: use s3:// or an NFS mount.
Environment: OBJMAE_NODE_ROOT, when set on a node, is where that node sees the cluster's absolute local
storage paths (`<root>/<path>`): the tests give one simulated node its own disk this way. Never set it
on a real cluster.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from objmae_ray.config import TrialConfig, trial_from_dict
from objmae_ray.errors import ConfigError
from objmae_ray.sweep.rundir import filesystem, is_remote, join, read_text, storage_uri, write_text

STORAGE_MARKER = ".objmae-storage-marker"
NODE_ROOT_ENV = "OBJMAE_NODE_ROOT"
# The oldest Linux driver of each CUDA major release (NVIDIA's CUDA toolkit release notes, table 3).
MIN_DRIVER = {11: "450.80", 12: "525.60", 13: "580.65"}
SHM_PREFETCH = 2  # torch DataLoader prefetch_factor: batches each loader process keeps ready


@dataclass
class Check:
    """One check's result: `fix` says what to do when it failed."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self, node: str) -> str:
        if self.ok:
            return f"ok    {self.name}: {self.detail}"
        return f"FAIL  {node}: {self.name}: {self.detail}; fix: {self.fix}"


def node_name() -> str:
    """`host (ip)`, in a Ray task `host (ip, node id <12 hex>)`: the node a line is about."""
    host = socket.gethostname()
    import ray

    if ray.is_initialized():
        return f"{host} ({ray.util.get_node_ip_address()}, node id {ray.get_runtime_context().get_node_id()[:12]})"
    try:
        return f"{host} ({socket.gethostbyname(host)})"
    except OSError:
        return host


# ---- GPUs ----------------------------------------------------------------------------------------

def nvidia_driver() -> tuple[str | None, str | None]:
    """(driver version, highest CUDA version the driver supports) from nvidia-smi; (None, None) without it."""
    if not shutil.which("nvidia-smi"):
        return None, None
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    driver = re.search(r"Driver Version:\s*([\d.]+)", out)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", out)
    return (driver.group(1) if driver else None), (cuda.group(1) if cuda else None)


def declared_gpus() -> int | None:
    """The GPUs the autoscaler declared for this node: RAY_OVERRIDE_RESOURCES (JSON) during `ray start`."""
    try:
        gpus = json.loads(os.environ.get("RAY_OVERRIDE_RESOURCES") or "{}").get("GPU")
    except (ValueError, AttributeError):
        return None
    return None if gpus is None else int(gpus)


def _major(version: str | None) -> int | None:
    return int(version.split(".")[0]) if version and version.split(".")[0].isdigit() else None


def cuda_checks(expect_gpus: int | None) -> list[Check]:
    """CUDA initialises, the driver runs the torch build, the GPU count and each GPU's memory."""
    import torch

    build, (driver, driver_cuda) = torch.version.cuda, nvidia_driver()
    versions = (f"torch {torch.__version__} built for CUDA {build or 'none (CPU build)'}, "
                f"driver {driver or 'none'}" + (f" (supports CUDA {driver_cuda})" if driver_cuda else ""))
    need = MIN_DRIVER.get(_major(build), "?")
    if not torch.cuda.is_available():
        if not expect_gpus:
            return [Check("cuda", True, f"no CUDA ({versions}): CPU only")]
        if driver and build and _major(driver_cuda) is not None and _major(driver_cuda) < _major(build):
            return [Check("cuda", False, f"the driver is too old for torch: {versions}",
                          f"use an image whose driver is >= {need} (cluster/gpu.yaml ImageId), or a torch build "
                          f"for CUDA {driver_cuda} (TORCH_SPEC)")]
        return [Check("gpus", False, f"the node declares {expect_gpus} GPU(s) but torch sees 0 ({versions})",
                      "install the NVIDIA driver (a GPU image), a CUDA build of torch, or declare the GPUs "
                      "the node has")]
    try:
        torch.zeros(1, device="cuda")
    except RuntimeError as err:
        return [Check("cuda", False, f"CUDA does not initialise ({str(err).strip().splitlines()[0]}): {versions}",
                      f"use an image whose driver is >= {need} (cluster/gpu.yaml ImageId)")]
    count = torch.cuda.device_count()
    checks = [Check("cuda", True, versions)]
    if expect_gpus is not None and count != expect_gpus:
        checks.append(Check("gpus", False, f"the node declares {expect_gpus} GPU(s) but torch sees {count}",
                            "declare the GPUs the instance has (node type resources) or check CUDA_VISIBLE_DEVICES"))
    else:
        checks.append(Check("gpus", True, f"{count} visible" + (f" (declared {expect_gpus})" if expect_gpus else "")))
    for index in range(count):
        props = torch.cuda.get_device_properties(index)
        checks.append(Check(f"gpu{index}", True, f"{props.name}, {props.total_memory / 2**30:.1f} GiB, "
                                                 f"compute capability {props.major}.{props.minor}"))
    return checks


def precision_check(cfg: TrialConfig) -> Check:
    """What the trial's precision becomes on this node's first GPU (on CPU without one)."""
    import torch

    from objmae_ray.train.precision import resolve_precision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        name = resolve_precision(cfg.precision, device)
    except ConfigError as err:
        return Check("precision", False, str(err), "set precision: auto (fp16 with loss scaling on this card)")
    why = {"bf16": "native bf16", "fp16": "no native bf16: fp16 with loss scaling", "fp32": "CPU"}[name] \
        if cfg.precision == "auto" else "as configured"
    return Check("precision", True, f"{cfg.precision} -> {name} ({why})")


# ---- shared memory, data, storage ---------------------------------------------------------------

def shm_needed(cfg: TrialConfig) -> int:
    """Bytes of /dev/shm the loader processes of one trial worker need: each keeps SHM_PREFETCH float32
    batches of its phase's per-worker batch, twice over for safety; the largest phase counts."""
    from objmae_ray.train.rules import trial_phases

    img = cfg.model.img_size
    need = 0
    for _, _, phase in trial_phases(cfg):
        if phase.data.store:  # packed stores gather in threads: no shared memory
            continue
        batch = max(1, phase.batch_size // cfg.resources.num_workers)
        need = max(need, 2 * SHM_PREFETCH * phase.data.loader_workers * batch * 3 * img * img * 4)
    return need


def shm_check(cfg: TrialConfig, min_bytes: int | None = None, path: str = "/dev/shm") -> Check:
    need = shm_needed(cfg) if min_bytes is None else min_bytes
    if not Path(path).is_dir():
        return Check("shm", need == 0, f"no {path}", "mount a tmpfs on /dev/shm")
    free = shutil.disk_usage(path).free
    detail = f"{path} has {free / 2**30:.2f} GiB free, the loader workers need {need / 2**30:.2f} GiB"
    return Check("shm", free >= need, detail,
                 "give the container more shared memory (docker run_options: --shm-size=<size>) "
                 "or lower data.loader_workers")


def data_checks(cfg: TrialConfig) -> list[Check]:
    from objmae_ray.train.trial import data_problems

    problems = data_problems(cfg)
    if not problems:
        return [Check("data", True, "every dataset path of the trial is present")]
    fix = "sync the data to this node (scripts/sync_data.sh) or fix the path in the trial config"
    return [Check("data", False, problem, fix) for problem in problems]


def node_path(uri: str) -> str:
    """Where this node sees a storage URI (OBJMAE_NODE_ROOT: see the module docstring)."""
    root = os.environ.get(NODE_ROOT_ENV)
    if not root or is_remote(uri):
        return uri
    return str(Path(root) / uri.lstrip("/"))


def write_marker(storage: str) -> str:
    """The driver's side: write STORAGE_MARKER under the storage with a new token; return the token."""
    token = secrets.token_hex(8)
    write_text(join(storage_uri(storage), STORAGE_MARKER),
               f"{token} written by the sweep driver on {node_name()} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    return token


def storage_checks(storage: str, token: str | None = None) -> list[Check]:
    """The storage is reachable and writable from here; with `token`, the driver's marker reads back."""
    uri = storage_uri(storage)
    here = node_path(uri)
    fix = "give every node the bucket's credentials (instance profile or AWS_* variables)" if is_remote(uri) else \
        "use --storage s3://bucket/prefix, or a path on an NFS mount that every node shares"
    probe = join(here, f".objmae-doctor-{socket.gethostname()}-{os.getpid()}")
    try:
        write_text(probe, "ok")
        fs, path = filesystem(probe)
        fs.delete_file(path)
    except (OSError, ConfigError) as err:
        return [Check("storage", False, f"cannot write to {uri} ({err})", fix)]
    marker = read_text(join(here, STORAGE_MARKER))
    if token is not None and (marker is None or not marker.startswith(token)):
        return [Check("storage", False, f"cannot read the marker the sweep driver wrote at "
                                        f"{join(uri, STORAGE_MARKER)}: not the driver's storage", fix)]
    written = marker.split(" ", 1)[-1].strip() if marker else ""
    same = f"; the driver's storage ({written})" if marker and token else \
        f"; a sweep driver's marker is here ({written})" if marker else ""
    return [Check("storage", True, f"{uri} reachable and writable{same}")]


# ---- one node, all checks ----------------------------------------------------------------------

def node_checks(cfg: TrialConfig, *, storage: str | None = None, token: str | None = None,
                expect_gpus: int | None = None, min_shm_bytes: int | None = None) -> list[Check]:
    """Every check on this node (see the module docstring), in order."""
    checks = cuda_checks(expect_gpus)
    checks += [precision_check(cfg), shm_check(cfg, min_shm_bytes)]
    checks += data_checks(cfg)
    if storage:
        checks += storage_checks(storage, token)
    return checks


def _node_report(cfg_dict: dict, storage: str | None, token: str | None,
                 expect_gpus: int | None) -> tuple[str, list[Check]]:
    """Ray task body: (this node's name, its checks)."""
    return node_name(), node_checks(trial_from_dict(cfg_dict), storage=storage, token=token,
                                    expect_gpus=expect_gpus)


def _hosts_workers(resources: dict, cfg: TrialConfig) -> bool:
    res = cfg.resources
    return resources.get("CPU", 0) >= res.cpus_per_worker and (
        not res.use_gpu or resources.get("GPU", 0) >= res.gpus_per_worker)


def check_nodes(cfg: TrialConfig, storage: str, echo: Callable[[str], None] = print,
                timeout_s: float = 600.0) -> None:
    """At sweep start, on the connected cluster: the driver writes the storage marker (local storage), then a
    small task on every alive node that can host a trial worker runs `node_checks` there. Every failing line
    is echoed. A failure is a ConfigError before any trial: a storage that is not shared names `--storage`
    first, else the first failing line (+ how many more). Missing data only warns: each trial's own data
    check (train/trial.py check_data) fails that trial alone, and a search may change the paths."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = None if is_remote(storage) else write_marker(storage)
    nodes = [n for n in ray.nodes() if n.get("Alive") and _hosts_workers(n.get("Resources", {}), cfg)]
    if not nodes:
        echo("node preflight: no node that can run the workers is up yet (each node runs `objmae-sweep doctor` "
             "in its setup)")
        return
    task = ray.remote(max_calls=1)(_node_report)  # a fresh process: no CUDA context stays behind
    refs = [task.options(num_cpus=0, max_retries=1,
                         scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                cfg.model_dump(), storage, token, int(n["Resources"].get("GPU", 0)))
            for n in nodes]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    reports = []
    for ref in ready:
        try:
            reports.append(ray.get(ref))
        except ray.exceptions.RayError as err:  # the node went away meanwhile: its trials will not land there
            echo(f"node preflight: a node did not finish its checks ({str(err).strip().splitlines()[0]})")
    failures = [(node, check) for node, checks in reports for check in checks if not check.ok]
    for node, check in failures:
        echo(check.line(node))
    for node, check in failures:
        if check.name == "storage":
            raise ConfigError(f"--storage {storage}: node {node} {check.detail}; {check.fix}")
    failures = [(node, check) for node, check in failures if check.name != "data"]
    if failures:
        more = f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""
        raise ConfigError(f"node preflight: {failures[0][1].line(failures[0][0]).removeprefix('FAIL  ')}{more}")
    if len(ready) < len(refs):
        echo(f"node preflight: {len(refs) - len(ready)} node(s) did not answer within {timeout_s:g} s")
    if not reports:
        return
    summary = sorted({next(c.detail for c in checks if c.name == "precision") for _, checks in reports})
    echo(f"node preflight: {len(reports)} node(s) passed (precision {', '.join(summary)})")
