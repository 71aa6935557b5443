"""Trial checkpoint directory: save and load, nothing else.

Layout of one checkpoint directory:
  objmae.safetensors      ObjMAE state dict (encoder + decoder), always
  classifier.safetensors  timm classifier state dict, once a transfer phase has started
  train_state.pt          phase / epoch / update counters, optimizer + scheduler state, RNG states,
                          cumulative pre-train time, the fp16 loss scaler (train/precision.py); loads with
                          `torch.load(weights_only=True)`
  trial_config.json       the TrialConfig
  metrics.json            the metrics of the report that carried this checkpoint
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from objmae_ray.config import TrialConfig
from objmae_ray.errors import ConfigError
from objmae_ray.method.model import ObjMAE, objmae_from_config

OBJMAE_FILE = "objmae.safetensors"
CLASSIFIER_FILE = "classifier.safetensors"
TRAIN_STATE_FILE = "train_state.pt"
CONFIG_FILE = "trial_config.json"
METRICS_FILE = "metrics.json"


def _tensors(module: nn.Module) -> dict[str, Tensor]:
    """state dict as contiguous CPU tensors (DDP's `module.` prefix removed), ready for safetensors."""
    module = getattr(module, "module", module)
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), Python and NumPy RNG states in weights_only-loadable types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | Path, *, objmae: nn.Module, train_state: dict[str, Any],
                    config: TrialConfig, metrics: dict[str, Any], classifier: nn.Module | None = None) -> Path:
    """Write the checkpoint files into `directory` (created if needed); returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(_tensors(objmae), str(directory / OBJMAE_FILE))
    if classifier is not None:
        save_file(_tensors(classifier), str(directory / CLASSIFIER_FILE))
    torch.save(train_state, directory / TRAIN_STATE_FILE)
    (directory / CONFIG_FILE).write_text(config.model_dump_json(indent=2))
    (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return directory


def read_objmae_checkpoint(directory: str | Path) -> tuple[TrialConfig, dict[str, Tensor]]:
    """(TrialConfig, ObjMAE state dict) of a checkpoint directory, from JSON and safetensors only
    (export and figures read untrusted storage: nothing is unpickled). ConfigError names a bad file."""
    directory = Path(directory)
    config_file, objmae_file = directory / CONFIG_FILE, directory / OBJMAE_FILE
    for file in (config_file, objmae_file):
        if not file.is_file():
            raise ConfigError(f"{file}: not found (checkpoint incomplete or storage not local)")
    try:
        cfg = TrialConfig.model_validate(json.loads(config_file.read_text()))
    except Exception as err:  # JSON or pydantic error in a damaged file
        raise ConfigError(f"{config_file}: not a valid trial config ({str(err).splitlines()[0]})") from None
    return cfg, load_file(str(objmae_file))


def objmae_from_checkpoint(directory: str | Path) -> tuple[ObjMAE, TrialConfig]:
    """The ObjMAE (eval mode, weights loaded) and TrialConfig of a checkpoint directory, from JSON and
    safetensors only; ConfigError when the weights do not fit the config's model."""
    cfg, state = read_objmae_checkpoint(directory)
    model = objmae_from_config(cfg.model)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0]
        raise ConfigError(f"{Path(directory) / OBJMAE_FILE}: does not fit the trial's model config ({reason})") from None
    return model.eval(), cfg


def load_checkpoint(directory: str | Path) -> dict[str, Any]:
    """Read a checkpoint directory: {"objmae", "classifier" (or None): state dicts, "train_state",
    "config": TrialConfig, "metrics": dict}. A missing or unreadable file is a ConfigError naming it."""
    directory = Path(directory)
    for name in (OBJMAE_FILE, TRAIN_STATE_FILE, CONFIG_FILE, METRICS_FILE):
        if not (directory / name).is_file():
            raise ConfigError(f"{directory / name}: missing from checkpoint")
    try:
        classifier_path = directory / CLASSIFIER_FILE
        return {
            "objmae": load_file(str(directory / OBJMAE_FILE)),
            "classifier": load_file(str(classifier_path)) if classifier_path.is_file() else None,
            "train_state": torch.load(directory / TRAIN_STATE_FILE, weights_only=True, map_location="cpu"),
            "config": TrialConfig.model_validate_json((directory / CONFIG_FILE).read_text()),
            "metrics": json.loads((directory / METRICS_FILE).read_text()),
        }
    except (OSError, ValueError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{directory}: unreadable checkpoint ({reason})") from None
