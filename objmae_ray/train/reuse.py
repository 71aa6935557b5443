"""Pre-trainings done once and reused: a finished pre-training is stored in the sweep storage under a key of
everything that determines it; a later trial (any study on that storage) with the same key loads it and
runs only its transfer phases.

Layout: `<storage>/pretrained/<key>/`
  objmae.safetensors   the ObjMAE state (encoder + decoder: a complete pre-trained model) after the last epoch
  pretrain.json        written last, so its presence means the entry is complete: the key, its fields,
                       where it came from (`source`: "RUN/trial_<id>"), the weights' sha256 and size, and
                       the final pre-train report (recon loss, alpha statistics, pre-train time, ...)

Key (`pretrain_key(cfg)`, sha256 of `pretrain_fields(cfg)` as canonical JSON): the model, the masking (no-effect
knobs canonical: padding where no slot is padded, the cam_* fields unless selection is cam), the pre-train
phase (optimiser, schedule, batch, data section with the store's manifest hash in place of its path where
it can be read), the seed, what changes the numbers on the workers (worker count, GPU or CPU, torch
version) and the code version: a sha256 of the sources that compute a pre-training (CODE_FILES). A source
hash rather than a declared version constant: a forgotten bump would silently mix results, a needless
miss only costs one pre-training.

Flow (objmae_ray/train/trial.py `tune_trainable`, before any worker starts): `pretraining_plan` looks the key
up; a complete entry -> the workers reuse it ("reuse"); none -> the trial claims the key and pre-trains
("publish": rank 0 stores the result when the phase ends); claimed by a running trial -> it waits (holding
no GPU) until that entry appears, or the claim goes away with its owner, then looks again.
Claim: a named Ray actor `pretrain-<key>` in the namespace CLAIM_NAMESPACE, created by the claiming trial's
driver and owned by it (not detached): Ray's actor registry makes the name unique across every job on the
cluster, and the actor dies with its owner, so a crashed trial never leaves a stale claim. Trials on two
different clusters sharing one storage are not locked against each other: both may pre-train; the entry
stays consistent (weights first, pretrain.json last).

Bad entries: pretrain.json unreadable or for another key, weights missing, truncated, not matching their
sha256 or not loading: the trial pre-trains afresh, says why (console line and the metric
`pretrain_reuse_note`), and stores its own result over the bad entry. Results are never mixed.
"""
from __future__ import annotations

import functools
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from objmae_ray.config import TrialConfig
from objmae_ray.method.masking import CANONICAL_PADDING, padding_applies
from objmae_ray.storage import file_size, read_bytes, write_bytes

PRETRAINED_DIR = "pretrained"
WEIGHTS_FILE = "objmae.safetensors"
RECORD_FILE = "pretrain.json"
CLAIM_NAMESPACE = "objmae-pretrained"
PACKAGE = Path(__file__).resolve().parents[1]  # objmae_ray/
# What computes a pre-training: the method, the data pipeline and augmentation, the pre-train step, optimiser
# and the loop's seeding (paths relative to objmae_ray/; a directory means every .py in it)
CODE_FILES = ("method", "data", "train/pretrain.py", "train/optim.py", "train/loop.py", "train/checkpoint.py",
              "train/precision.py")
REUSED_FROM, REUSE_NOTE = "pretrain_reused_from", "pretrain_reuse_note"  # metrics every report carries


class ReuseError(RuntimeError):
    """A stored pre-training that cannot be used; the message says why."""


