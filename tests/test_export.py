"""Export of the best trial and the results table, on a run directory laid out as Tune + objmae_ray.trial
write it (trial dirs with params.json / result.json, checkpoints of contract 5 with real weights)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

from objmae_ray.cli import export_main
from objmae_ray.config import SweepSpec, TrialConfig
from objmae_ray.errors import ConfigError
from objmae_ray.export import encoder_state, export_best
from objmae_ray.model import create_objmae, create_vit_classifier, get_preset, timm_vit_name
from objmae_ray.report import (TrialRecord, group_trials, markdown_table, pareto_front, records_from_dir,
                               write_report)
from objmae_ray.sweep import save_spec
from objmae_ray.train.checkpoint import save_checkpoint

SPEC = {
    "study": "exp", "objectives": [{"metric": "top1", "mode": "max"}], "num_samples": 3, "repeats": 2,
    "base": {"model": {"preset": "micro", "img_size": 32, "patch_size": 8},
             "pretrain": {"epochs": 1, "warmup_epochs": 0, "batch_size": 8, "lr": 1e-3},
             "transfer": [{"epochs": 2, "warmup_epochs": 0, "batch_size": 8, "lr": 1e-3}]},
    "search_space": {"alpha": {"choices": [0.25, 0.5]}},
}


def make_trial(run_dir: Path, trial_id: str, alpha: float, repeat: int, top1s: list[float], seed: int,
               speedup: float) -> Path:
    """One trial as Tune + objmae_ray.trial leave it: params.json, result.json, one checkpoint per report."""
    cfg = TrialConfig.model_validate({**SPEC["base"], "seed": seed, "masking": {"alpha": alpha}})
    torch.manual_seed(seed)
    objmae = create_objmae("micro", img_size=32, patch_size=8)
    trial_dir = run_dir / f"trial_{trial_id}"
    trial_dir.mkdir(parents=True)
    (trial_dir / "params.json").write_text(json.dumps({**cfg.model_dump(), "masking.alpha": alpha,
                                                       "__trial_index__": repeat}))
    reports = [{"phase": "pretrain", "phase_index": 0, "epoch": 0, "recon_loss": 0.9 - alpha, "top1": 0.0,
                "top5": 0.0, "speedup_est": speedup, "pretrain_time_s": 1.0, "done": False}]
    reports += [{"phase": "finetune", "phase_index": 1, "epoch": e, "recon_loss": 0.9 - alpha, "top1": t,
                 "top5": min(100.0, t + 10), "speedup_est": speedup, "pretrain_time_s": 1.0,
                 "done": e == len(top1s) - 1} for e, t in enumerate(top1s)]
    lines = []
    for i, report in enumerate(reports):
        checkpoint = run_dir / f"train-{trial_id}" / f"checkpoint_{i}"
        classifier = None
        if report["phase"] == "finetune":
            classifier = create_vit_classifier("micro", img_size=32, patch_size=8, num_classes=3,
                                               encoder_state=objmae.encoder_state_dict())
        save_checkpoint(checkpoint, objmae=objmae, classifier=classifier, train_state={"epoch": i}, config=cfg,
                        metrics=report)
        lines.append(json.dumps({**report, "trial_id": trial_id, "training_iteration": i + 1,
                                 "checkpoint_path": str(checkpoint)}))
    (trial_dir / "result.json").write_text("\n".join(lines) + "\n")
    return trial_dir


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "runs" / "exp-1"
    save_spec(SweepSpec.model_validate(SPEC), str(run))
    make_trial(run, "a0", 0.25, 0, [50.0, 60.0], seed=1, speedup=3.5)
    make_trial(run, "a1", 0.25, 1, [55.0, 70.0], seed=2, speedup=3.5)  # best final top-1
    make_trial(run, "b0", 0.5, 0, [80.0, 65.0], seed=3, speedup=1.9)   # best top-1 mid-run, not at the end
    make_trial(run, "b1", 0.5, 1, [40.0, 61.0], seed=4, speedup=1.9)
    return run


def test_export_picks_best_final_metric_and_loads_into_timm(run_dir, tmp_path):
    out = tmp_path / "export"
    assert export_main([str(run_dir), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "classifier.safetensors", "config.yaml",
                                                    "encoder.safetensors", "metrics.json"]
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["trial_id"] == "a1" and meta["metrics"]["top1"] == 70.0
    assert meta["params"] == {"masking.alpha": 0.25} and meta["checkpoint"].endswith("train-a1/checkpoint_2")
    cfg = TrialConfig.model_validate(yaml.safe_load((out / "config.yaml").read_text()))
    assert cfg.seed == 2 and cfg.masking.alpha == 0.25

    # the encoder loads into timm with only the head missing and gives the project's encoder features
    dims = {k: get_preset("micro")[k] for k in ("embed_dim", "depth", "num_heads")}
    vit = timm.create_model(timm_vit_name("micro", 8, 32), pretrained=False, num_classes=3, img_size=32,
                            patch_size=8, **dims).eval()
    missing, unexpected = vit.load_state_dict(load_file(str(out / "encoder.safetensors")), strict=False)
    assert sorted(missing) == ["head.bias", "head.weight"] and unexpected == []
    torch.manual_seed(2)
    objmae = create_objmae("micro", img_size=32, patch_size=8).eval()
    imgs = torch.randn(2, 3, 32, 32)
    all_patches = torch.arange(objmae.num_patches).expand(2, -1)
    with torch.no_grad():
        expected = objmae.forward_encoder(imgs, all_patches)  # [B, 1 + N, D]
        got = vit.forward_features(imgs)
    assert got.shape == expected.shape == (2, 1 + 16, 64)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    # the classifier is the trial's checkpointed one, loadable into the same timm architecture
    classifier = load_file(str(out / "classifier.safetensors"))
    reference = load_file(str(run_dir / "train-a1" / "checkpoint_2" / "classifier.safetensors"))
    assert classifier.keys() == reference.keys() and all(torch.equal(classifier[k], reference[k]) for k in reference)
    card = (out / "README.md").read_text()
    assert "trial `a1`" in card and "| top1 | 70 |" in card and "load_state_dict" in card


def test_export_metric_and_mode_flags(run_dir, tmp_path):
    out = export_best(run_dir, tmp_path / "e1", metric="recon_loss", mode="min")
    assert json.loads((out / "metrics.json").read_text())["trial_id"] in {"b0", "b1"}  # recon 0.4 < 0.65
    out = export_best(run_dir, tmp_path / "e2", metric="top1", mode="min")
    assert json.loads((out / "metrics.json").read_text())["trial_id"] == "a0"


def test_vit_small_encoder_loads_into_named_timm_model():
    cfg = TrialConfig()  # paper defaults: vit_small, 224, patch 16
    objmae = create_objmae("vit_small")
    state = encoder_state(objmae.state_dict(), cfg)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False)
    missing, unexpected = vit.load_state_dict(state, strict=False)
    assert sorted(missing) == ["head.bias", "head.weight"] and unexpected == []


def test_export_errors_are_one_line(tmp_path, run_dir, capsys):
    assert export_main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope'}: run directory not found " \
                                              "(remote storage: copy it locally first)"
    with pytest.raises(ConfigError, match="no trial reported 'accuracy'"):
        export_best(run_dir, tmp_path / "o", metric="accuracy", mode="max")
    (run_dir / "train-a1" / "checkpoint_2" / "objmae.safetensors").unlink()
    with pytest.raises(ConfigError, match="checkpoint_2/objmae.safetensors: not found"):
        export_best(run_dir, tmp_path / "o")


# ---- results table ---------------------------------------------------------------------------------
def test_results_table_groups_repeats_and_ranks(run_dir):
    spec = SweepSpec.model_validate(SPEC)
    records = records_from_dir(run_dir)
    assert [r.repeat for r in records] == [0, 1, 0, 1] and all(r.status == "done" for r in records)
    groups = group_trials(records, spec)
    assert [g.config for g in groups] == ["alpha=0.25", "alpha=0.5"]  # final top-1 means 65 > 63
    assert math.isclose(groups[0].mean("top1"), (60.0 + 70.0) / 2)
    assert math.isclose(groups[0].std("top1"), math.sqrt(50.0))  # sample std of 60, 70
    assert math.isclose(groups[1].mean("top1"), (65.0 + 61.0) / 2)
    assert math.isclose(groups[1].mean("recon_loss"), 0.4) and groups[1].std("recon_loss") == 0.0


def test_report_files(run_dir):
    spec = SweepSpec.model_validate(SPEC)
    text = write_report(str(run_dir), spec, records_from_dir(run_dir))
    md = (run_dir / "results.md").read_text()
    assert md in text
    rows = [line for line in md.splitlines() if line.startswith("| ")][1:]
    assert rows[0].startswith("| 1 | alpha=0.25 | 2 | 3.5x | 0.6500 | 65.00 ± 7.07 |")
    assert rows[1].startswith("| 2 | alpha=0.5 | 2 | 1.9x | 0.4000 | 63.00 ± 2.83 |")
    assert rows[0].endswith("| * | 2 done |") and rows[1].endswith("|  | 2 done |")  # 0.25: faster and better
    table = list(csv.DictReader((run_dir / "results.csv").open()))
    assert [r["configuration"] for r in table] == ["alpha=0.25", "alpha=0.5"]
    assert float(table[0]["top1_mean"]) == 65.0 and math.isclose(float(table[0]["top1_std"]), 7.07107, rel_tol=1e-5)
    png = (run_dir / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_pareto_front():
    points = [(1.0, 90.0), (2.0, 85.0), (1.5, 80.0), (4.0, 70.0), (4.0, 60.0), (2.0, 85.0)]
    assert pareto_front(points) == [0, 1, 3, 5]  # (1.5, 80) and (4, 60) are dominated; ties both kept


def test_table_marks_stopped_and_missing():
    spec = SweepSpec.model_validate(SPEC)
    records = [TrialRecord("x", {"masking.alpha": 0.5}, 0, [{"phase_index": 0, "speedup_est": 2.0, "top1": 0.0,
                                                             "recon_loss": 0.5, "done": False}]),
               TrialRecord("y", {"masking.alpha": 0.25}, 0, [], error=True)]
    md = markdown_table(group_trials(records, spec), spec)
    assert "| alpha=0.5 | 1 | 2.0x | 0.5000 | - | - |" in md and "1 stopped" in md
    assert "| alpha=0.25 | 1 | - | - | - | - |" in md and "1 error" in md
