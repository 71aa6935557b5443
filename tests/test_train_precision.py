"""Precision of a trial (train/precision.py) on CPU: what "auto" resolves to, fp16 loss scaling (the loss
scaled before backward, a step with inf gradients skipped and the scale halved, good steps train like fp32),
and the scaler's state in checkpoints and on resume."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from objmae_ray.errors import ConfigError
from objmae_ray.train import checkpoint as ckpt
from objmae_ray.train.loop import LocalRun, TrialRun
from objmae_ray.train.precision import Precision, resolve_precision
from objmae_ray.data import ensure_synthetic
from trial_helpers import tiny_config

INIT_SCALE = 65536.0  # torch.amp.GradScaler's default


def test_auto_is_fp32_on_cpu_and_explicit_choices_are_kept():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert [resolve_precision(p, "cpu") for p in ("bf16", "fp16", "fp32")] == ["bf16", "fp16", "fp32"]
    assert Precision("fp16", "cpu").scaler.is_enabled()
    assert not any(Precision(p, "cpu").scaler.is_enabled() for p in ("auto", "bf16", "fp32"))
    with Precision("fp16", "cpu").autocast():
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float16
    with Precision("fp32", "cpu").autocast():
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_on_cuda_follows_native_bf16():
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert resolve_precision("auto", "cuda") == ("bf16" if native else "fp16")
    if not native:
        with pytest.raises(ConfigError, match="^precision: bf16 but .* has no native bf16"):
            resolve_precision("bf16", "cuda")


def two_layers(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 1))


def test_fp16_scales_the_loss_before_backward():
    """The gradient reaching the model's output is the scale times the fp32 one; the parameter update equals
    fp32's within fp16 rounding (gradients are unscaled before the step)."""
    x = torch.linspace(-1, 1, 12).reshape(3, 4)
    grads, params = {}, {}
    for name in ("fp32", "fp16"):
        model, precision = two_layers(), Precision(name, "cpu")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with precision.autocast():
            out = model(x)
        out.register_hook(lambda g, name=name: grads.__setitem__(name, g.float()))
        precision.backward_step(out.float().square().mean(), optimizer)
        params[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.allclose(grads["fp16"], grads["fp32"] * INIT_SCALE, rtol=1e-2)
    assert torch.allclose(params["fp16"], params["fp32"], atol=1e-3)
    assert not torch.equal(params["fp32"], torch.cat([p.detach().flatten() for p in two_layers().parameters()]))


def test_fp16_skips_a_step_with_inf_gradients_and_halves_the_scale():
    """A loss whose scaled gradient overflows fp16: the parameters stay as they were, the scale halves; the
    next (finite) step is taken at the new scale."""
    model, precision = two_layers(), Precision("fp16", "cpu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.ones(3, 4)
    with precision.autocast():
        out = model(x)
    precision.backward_step(out.float().sum() * 1e4, optimizer)  # 1e4 * 65536 > fp16's max 65504
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert precision.state_dict()["scale"] == INIT_SCALE / 2
    with precision.autocast():
        out = model(x)
    precision.backward_step(out.float().mean() * 1e-2, optimizer)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert precision.state_dict()["scale"] == INIT_SCALE / 2  # grows again only after growth_interval good steps


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic(root, num_images=32, img_size=32, seed=0)
    return str(root)


def run_local(cfg, directory, checkpoints=()) -> LocalRun:
    directory.mkdir(parents=True, exist_ok=True)
    run = LocalRun(directory, checkpoints=list(checkpoints))
    TrialRun(cfg, run.worker()).run()
    return run


def test_fp16_trial_trains_like_fp32_and_checkpoints_its_scaler(synthetic_root, tmp_path):
    """The tiny trial (8 pre-train + 4 fine-tune + 4 linear steps) at fp16 with loss scaling: losses within
    fp16 rounding of fp32's; every checkpoint holds the scaler state, fp32's holds an empty one."""
    runs = {p: run_local(tiny_config(synthetic_root, precision=p), tmp_path / p) for p in ("fp32", "fp16")}
    for fp32, fp16 in zip(runs["fp32"].reports, runs["fp16"].reports):
        assert (fp16["phase"], fp16["epoch"]) == (fp32["phase"], fp32["epoch"])
        assert fp16["train_loss"] == pytest.approx(fp32["train_loss"], rel=0.05)
        assert fp16["train_loss"] != fp32["train_loss"]  # it did run at half precision
    scalers = [ckpt.load_checkpoint(c)["train_state"]["scaler"] for c in runs["fp16"].checkpoints]
    assert all(s["scale"] > 0 and s["growth_interval"] == 2000 for s in scalers)
    assert ckpt.load_checkpoint(runs["fp32"].checkpoints[0])["train_state"]["scaler"] == {}


def test_resume_restores_the_scaler_state(synthetic_root, tmp_path):
    """A run resumed from a checkpoint whose scaler was halved continues at that scale, not the initial one."""
    cfg = tiny_config(synthetic_root, precision="fp16")
    first = run_local(cfg, tmp_path / "first")
    checkpoint = first.checkpoints[0]  # pre-train epoch 0
    state = torch.load(checkpoint / ckpt.TRAIN_STATE_FILE, weights_only=True)
    state["scaler"]["scale"] = 1024.0
    torch.save(state, checkpoint / ckpt.TRAIN_STATE_FILE)
    resumed = TrialRun(cfg, LocalRun(tmp_path / "resumed", checkpoints=[checkpoint]).worker())
    assert resumed.precision.state_dict()["scale"] == 1024.0
    assert TrialRun(cfg, LocalRun(tmp_path / "fresh").worker()).precision.state_dict()["scale"] == INIT_SCALE
