"""optim.py: timm optimiser groups (layer decay, no decay on biases/norms), lr scaling, per-update schedule."""
from __future__ import annotations

import io
import math

import pytest
import torch
from timm.optim import Lookahead

from objmae_ray.config import PretrainConfig, TransferConfig
from objmae_ray.method.model import create_objmae, create_vit_classifier
from objmae_ray.train.optim import build_optimizer, build_lr_schedule, peak_lrs, scaled_lr


def _vit(depth_model: str = "micro"):
    return create_vit_classifier(depth_model, img_size=32, patch_size=8, num_classes=5)


def scheduled_lrs(phase, *, updates_per_epoch: int, updates: int):
    """(optimizer, scheduler, lr of each update 0..updates-1) for a one-layer model at global batch 256."""
    opt = build_optimizer(torch.nn.Linear(4, 4), phase, global_batch=256)
    sched = build_lr_schedule(opt, phase, updates_per_epoch=updates_per_epoch)
    lrs = []
    for update in range(updates):
        sched.step_update(update)
        lrs.append(opt.param_groups[0]["lr"])
    return opt, sched, lrs


def test_lr_scales_with_global_batch_mae_convention():
    assert scaled_lr(1.5e-4, 256) == pytest.approx(1.5e-4)
    assert scaled_lr(1.5e-4, 128) == pytest.approx(7.5e-5)
    assert scaled_lr(1e-3, 1024) == pytest.approx(4e-3)


def test_pretrain_optimizer_is_lookahead_adamw_with_paper_hyperparameters():
    phase = PretrainConfig(epochs=4, warmup_epochs=1, batch_size=64, lr=1.5e-4)
    model = create_objmae("micro", img_size=32, patch_size=8)
    opt = build_optimizer(model, phase, global_batch=64)
    assert isinstance(opt, Lookahead)
    # AdamW: Adam with decoupled weight decay (the base optimiser's defaults, which Lookahead shares)
    assert opt.defaults["decoupled_weight_decay"] is True and not opt.defaults["amsgrad"]
    for group in opt.param_groups:
        assert group["eps"] == 1e-8 and group["betas"] == (0.9, 0.999)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    # biases and norm weights (1-d) are not decayed; matrices are
    assert id(model.blocks[0].attn.qkv.bias) in no_decay and id(model.norm.weight) in no_decay
    assert id(model.blocks[0].attn.qkv.weight) in decay and id(model.decoder_pred.weight) in decay
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay


def test_layer_decay_groups_follow_depth():
    """timm layer decay on a 2-block ViT: lr_scale = 0.65 ** (3 - layer_id); embeddings 0, blocks 1..2, head 3."""
    model = _vit()
    phase = TransferConfig(epochs=2, warmup_epochs=0, batch_size=32, lr=1e-3)
    opt = build_optimizer(model, phase, global_batch=32, layer_decay=0.65)
    scale_of = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    assert scale_of[id(model.patch_embed.proj.weight)] == pytest.approx(0.65 ** 3)
    assert scale_of[id(model.cls_token)] == pytest.approx(0.65 ** 3)
    assert scale_of[id(model.blocks[0].mlp.fc1.weight)] == pytest.approx(0.65 ** 2)
    assert scale_of[id(model.blocks[1].mlp.fc1.weight)] == pytest.approx(0.65)
    assert scale_of[id(model.head.weight)] == pytest.approx(1.0)
    peaks = peak_lrs(opt, phase, global_batch=32)
    assert max(peaks) == pytest.approx(1e-3 * 32 / 256)
    assert min(peaks) == pytest.approx(1e-3 * 32 / 256 * 0.65 ** 3)


