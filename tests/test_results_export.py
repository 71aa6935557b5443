"""Export of the best trial (results/export.py), on a run directory laid out as Tune + the trial write it
(trial dirs with params.json / result.json, checkpoints with real weights: tests/run_helpers.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from objmae_ray.cli import export_main
from objmae_ray.config import TrialConfig
from objmae_ray.errors import ConfigError
from objmae_ray.method.model import create_objmae, get_preset, timm_vit_name
from objmae_ray.results import export
from objmae_ray.results.export import encoder_state, export_best, local_checkpoint
from s3_helpers import BUCKET

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
    objmae = create_objmae("vit_small")  # paper defaults: 224 px, patch 16
    state = encoder_state(objmae)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False)
    missing, unexpected = vit.load_state_dict(state, strict=False)
    assert sorted(missing) == ["head.bias", "head.weight"] and unexpected == []


def test_export_errors_are_one_line(tmp_path, run_dir, capsys):
    assert export_main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope'}: run directory not found"
    with pytest.raises(ConfigError, match="no trial reported 'accuracy'"):
        export_best(run_dir, tmp_path / "o", metric="accuracy", mode="max")
    (run_dir / "train-a1" / "checkpoint_2" / "objmae.safetensors").unlink()
    with pytest.raises(ConfigError, match="checkpoint_2/objmae.safetensors: not found"):
        export_best(run_dir, tmp_path / "o")


def test_export_report_and_results_read_and_write_s3_runs_in_place(s3_env, run_dir, tmp_path, capsys):
    """A run on S3 (moto on loopback), checkpoint paths as Ray reports them there (bucket/key, no scheme):
    objmae-export reads it in place and writes the same encoder as from the local copy; objmae-report and
    the results table write into the run directory in the bucket."""
    from objmae_ray.cli import report_main
    from objmae_ray.results.page import write_report, write_results
    from objmae_ray.results.records import records_from_dir
    from objmae_ray.sweep import rundir
    from objmae_ray.sweep.rundir import load_run_spec

    uri = f"s3://{BUCKET}/objmae/{run_dir.name}"
    rundir.upload(run_dir, uri)
    for trial in rundir.trial_dirs(uri):  # Ray's checkpoint_path on S3: the key inside the bucket
        text = rundir.read_text(f"{trial.path}/result.json")
        rundir.write_text(f"{trial.path}/result.json", text.replace(str(run_dir), f"{BUCKET}/objmae/{run_dir.name}"))
    assert export_main([uri, "--out", str(tmp_path / "remote")]) == 0
    export_best(run_dir, tmp_path / "local")
    remote, local = load_file(str(tmp_path / "remote" / "encoder.safetensors")), \
        load_file(str(tmp_path / "local" / "encoder.safetensors"))
    assert remote.keys() == local.keys() and all(torch.equal(remote[k], local[k]) for k in local)
    meta = json.loads((tmp_path / "remote" / "metrics.json").read_text())
    assert meta["trial_id"] == "a1" and meta["checkpoint"] == f"{uri}/train-a1/checkpoint_2"
    assert (tmp_path / "remote" / "classifier.safetensors").is_file()

    capsys.readouterr()
    assert report_main([uri, "--no-figures"]) == 0
    assert capsys.readouterr().out.startswith(f"report written to {uri}/report ")
    page = rundir.read_text(f"{uri}/report/index.html")
    assert "<h1>ObjMAE sweep: exp</h1>" in page and "4 trials (4 done)" in page
    local_report = write_report(run_dir, tmp_path / "local-report", with_figures=False)
    assert rundir.read_text(f"{uri}/report/table4_alpha.md") == (local_report / "table4_alpha.md").read_text()
    text = write_results(uri, load_run_spec(uri), records_from_dir(uri))
    assert rundir.read_text(f"{uri}/results.md") == text.split("\nwritten: ")[0]
    assert rundir.read_bytes(f"{uri}/pareto.png")[:4] == b"\x89PNG"


def _card_snippet(card: str) -> str:
    return card.split("```python\n", 1)[1].split("```\n", 1)[0]


def test_export_files_hold_exactly_the_best_trial(run_dir, tmp_path):
    """metrics.json, the safetensors metadata, config.yaml and the model card, value by value; the card's
    code runs as written."""
    result = run_dir / "trial_a1" / "result.json"
    lines = result.read_text().splitlines()
    last = {**json.loads(lines[-1]), "notes": None, "curve": [1.0, 2.0], "extra": {"a": 1}}
    result.write_text("\n".join(lines[:-1] + [json.dumps(last)]) + "\n")
    checkpoint = run_dir / "train-a1" / "checkpoint_2"
    out = export_best(run_dir, tmp_path / "new" / "nested" / "export")  # parents are created

    kept = {k: v for k, v in last.items() if k not in ("curve", "extra")}  # lists and dicts are not metrics
    expected = {"trial_id": "a1", "selected_by": {"metric": "top1", "mode": "max"}, "params": {"masking.alpha": 0.25},
                "checkpoint": str(checkpoint), "metrics": kept}
    text = (out / "metrics.json").read_text()
    assert json.loads(text) == expected
    assert text == json.dumps(expected, indent=2, sort_keys=True)  # stable, diffable layout
    with safe_open(str(out / "encoder.safetensors"), framework="pt") as f:
        assert f.metadata() == {"timm_model": "vit_tiny_patch16_224", "source": "objmae-ray", "trial_id": "a1"}
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert list(config) == list(TrialConfig.model_fields)  # the schema's order, as a person reads it
    assert TrialConfig.model_validate(config) == TrialConfig.model_validate_json(
        (checkpoint / "trial_config.json").read_text())

    card = (out / "README.md").read_text()
    assert card.startswith("# ObjMAE encoder: study `exp`, trial `a1`\n")
    assert "by final `top1`." in card and "Transfer: finetune on synthetic (2 epoch(s)).\n" in card
    assert "| searched | value |\n|---|---|\n| masking.alpha | 0.25 |\n" in card
    assert ("|---|---|\n| top1 | 70 |\n| top5 | 80 |\n| recon_loss | 0.65 |\n| speedup_est | 3.5 |\n"
            "| pretrain_time_s | 1 |\n\n## Use") in card  # the metrics of METRICS the report has, in that order
    assert card.split("```\n\n", 1)[1].startswith(
        "`classifier.safetensors` holds the trial's final finetune classifier "
        "(timm `vit_tiny_patch16_224`, global_pool as trained).\n`config.yaml` reruns")
    code = _card_snippet(card)
    assert 'timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=NUM_CLASSES, img_size=32, ' \
           'patch_size=8, embed_dim=64, depth=2, num_heads=2)' in code
    namespace = {"NUM_CLASSES": 3}
    cwd = os.getcwd()
    try:
        os.chdir(out)
        exec(compile(code, "README.md", "exec"), namespace)  # the model card's instructions work
    finally:
        os.chdir(cwd)
    assert namespace["model"].head.out_features == 3 and namespace["missing"] == ["head.weight", "head.bias"]

    again = export_best(run_dir, out)  # exporting again into the same directory replaces the files
    assert json.loads((again / "metrics.json").read_text()) == expected


def test_export_without_classifier_search_values_or_sweep_file(run_dir, tmp_path):
    """The base trial of a run without sweep.yaml (metric and mode given), no classifier, no transfer phase."""
    checkpoint = run_dir / "train-a1" / "checkpoint_2"
    (checkpoint / "classifier.safetensors").unlink()
    config = json.loads((checkpoint / "trial_config.json").read_text())
    (checkpoint / "trial_config.json").write_text(json.dumps({**config, "transfer": []}))
    params = run_dir / "trial_a1" / "params.json"
    params.write_text(json.dumps({k: v for k, v in json.loads(params.read_text()).items() if "." not in k}))
    (run_dir / "sweep.yaml").unlink()
    with pytest.raises(ConfigError, match=r"^.*exp-1/sweep\.yaml: not found; pass --metric and --mode$"):
        export_best(run_dir, tmp_path / "o")
    with pytest.raises(ConfigError, match=r"sweep\.yaml: not found"):
        export_best(run_dir, tmp_path / "o", metric="top1")
    out = export_best(run_dir, tmp_path / "o", metric="top1", mode="max")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.yaml", "encoder.safetensors", "metrics.json"]
    card = (out / "README.md").read_text()
    assert card.startswith("# ObjMAE encoder: study `exp-1`, trial `a1`\n")  # no sweep file: the directory's name
    assert "Transfer: none.\n" in card and "| searched | value |\n|---|---|\n| (base trial) | |\n" in card
    assert card.split("```\n\n", 1)[1].startswith("\n`config.yaml` reruns")  # no classifier sentence


def test_metric_or_mode_alone_takes_the_other_from_the_sweep_file(run_dir, tmp_path):
    out = export_best(run_dir, tmp_path / "a", mode="min")  # the sweep's metric (top1), lowest final value
    assert json.loads((out / "metrics.json").read_text())["selected_by"] == {"metric": "top1", "mode": "min"}
    assert json.loads((out / "metrics.json").read_text())["trial_id"] == "a0"
    out = export_best(run_dir, tmp_path / "b", metric="top5")  # the sweep's mode (max): final top-5 80 > 75 > 71 > 70
    assert json.loads((out / "metrics.json").read_text())["trial_id"] == "a1"
    with pytest.raises(ConfigError, match=r"^--mode: must be max or min, got 'maximum'$"):
        export_best(run_dir, tmp_path / "c", metric="top1", mode="maximum")


def test_card_and_metadata_follow_the_trials_config(run_dir, tmp_path, monkeypatch):
    """Two searched values and two transfer phases are all listed; the timm name comes from the trial's model
    config (here made vit_tiny at 384 px: vit_tiny_patch16_384, not the 224 px model)."""
    from objmae_ray.config import ModelConfig
    from objmae_ray.results import export

    params = run_dir / "trial_a1" / "params.json"
    params.write_text(json.dumps({**json.loads(params.read_text()), "masking.padding": "zero"}))
    real = export.objmae_from_checkpoint

    def checkpoint_of_a_bigger_model(directory):
        model, cfg = real(directory)
        probe = cfg.transfer[0].model_copy(update={"mode": "linear", "epochs": 3})
        return model, cfg.model_copy(update={"model": ModelConfig(preset="vit_tiny", img_size=384, patch_size=16),
                                             "transfer": [cfg.transfer[0], probe]})

    monkeypatch.setattr(export, "objmae_from_checkpoint", checkpoint_of_a_bigger_model)
    out = export_best(run_dir, tmp_path / "o")
    card = (out / "README.md").read_text()
    assert "| searched | value |\n|---|---|\n| masking.alpha | 0.25 |\n| masking.padding | zero |\n\n" in card
    assert "Transfer: finetune on synthetic (2 epoch(s)), linear on synthetic (3 epoch(s)).\n" in card
    assert ('timm.create_model("vit_tiny_patch16_384", pretrained=False, num_classes=NUM_CLASSES, img_size=384, '
            'patch_size=16, embed_dim=192, depth=12, num_heads=3)') in _card_snippet(card)
    assert "holds the trial's final linear classifier (timm `vit_tiny_patch16_384`, global_pool as trained)" in card
    with safe_open(str(out / "encoder.safetensors"), framework="pt") as f:
        assert f.metadata()["timm_model"] == "vit_tiny_patch16_384"


def test_checkpoint_is_read_through_a_named_scratch_directory_removed_afterwards(run_dir, tmp_path, monkeypatch):
    """A remote checkpoint is copied to <scratch>/checkpoint; the scratch directory is named objmae-export-* (a
    leftover one is recognisable) and is gone once the export is written."""
    copied = []
    monkeypatch.setattr(export, "download", lambda source, dest: copied.append((source, dest)) or Path(dest))
    assert local_checkpoint("s3://bucket/run/train-a1/checkpoint_2", tmp_path) == tmp_path / "checkpoint"
    assert copied == [("s3://bucket/run/train-a1/checkpoint_2", tmp_path / "checkpoint")]
    assert local_checkpoint(str(run_dir), tmp_path) == run_dir and len(copied) == 1  # local: read in place

    scratch = []
    monkeypatch.setattr(export, "local_checkpoint",
                        lambda source, directory: scratch.append(Path(directory)) or Path(source))
    export_best(run_dir, tmp_path / "out")
    assert len(scratch) == 1 and scratch[0].name.startswith("objmae-export-") and not scratch[0].exists()
