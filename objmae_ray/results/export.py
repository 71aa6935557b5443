"""Export the best trial of a finished sweep: weights that load into timm, the config to rerun it,
its metrics and a short model card.

`objmae-export RUN_DIR --out DIR [--metric top1] [--mode max] [--phase 0]` writes into DIR:
  encoder.safetensors     the pre-trained ObjMAE encoder under timm VisionTransformer names: loads into
                          `timm.create_model("vit_small_patch16_224", ...)` with only the head missing
  classifier.safetensors  the trial's fine-tuned (or linear-probed) timm classifier, when it has one
  config.yaml             the trial's TrialConfig (`python -m objmae_ray.train.trial config.yaml` reruns it)
  metrics.json            the trial's final metrics, its searched values, the source checkpoint
  README.md               model card
The best trial is the one with the best *final* value of the metric (default: the sweep's first
objective; of the transfer phase it names, `--phase` or the objective's `phase`), read from the trial
directories' result.json; its weights come from the checkpoint
directory of its last report carrying one (`checkpoint_path`, reported by Tune's
TuneReportCallback). Only JSON and safetensors are read: nothing is unpickled. RUN_DIR may be remote
(s3://bucket/prefix/run): its files are read in place and the one checkpoint is copied to a temporary
directory (objmae_ray/sweep/rundir.py; credentials from the AWS environment variables).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import yaml
from safetensors.torch import save_file

from objmae_ray.config import METRICS, TrialConfig
from objmae_ray.errors import ConfigError
from objmae_ray.method.model import ObjMAE, get_preset, timm_vit_name
from objmae_ray.results.records import TrialRecord, records_from_dir
from objmae_ray.results.stats import finite
from objmae_ray.sweep.rundir import SPEC_FILE, download, exists, is_remote, join, load_run_spec, require_run, run_name
from objmae_ray.train.checkpoint import objmae_from_checkpoint

ENCODER_FILE, CLASSIFIER_FILE, CONFIG_FILE, METRICS_FILE, CARD_FILE = (
    "encoder.safetensors", "classifier.safetensors", "config.yaml", "metrics.json", "README.md")


def best_record(records: list[TrialRecord], metric: str, mode: str, phase: int | None = None) -> TrialRecord | None:
    """The record with the best final `metric` (of transfer phase `phase`, else the last report: see
    TrialRecord.final) among those that reported it with a checkpoint (None: none did)."""
    if mode not in ("max", "min"):
        raise ConfigError(f"--mode: must be max or min, got {mode!r}")
    scored = [r for r in records if finite(r.final(metric, phase)) is not None and r.checkpoint_dir()]
    sign = 1 if mode == "max" else -1
    return max(scored, key=lambda r: sign * finite(r.final(metric, phase))) if scored else None


def best_trial(run_dir: str | Path, metric: str, mode: str, phase: int | None = None) -> TrialRecord:
    """The trial of the run with the best final `metric` (of transfer phase `phase`) with a checkpoint."""
    best = best_record(records_from_dir(run_dir), metric, mode, phase)
    if best is None:
        where = "" if phase is None else f" in transfer phase {phase}"
        raise ConfigError(f"{run_dir}: no trial reported {metric!r}{where} with a checkpoint")
    return best


def local_checkpoint(source: str, scratch: str | Path) -> Path:
    """A checkpoint directory on local disk: source itself, or a remote one copied under scratch."""
    return download(source, Path(scratch) / "checkpoint") if is_remote(source) else Path(source)


def encoder_state(model: ObjMAE) -> dict:
    """The ObjMAE's encoder under timm ViT names, contiguous for safetensors."""
    return {k: v.contiguous() for k, v in model.encoder_state_dict().items()}