def test_schedule_warmup_peak_cosine_and_min_lr():
    """5 updates/epoch, 2 warm-up epochs of 4: linear min_lr -> peak over 10 updates, cosine to min_lr over 10."""
    phase = PretrainConfig(epochs=4, warmup_epochs=2, batch_size=256, lr=1e-3, min_lr=1e-5)
    opt, sched, lrs = scheduled_lrs(phase, updates_per_epoch=5, updates=20)
    peak = 1e-3
    assert lrs[0] == pytest.approx(1e-5)
    assert lrs[5] == pytest.approx(1e-5 + 5 * (peak - 1e-5) / 10)
    assert lrs[10] == pytest.approx(peak)  # warm-up ends exactly at the peak
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:]))  # strictly decreasing cosine
    assert lrs[15] == pytest.approx(1e-5 + 0.5 * (peak - 1e-5) * (1 + math.cos(math.pi * 5 / 10)))
    assert lrs[19] > 1e-5
    sched.step_update(20)  # past the end: held at min_lr
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_layer_decay_scales_scheduled_lr():
    model = _vit()
    phase = TransferConfig(epochs=2, warmup_epochs=1, batch_size=256, lr=1e-3, layer_decay=0.5)
    opt = build_optimizer(model, phase, global_batch=256, layer_decay=0.5)
    sched = build_lr_schedule(opt, phase, updates_per_epoch=3)
    sched.step_update(3)  # end of warm-up: every group at peak * lr_scale
    for group in opt.param_groups:
        assert group["lr"] == pytest.approx(1e-3 * group["lr_scale"])


def test_all_warmup_phase_ramps_over_the_whole_phase_and_ends_at_the_peak():
    """epochs == warmup_epochs (2 x 3 updates): update k runs at min_lr + k/6 (peak - min_lr), rising to the
    peak exactly at the phase's end (update 6), never decaying inside the phase."""
    phase = TransferConfig(epochs=2, warmup_epochs=2, batch_size=256, lr=1e-3, min_lr=1e-5)
    opt, _, lrs = scheduled_lrs(phase, updates_per_epoch=3, updates=7)
    peak = 1e-3
    assert lrs == pytest.approx([1e-5 + k * (peak - 1e-5) / 6 for k in range(7)], rel=1e-9)
    assert lrs[6] == pytest.approx(peak, rel=1e-12)
    with pytest.raises(ValueError, match="updates_per_epoch"):
        build_lr_schedule(opt, phase, updates_per_epoch=0)


def test_cls_and_mask_tokens_get_no_weight_decay():
    """ObjMAE.no_weight_decay keeps the (3-d) tokens out of weight decay, as timm's ViT does; the fixed
    position embeddings are not trained at all."""
    model = create_objmae("micro", img_size=32, patch_size=8)
    assert model.no_weight_decay() == {"cls_token", "mask_token", "pos_embed", "decoder_pos_embed"}
    opt = build_optimizer(model, PretrainConfig(epochs=2, warmup_epochs=1, batch_size=8, lr=1e-3), global_batch=8)
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay_of[id(model.cls_token)] == 0.0 and decay_of[id(model.mask_token)] == 0.0
    assert decay_of[id(model.decoder_embed.weight)] == 0.05
    assert id(model.pos_embed) not in decay_of and id(model.decoder_pos_embed) not in decay_of
    clf = _vit()  # fine-tuning: timm's own rule for its ViT
    opt = build_optimizer(clf, TransferConfig(epochs=2, warmup_epochs=0, batch_size=8, lr=1e-3), global_batch=8,
                          layer_decay=0.65)
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay_of[id(clf.cls_token)] == 0.0 and decay_of[id(clf.pos_embed)] == 0.0
    assert decay_of[id(clf.blocks[0].attn.qkv.weight)] == 0.05


def test_optimizer_and_scheduler_state_round_trip_weights_only():
    model = create_objmae("micro", img_size=32, patch_size=8)
    phase = PretrainConfig(epochs=3, warmup_epochs=1, batch_size=16, lr=1e-3)
    opt = build_optimizer(model, phase, global_batch=16)
    sched = build_lr_schedule(opt, phase, updates_per_epoch=2)
    imgs = torch.randn(2, 3, 32, 32)
    idx = torch.arange(4).expand(2, 4)
    for update in range(3):
        sched.step_update(update)
        loss, _ = model(imgs, idx, idx + 4)
        opt.zero_grad()
        loss.backward()
        opt.step()
    buf = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = build_optimizer(model, phase, global_batch=16)
    sched2 = build_lr_schedule(opt2, phase, updates_per_epoch=2)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    sched.step_update(3)
    sched2.step_update(3)
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    assert [g["lookahead_step"] for g in opt2.param_groups] == [3] * len(opt2.param_groups)
    first, second = opt.state_dict()["state"], opt2.state_dict()["state"]  # the base AdamW's moments
    assert first.keys() == second.keys() and len(first) > 0
    assert all(torch.equal(first[k]["exp_avg"], second[k]["exp_avg"]) for k in first)