# ---- the key ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """sha256 (16 hex) of the sources in CODE_FILES, file names included."""
    digest = hashlib.sha256()
    for entry in CODE_FILES:
        path = PACKAGE / entry
        for file in sorted(path.glob("*.py")) if path.is_dir() else [path]:
            digest.update(str(file.relative_to(PACKAGE)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def store_fingerprint(store: str, split: str) -> str:
    """A packed store's identity: the sha256 of its split's manifest (written last, naming every shard's
    size and the source fingerprint), or the path where this process cannot read it."""
    if store == "auto":
        return "auto"
    manifest = Path(store).expanduser() / split / "manifest.json"
    try:
        return "manifest-sha256:" + hashlib.sha256(manifest.read_bytes()).hexdigest()
    except OSError:
        return f"path:{store}"


def pretrain_fields(cfg: TrialConfig) -> dict[str, Any]:
    """Everything that determines a trial's pre-training (the module docstring says what and why)."""
    num_patches = (cfg.model.img_size // cfg.model.patch_size) ** 2
    masking = cfg.masking.model_dump()
    if not padding_applies(cfg.masking.selection, cfg.masking.alpha, num_patches):
        masking["padding"] = CANONICAL_PADDING
    if cfg.masking.selection != "cam":
        masking.pop("cam_threshold"), masking.pop("cam_select")
    pretrain = cfg.pretrain.model_dump()
    data = pretrain["data"]
    if data.get("store"):
        data["store"] = store_fingerprint(data["store"], data["train_split"])
    return {"model": cfg.model.model_dump(), "masking": masking, "pretrain": pretrain, "seed": cfg.seed,
            "num_workers": cfg.resources.num_workers, "device": "gpu" if cfg.resources.use_gpu else "cpu",
            "precision": cfg.precision, "torch": torch.__version__, "code": code_version()}


def pretrain_key(cfg: TrialConfig) -> str:
    """The key of a trial's pre-training: 24 hex of the sha256 of pretrain_fields as canonical JSON."""
    text = json.dumps(pretrain_fields(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def store_root(storage: str) -> str:
    """`<storage>/pretrained` of a sweep storage (local path or URI)."""
    return f"{str(storage).rstrip('/')}/{PRETRAINED_DIR}"


def entry_uri(store: str, key: str) -> str:
    return f"{str(store).rstrip('/')}/{key}"


# ---- entries ----------------------------------------------------------------------------------------
def find(store: str, key: str) -> tuple[dict | None, str | None]:
    """(record, None) for a complete entry; (None, None) when there is none yet; (None, reason) for a broken one."""
    entry = entry_uri(store, key)
    text = read_bytes(f"{entry}/{RECORD_FILE}")
    if text is None:
        return None, None
    try:
        record = json.loads(text)
        if record["key"] != key:
            return None, f"{entry}/{RECORD_FILE}: written for key {record['key']}"
        expected = int(record["weights_bytes"])
    except (ValueError, KeyError, TypeError) as err:
        return None, f"{entry}/{RECORD_FILE}: unreadable ({type(err).__name__}: {err})"
    size = file_size(f"{entry}/{WEIGHTS_FILE}")
    if size is None:
        return None, f"{entry}/{WEIGHTS_FILE}: missing"
    if size != expected:
        return None, f"{entry}/{WEIGHTS_FILE}: {size} bytes, pretrain.json says {expected}"
    return record, None


def load_weights(store: str, key: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(record, ObjMAE state dict) of a complete entry, its sha256 checked; ReuseError saying why not."""
    record, problem = find(store, key)
    if record is None:
        raise ReuseError(problem or f"{entry_uri(store, key)}: no stored pre-training")
    uri = f"{entry_uri(store, key)}/{WEIGHTS_FILE}"
    data = read_bytes(uri)
    if data is None:
        raise ReuseError(f"{uri}: missing")
    if hashlib.sha256(data).hexdigest() != record.get("weights_sha256"):
        raise ReuseError(f"{uri}: sha256 does not match pretrain.json (corrupt or rewritten)")
    try:
        return record, load_tensors(data)
    except Exception as err:  # noqa: BLE001 -- safetensors raises its own error types
        raise ReuseError(f"{uri}: not a safetensors file ({err})") from None


def publish(store: str, key: str, *, state: dict[str, torch.Tensor], fields: dict, source: str,
            final_report: dict) -> str:
    """Store a finished pre-training (weights first, pretrain.json last); returns the entry's URI."""
    entry = entry_uri(store, key)
    data = save_tensors({k: v.detach().cpu().contiguous() for k, v in state.items()})
    write_bytes(f"{entry}/{WEIGHTS_FILE}", data)
    record = {"key": key, "fields": fields, "source": source, "weights_sha256": hashlib.sha256(data).hexdigest(),
              "weights_bytes": len(data), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "final_report": final_report}
    write_bytes(f"{entry}/{RECORD_FILE}", json.dumps(record, indent=1, sort_keys=True, default=str).encode())
    return entry


# ---- the claim (one pre-training per key at a time, across jobs on one Ray cluster) -------------------
class _Claim:
    """Ray actor whose name is the claim; owned by the claiming trial's driver, so it dies with it."""

    def __init__(self, owner: str, token: str):
        self.owner, self.token = owner, token

    def who(self) -> tuple[str, str]:
        return self.owner, self.token


def claim(key: str, owner: str):
    """Claim the pre-training of `key` for `owner`: the claim's actor handle, or (None, the holder's name)."""
    import ray

    name, token = f"pretrain-{key}", uuid.uuid4().hex
    try:
        handle = ray.remote(num_cpus=0)(_Claim).options(name=name, namespace=CLAIM_NAMESPACE).remote(owner, token)
    except ValueError:  # ActorAlreadyExistsError: the name is taken
        handle = None
    try:  # two drivers can pass Ray's name check at once: the registered actor decides
        holder, holder_token = ray.get(ray.get_actor(name, namespace=CLAIM_NAMESPACE).who.remote(), timeout=60)
    except (ValueError, ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        holder, holder_token = "", ""  # gone again (its owner ended): try again
    if handle is not None and holder_token == token:
        return handle, owner
    if handle is not None:
        ray.kill(handle)
    return None, holder


def release(handle) -> None:
    if handle is not None:
        import ray

        ray.kill(handle)


@dataclass
class ReusePlan:
    """What a trial's workers do about pre-training: "reuse" the entry, or pre-train and "publish" it."""

    mode: str
    store: str
    key: str
    fields: dict
    run: str  # "RUN/trial_<id>" of this trial: where a published entry says it came from
    source: str = ""  # reuse: "RUN/trial_<id>" the stored pre-training came from
    note: str = ""  # why a stored entry was not used

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def pretraining_plan(cfg: TrialConfig, store: str, *, run: str, echo: Callable[[str], None] = print,
                     poll_s: float = 10.0, note_every_s: float = 300.0) -> tuple[ReusePlan, Any]:
    """(plan for the workers, claim handle to release after the run or None). Blocks while another trial of the
    cluster pre-trains the same key (module docstring)."""
    fields = pretrain_fields(cfg)
    key = pretrain_key(cfg)
    waited, last_note = 0.0, -note_every_s
    while True:
        record, problem = find(store, key)
        if record is not None:
            return ReusePlan("reuse", store, key, fields, run, source=str(record.get("source", "?"))), None
        handle, holder = claim(key, run)
        if handle is not None:
            note = f"stored pre-training not used: {problem}" if problem else ""
            if note:
                echo(f"trial {run}: {note}; pre-training afresh")
            return ReusePlan("publish", store, key, fields, run, note=note), handle
        if waited - last_note >= note_every_s:
            echo(f"trial {run}: waiting for pre-training {key} by {holder or 'another trial'}")
            last_note = waited
        time.sleep(poll_s)
        waited += poll_s
