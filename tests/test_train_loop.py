"""The train loop without Ray (train/loop.py, train/checkpoint.py): checkpoint layout and round trip, the
loop in one process (LocalRun), exact resume, non-finite loss, speed-up estimate."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from objmae_ray.config import ModelConfig, TrialConfig
from objmae_ray.data import ensure_synthetic
from objmae_ray.errors import ConfigError
from objmae_ray.method.model import ObjMAE, create_objmae
from objmae_ray.train import checkpoint as ckpt
from objmae_ray.method.flops import speedup_estimate
from objmae_ray.train.pretrain import NonFiniteLossError, pretrain_epoch
from objmae_ray.train.optim import build_optimizer, build_lr_schedule
from objmae_ray.train.loop import LocalRun, TrialRun, epoch_seed
from trial_helpers import tiny_config

TIMING_KEYS = {"images_per_s", "epoch_time_s", "pretrain_time_s", "loop_start_at", "first_step_at",
               "report_time_s", "speedup_measured", "data_wait_frac"}
METRIC_KEYS = {"phase", "phase_index", "epoch", "recon_loss", "train_loss", "top1", "top5", "val_loss",
               "images_per_s", "epoch_time_s", "pretrain_time_s", "speedup_est", "fallback", "fallback_frac",
               "lr", "loop_start_at", "first_step_at", "report_time_s", "done", "speedup_measured",
               "data_wait_frac"}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic(root, num_images=32, img_size=32, seed=0)
    return str(root)


def run_local(cfg: TrialConfig, directory: Path, checkpoints: list[Path] = ()) -> LocalRun:
    directory.mkdir(parents=True, exist_ok=True)
    run = LocalRun(directory, checkpoints=list(checkpoints))
    TrialRun(cfg, run.worker()).run()
    return run


def without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


def test_scratch_baseline_skips_pre_training(synthetic_root, tmp_path):
    """pretrain.epochs 0: no pre-train report or checkpoint; the transfer phases start from the initial encoder
    and report no reconstruction and no speed-up (NaN: there is no pre-training to speak of)."""
    cfg = tiny_config(synthetic_root, pretrain={"epochs": 0, "warmup_epochs": 0, "batch_size": 8, "lr": 1e-2,
                                                "data": {"kind": "synthetic", "root": synthetic_root,
                                                         "num_images": 32, "loader_workers": 0}})
    run = run_local(cfg, tmp_path)
    assert [(r["phase"], r["epoch"]) for r in run.reports] == [("finetune", 0), ("linear", 0)]
    assert all(r["recon_loss"] != r["recon_loss"] and r["speedup_est"] != r["speedup_est"] for r in run.reports)
    torch.manual_seed(cfg.seed)
    initial = create_objmae("micro", img_size=32, patch_size=8).encoder_state_dict()
    finetuned = ckpt.load_checkpoint(run.checkpoints[0])
    assert all(torch.equal(finetuned["objmae"][k], v) for k, v in initial.items())  # the encoder never pre-trained


# ---- checkpoints -----------------------------------------------------------------------------------

def test_checkpoint_round_trip(tmp_path):
    cfg = TrialConfig()
    model = create_objmae("micro", img_size=32, patch_size=8)
    torch.manual_seed(0)
    expected_next = torch.rand(3)
    torch.manual_seed(0)
    state = {"phase_index": 0, "epoch": 4, "rng": ckpt.rng_state(), "optimizer": {"x": torch.ones(2)}}
    ckpt.save_checkpoint(tmp_path / "c", objmae=model, train_state=state, config=cfg, metrics={"top1": 1.5})
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "metrics.json", "objmae.safetensors", "train_state.pt", "trial_config.json"]
    torch.rand(5)  # move the RNG on; restoring must bring it back
    loaded = ckpt.load_checkpoint(tmp_path / "c")
    assert loaded["config"] == cfg and loaded["metrics"] == {"top1": 1.5} and loaded["classifier"] is None
    assert loaded["train_state"]["epoch"] == 4
    ckpt.set_rng_state(loaded["train_state"]["rng"])
    assert torch.equal(torch.rand(3), expected_next)
    fresh = create_objmae("micro", img_size=32, patch_size=8)
    fresh.load_state_dict(loaded["objmae"])
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_load_checkpoint_names_missing_file(tmp_path):
    (tmp_path / "c").mkdir()
    with pytest.raises(ConfigError, match=r"objmae\.safetensors: missing from checkpoint"):
        ckpt.load_checkpoint(tmp_path / "c")


# ---- the train loop in one process --------------------------------------------------------------------

@pytest.fixture(scope="module")
def clean_run(synthetic_root, tmp_path_factory) -> LocalRun:
    return run_local(tiny_config(synthetic_root), tmp_path_factory.mktemp("clean"))


def test_local_run_reports_every_epoch_with_checkpoints(clean_run):
    reports = clean_run.reports
    assert [(r["phase"], r["epoch"]) for r in reports] == [
        ("pretrain", 0), ("pretrain", 1), ("finetune", 0), ("linear", 0)]
    assert [r["done"] for r in reports] == [False, False, False, True]
    for r in reports:
        assert METRIC_KEYS <= set(r)
        assert all(v == v for v in r.values() if isinstance(v, float))  # no NaN
    assert reports[1]["recon_loss"] == reports[1]["train_loss"] > 0
    assert reports[2]["recon_loss"] == reports[1]["recon_loss"]  # carried into transfer phases
    for r in reports[2:]:
        assert 0.0 <= r["top1"] <= r["top5"] <= 100.0
        assert r["val_images"] == 8
        assert r["top1"] * r["val_images"] / 100 == pytest.approx(round(r["top1"] * r["val_images"] / 100))
    assert reports[1]["pretrain_time_s"] == pytest.approx(reports[0]["epoch_time_s"] + reports[1]["epoch_time_s"])
    assert reports[0]["speedup_est"] > 1.0
    for r in reports[:2]:  # what alpha did (alpha 0.25 on a 4 x 4 grid: L = 4, zero padding)
        assert r["alpha_effective"] == pytest.approx(4 / 16)
        assert 0 < r["encoder_seen_frac"] <= 4 / 16 and 0 < r["target_real_frac"] <= 1.0
        assert 0 <= r["padded_frac"] < 1.0 and r["recon_zero_loss"] > 0
    names = [p.name for p in clean_run.checkpoints]
    assert names == ["checkpoint_p0_pretrain_e0000", "checkpoint_p0_pretrain_e0001",
                     "checkpoint_p1_finetune_e0000", "checkpoint_p2_linear_e0000"]
    assert not (clean_run.checkpoints[1] / "classifier.safetensors").exists()
    last = ckpt.load_checkpoint(clean_run.checkpoints[-1])
    assert last["metrics"] == reports[-1]
    assert last["train_state"]["phase"] == "linear" and last["train_state"]["updates"] == 4
    assert "head.0.running_mean" in last["classifier"]  # linear probe: BatchNorm(affine=False) + Linear
    assert "head.0.weight" not in last["classifier"]


def test_each_transfer_phase_final_is_carried_to_the_last_report(clean_run):
    """transfer<i>_<metric> (what an objective naming `phase: i` optimises): in every report (Tune requires the
    searcher's metric in each), 0.0 before transfer phase i, its latest value from then on, so the last report
    holds every phase's final value."""
    pretrain, finetune, linear = clean_run.reports[1], clean_run.reports[2], clean_run.reports[3]
    keys = {f"transfer{i}_{m}" for i in (0, 1) for m in ("top1", "top5", "val_loss", "train_loss")}
    assert {k: pretrain[k] for k in keys} == dict.fromkeys(keys, 0.0)
    assert {k: finetune[k] for k in keys if k.startswith("transfer0")} == {
        "transfer0_top1": finetune["top1"], "transfer0_top5": finetune["top5"],
        "transfer0_val_loss": finetune["val_loss"], "transfer0_train_loss": finetune["train_loss"]}
    assert finetune["transfer1_top1"] == 0.0 and finetune["transfer0_train_loss"] > 0
    assert linear["transfer0_top1"] == finetune["top1"] and linear["transfer0_val_loss"] == finetune["val_loss"]
    assert linear["transfer1_top1"] == linear["top1"] and linear["transfer1_top5"] == linear["top5"]


def test_linear_probe_keeps_the_pretrained_encoder(clean_run):
    pretrained = ckpt.load_checkpoint(clean_run.checkpoints[1])["objmae"]
    finetuned = ckpt.load_checkpoint(clean_run.checkpoints[2])["classifier"]
    linear = ckpt.load_checkpoint(clean_run.checkpoints[3])["classifier"]
    key = "blocks.0.attn.qkv.weight"
    assert torch.equal(linear[key], pretrained[key])  # frozen encoder
    assert not torch.equal(finetuned[key], pretrained[key])  # fine-tuning moved it


@pytest.mark.parametrize("resume_from", [0, 1, 2])
def test_resume_from_any_checkpoint_reproduces_the_clean_run(clean_run, synthetic_root, tmp_path, resume_from):
    """Resuming after checkpoint k (mid pre-train, end of pre-train, end of fine-tune) redoes nothing
    before it and reproduces every later report exactly."""
    resumed = run_local(tiny_config(synthetic_root), tmp_path, checkpoints=[clean_run.checkpoints[resume_from]])
    expected = [without_timing(r) for r in clean_run.reports[resume_from + 1:]]
    assert [without_timing(r) for r in resumed.reports] == expected
    final = ckpt.load_checkpoint(resumed.checkpoints[-1])["classifier"]
    reference = ckpt.load_checkpoint(clean_run.checkpoints[-1])["classifier"]
    assert all(torch.equal(final[k], reference[k]) for k in reference)


def test_checkpoint_every_two_epochs_and_at_phase_end(synthetic_root, tmp_path):
    data = {"kind": "synthetic", "root": synthetic_root, "num_images": 32, "loader_workers": 0}
    cfg = tiny_config(synthetic_root, checkpoint_every=2, transfer=[],
                      pretrain={"epochs": 3, "warmup_epochs": 0, "batch_size": 16, "lr": 1e-3, "data": data})
    run = run_local(cfg, tmp_path)
    assert [r["epoch"] for r in run.reports] == [0, 1, 2] and run.reports[-1]["done"]
    assert [p.name for p in run.checkpoints] == ["checkpoint_p0_pretrain_e0001", "checkpoint_p0_pretrain_e0002"]


def test_resume_refuses_a_different_config(clean_run, synthetic_root, tmp_path):
    cfg = tiny_config(synthetic_root, seed=11)
    run = LocalRun(tmp_path, checkpoints=[clean_run.checkpoints[0]])
    with pytest.raises(ConfigError, match="different TrialConfig"):
        TrialRun(cfg, run.worker())


def test_seed_changes_the_run(clean_run, synthetic_root, tmp_path):
    other = run_local(tiny_config(synthetic_root, seed=4, transfer=[]), tmp_path)
    assert other.reports[0]["recon_loss"] != clean_run.reports[0]["recon_loss"]
    assert epoch_seed(3, 0, 1, 0) != epoch_seed(3, 0, 1, 1) != epoch_seed(3, 0, 2, 1)


def test_non_finite_loss_stops_the_trial_and_keeps_the_checkpoint(synthetic_root, tmp_path, monkeypatch):
    """Loss NaN from the 6th step on (epoch 1, step 1 at 4 steps/epoch): error names it, epoch 0's checkpoint stays."""
    calls = {"n": 0}
    real_forward = ObjMAE.forward

    def nan_after_five(self, imgs, *args, **kwargs):
        loss, pred = real_forward(self, imgs, *args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 5 else loss), pred

    monkeypatch.setattr(ObjMAE, "forward", nan_after_five)
    run = LocalRun(tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"^pretrain: loss is nan at epoch 1 step 1;"):
        TrialRun(tiny_config(synthetic_root), run.worker()).run()
    assert [p.name for p in run.checkpoints] == ["checkpoint_p0_pretrain_e0000"]
    assert torch.isfinite(ckpt.load_checkpoint(run.checkpoints[0])["objmae"]["blocks.0.attn.qkv.weight"]).all()


def test_pretrain_epoch_calls_step_hook_and_counts_fallback():
    """Images without any object fall back to whole-image selection and are counted."""
    model = create_objmae("micro", img_size=32, patch_size=8)
    cfg = tiny_config("/unused")
    opt = build_optimizer(model, cfg.pretrain, global_batch=4)
    sched = build_lr_schedule(opt, cfg.pretrain, updates_per_epoch=2)
    batch = {"image": torch.randn(4, 3, 32, 32), "object_patches": torch.zeros(4, 3, 16, dtype=torch.bool),
             "object_ratio": torch.zeros(4, 3)}
    batch["object_patches"][:2, 0, :8] = True  # images 0, 1 have an object of 8 patches (ratio 0.5)
    batch["object_ratio"][:2, 0] = 0.5
    seen = []
    stats = pretrain_epoch(model, [batch, batch], opt, sched, epoch=0, first_update=0, num_patches=16,
                           masking=cfg.masking, generator=torch.Generator().manual_seed(0),
                           device=torch.device("cpu"), on_step=lambda e, s: seen.append((e, s)))
    assert seen == [(0, 0), (0, 1)]
    assert (stats.images, stats.steps, stats.fallback) == (8, 2, 4)
    assert stats.loss > 0


def test_flop_count_on_meta_adds_exactly_the_attention_matmuls():
    """Counting on `meta` = CPU count (no fused-SDPA formula) + QK^T and AV: 3 x depth x 4 T^2 D (fwd + bwd)."""
    from objmae_ray.method.flops import supervised_step_flops

    cfg = ModelConfig(preset="micro", img_size=32, patch_size=8)  # T = 1 + 16 tokens, D = 64, depth 2
    cpu = supervised_step_flops(cfg)
    with torch.device("meta"):
        meta = supervised_step_flops(cfg)
    assert meta - cpu == 3 * 2 * 4 * 17 ** 2 * 64


@pytest.mark.parametrize("alpha", [1.0, 0.34, 0.125])
def test_speedup_estimate_formula_equals_flop_counter_on_meta(alpha):
    """The closed form a trial reports equals FlopCounterMode's count (attention included) on meta."""
    from objmae_ray.method.flops import objmae_step_flops, supervised_step_flops

    cfg = ModelConfig(preset="micro", img_size=64, patch_size=8)
    with torch.device("meta"):
        counted = supervised_step_flops(cfg) / objmae_step_flops(cfg, alpha)
    assert speedup_estimate(cfg, alpha) == pytest.approx(counted, rel=1e-12)


def test_speedup_estimate_grows_as_alpha_shrinks():
    model = ModelConfig(preset="micro", img_size=64, patch_size=8)
    speedups = [speedup_estimate(model, alpha) for alpha in (1.0, 0.5, 0.25, 0.125)]
    assert all(a < b for a, b in zip(speedups, speedups[1:]))
    assert 1.0 < speedups[1] < 2.5  # half the patches each side: ~2x fewer FLOPs than a full ViT step


def test_trial_config_json_in_checkpoint_is_the_config(clean_run, synthetic_root):
    stored = json.loads((clean_run.checkpoints[0] / "trial_config.json").read_text())
    assert TrialConfig.model_validate(stored) == tiny_config(synthetic_root)