def _model_card(record: TrialRecord, cfg: TrialConfig, metrics: dict, metric: str, timm_name: str,
                has_classifier: bool, study: str) -> str:
    dims = {k: get_preset(cfg.model.preset)[k] for k in ("embed_dim", "depth", "num_heads")}
    kwargs = f"img_size={cfg.model.img_size}, patch_size={cfg.model.patch_size}" + "".join(
        f", {k}={v}" for k, v in dims.items())
    values = "\n".join(f"| {k} | {v} |" for k, v in record.params.items()) or "| (base trial) | |"
    shown = "\n".join(f"| {k} | {metrics[k]:.4g} |" for k in METRICS if isinstance(metrics.get(k), (int, float)))
    transfers = ", ".join(f"{t.mode} on {t.data.kind} ({t.epochs} epoch(s))" for t in cfg.transfer) or "none"
    classifier = (f"`classifier.safetensors` holds the trial's final {cfg.transfer[-1].mode} classifier "
                  f"(timm `{timm_name}`, global_pool as trained).") if has_classifier else ""
    return f"""# ObjMAE encoder: study `{study}`, trial `{record.trial_id}`

Object-wise masked autoencoder (Wu & Mo, "Object-wise Masked Autoencoders for Fast Pre-training")
ViT encoder, preset `{cfg.model.preset}`, {cfg.model.img_size} px, patch {cfg.model.patch_size}. Best
trial of the sweep by final `{metric}`.

Pre-training: {cfg.pretrain.epochs} epoch(s) on {cfg.pretrain.data.kind}, alpha {cfg.masking.alpha:.4g},
selection `{cfg.masking.selection}`, padding `{cfg.masking.padding}`, seed {cfg.seed}.
Transfer: {transfers}.

| searched | value |
|---|---|
{values}

| metric (final report) | value |
|---|---|
{shown}

## Use

```python
import timm
from safetensors.torch import load_file

model = timm.create_model("{timm_name}", pretrained=False, num_classes=NUM_CLASSES, {kwargs})
missing, unexpected = model.load_state_dict(load_file("encoder.safetensors"), strict=False)
assert set(missing) <= {{"head.weight", "head.bias"}} and not unexpected
```

{classifier}
`config.yaml` reruns the trial: `python -m objmae_ray.train.trial config.yaml`. Speed-up is a FLOP ratio
against a supervised ViT step of the same preset, not a measured time.
"""


def export_best(run_dir: str | Path, out: str | Path, *, metric: str | None = None,
                mode: str | None = None, phase: int | None = None) -> Path:
    """Export the best trial of the sweep in run_dir (a local path or a URI) into out (see module docstring);
    return out. Without `metric` / `mode`, the first objective's metric, mode and phase rank the trials."""
    run_dir, out = require_run(str(run_dir)), Path(out)
    study = run_name(run_dir)
    if metric is None or mode is None:
        if not exists(join(run_dir, SPEC_FILE)):
            raise ConfigError(f"{join(run_dir, SPEC_FILE)}: not found; pass --metric and --mode")
        spec = load_run_spec(run_dir)
        study = spec.study
        objective = spec.objectives[0]
        if metric is None:
            metric, phase = objective.metric, objective.phase if phase is None else phase
        mode = mode or objective.mode
    record = best_trial(run_dir, metric, mode, phase)
    source = record.checkpoint_dir()
    with tempfile.TemporaryDirectory(prefix="objmae-export-") as scratch:
        checkpoint = local_checkpoint(source, scratch)
        model, cfg = objmae_from_checkpoint(checkpoint)
        out.mkdir(parents=True, exist_ok=True)
        has_classifier = (checkpoint / CLASSIFIER_FILE).is_file()
        if has_classifier:
            shutil.copyfile(checkpoint / CLASSIFIER_FILE, out / CLASSIFIER_FILE)
    timm_name = timm_vit_name(cfg.model.preset, cfg.model.patch_size, cfg.model.img_size)
    save_file(encoder_state(model), str(out / ENCODER_FILE),
              metadata={"timm_model": timm_name, "source": "objmae-ray", "trial_id": record.trial_id})
    (out / CONFIG_FILE).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    metrics = {k: v for k, v in record.last.items() if isinstance(v, (int, float, str, bool)) or v is None}
    (out / METRICS_FILE).write_text(json.dumps(
        {"trial_id": record.trial_id,
         "selected_by": {"metric": metric, "mode": mode, **({} if phase is None else {"phase": phase})},
         "params": record.params,
         "checkpoint": source, "metrics": metrics}, indent=2, sort_keys=True, default=str))
    (out / CARD_FILE).write_text(_model_card(record, cfg, metrics, metric, timm_name, has_classifier, study))
    return out
