"""ObjMAE model: shapes, the loss on known inputs, padding semantics, timm compatibility."""
from __future__ import annotations

import math

import pytest
import timm
import torch

from objmae_ray.config import ModelConfig
from objmae_ray.errors import ConfigError
from objmae_ray.method.model import (PRESETS, ObjMAE, create_objmae, create_vit_classifier, objmae_from_config,
                                    sincos_pos_embed, timm_vit_name)


def _patch_pixels(imgs: torch.Tensor, n: int, p: int) -> torch.Tensor:
    """Pixels of patch n (row-major grid) cut straight from the image: [B, p*p*3] in (row, col, channel) order."""
    g = imgs.shape[-1] // p
    r, c = divmod(n, g)
    return imgs[:, :, r * p:(r + 1) * p, c * p:(c + 1) * p].permute(0, 2, 3, 1).reshape(imgs.shape[0], -1)


def _micro(img_size=32, patch_size=8, norm_pix_loss=False, seed=0) -> ObjMAE:
    torch.manual_seed(seed)
    return create_objmae("micro", img_size=img_size, patch_size=patch_size, norm_pix_loss=norm_pix_loss).eval()


def _zero_head(model: ObjMAE) -> None:
    torch.nn.init.zeros_(model.decoder_pred.weight)
    torch.nn.init.zeros_(model.decoder_pred.bias)


@pytest.mark.parametrize("img_size,patch_size", [(32, 8), (48, 8), (64, 8), (32, 16), (48, 16), (64, 16)])
def test_shapes_and_patchify(img_size, patch_size):
    model = _micro(img_size, patch_size)
    g = img_size // patch_size
    n = g * g
    assert model.num_patches == n and model.patch_size == patch_size
    imgs = torch.randn(3, 3, img_size, img_size)
    patches = model.patchify(imgs)
    assert patches.shape == (3, n, patch_size * patch_size * 3)
    for k in (0, g - 1, g, n - 1):  # corners and first patch of row 2: row-major order
        assert torch.equal(patches[:, k], _patch_pixels(imgs, k, patch_size))
    assert torch.equal(model.unpatchify(patches), imgs)

    l_src, l_tgt = max(1, n // 4), max(1, n // 2)
    perm = torch.stack([torch.randperm(n) for _ in range(3)])
    loss, pred = model(imgs, perm[:, :l_src], perm[:, l_src:l_src + l_tgt])
    assert pred.shape == (3, l_tgt, patch_size * patch_size * 3)
    assert loss.shape == () and torch.isfinite(loss)
    assert model.forward_encoder(imgs, perm[:, :l_src]).shape == (3, 1 + l_src, PRESETS["micro"]["embed_dim"])


def test_gathered_patch_embedding_equals_timm_conv():
    model = _micro(48, 8)
    imgs = torch.randn(2, 3, 48, 48)
    torch.testing.assert_close(model.embed_patches(model.patchify(imgs)), model.patch_embed(imgs))


def test_loss_with_zero_head_is_mean_squared_target_pixels_over_valid_slots():
    model = _micro(32, 8)
    _zero_head(model)
    imgs = torch.randn(2, 3, 32, 32)
    src_idx = torch.tensor([[0, 1, 2], [5, 6, 7]])
    tgt_idx = torch.tensor([[3, 4, 9, 0], [8, 10, 11, 0]])
    tgt_valid = torch.tensor([[True, True, True, False], [True, True, False, False]])
    loss, pred = model(imgs, src_idx, tgt_idx, tgt_valid=tgt_valid)
    assert torch.count_nonzero(pred) == 0
    by_hand = [(_patch_pixels(imgs[b:b + 1], int(n), 8) ** 2).mean()
               for b in range(2) for n, v in zip(tgt_idx[b], tgt_valid[b]) if v]
    assert len(by_hand) == 5
    torch.testing.assert_close(loss, torch.stack(by_hand).mean())


def test_loss_with_known_prediction_head_bias():
    """pred = bias c for every pixel -> loss = mean over valid patches of mean((x - c)^2)."""
    model = _micro(32, 16)
    _zero_head(model)
    bias = torch.linspace(-1, 1, 16 * 16 * 3)
    model.decoder_pred.bias.data.copy_(bias)
    imgs = torch.rand(1, 3, 32, 32)
    loss, _ = model(imgs, torch.tensor([[0]]), torch.tensor([[3, 1]]))
    by_hand = torch.stack([((_patch_pixels(imgs, n, 16)[0] - bias) ** 2).mean() for n in (3, 1)]).mean()
    torch.testing.assert_close(loss, by_hand)


def test_zero_padded_target_slots_do_not_change_loss():
    model = _micro(32, 8)
    imgs = torch.randn(1, 3, 32, 32)
    src_idx = torch.tensor([[0, 1, 2, 3]])
    tgt_idx = torch.tensor([[4, 5, 6, 7]])
    tgt_valid = torch.tensor([[True, True, False, False]])  # patches 6 and 7 sit under padded slots
    loss, _ = model(imgs, src_idx, tgt_idx, tgt_valid=tgt_valid)

    changed = imgs.clone()
    changed[..., 8:16, 16:32] += 5.0  # patches 6 and 7 (row 1, cols 2-3)
    loss_invalid_changed, _ = model(changed, src_idx, tgt_idx, tgt_valid=tgt_valid)
    assert torch.equal(loss, loss_invalid_changed)

    changed = imgs.clone()
    changed[..., 8:16, 0:8] += 5.0  # patch 4: a valid target
    loss_valid_changed, _ = model(changed, src_idx, tgt_idx, tgt_valid=tgt_valid)
    assert abs(loss_valid_changed.item() - loss.item()) > 1e-3


def test_no_valid_target_gives_zero_loss_not_nan():
    model = _micro(32, 8)
    imgs = torch.randn(2, 3, 32, 32)
    idx = torch.tensor([[0, 1], [2, 3]])
    loss, _ = model(imgs, idx, idx + 4, tgt_valid=torch.zeros(2, 2, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_padded_source_slot_carries_no_pixels_and_no_position():
    model = _micro(32, 8)
    imgs = torch.randn(1, 3, 32, 32)
    src_idx = torch.tensor([[0, 1, 2, 12]])
    src_valid = torch.tensor([[True, True, True, False]])  # slot 3 (patch 12) is zero padding
    tgt_idx = torch.tensor([[4, 5]])
    _, pred = model(imgs, src_idx, tgt_idx, src_valid=src_valid)

    changed = imgs.clone()
    changed[..., 24:32, 0:8] = 7.0  # pixels of patch 12
    _, pred_pixels_changed = model(changed, src_idx, tgt_idx, src_valid=src_valid)
    assert torch.equal(pred, pred_pixels_changed)

    moved = src_idx.clone()
    moved[0, 3] = 15  # the padded slot "points" elsewhere: its position must not matter either
    _, pred_moved = model(imgs, moved, tgt_idx, src_valid=src_valid)
    assert torch.equal(pred, pred_moved)

    _, pred_as_valid = model(changed, src_idx, tgt_idx)  # a valid source slot does see the pixels
    assert not torch.allclose(pred, pred_as_valid, atol=1e-4)


def test_padded_target_slot_carries_no_position():
    """Moving a padded target slot's index changes nothing: not its own prediction (a mask token with no
    position), not the other slots' predictions (it is attended to), not the loss (weight 0)."""
    model = _micro(32, 8)
    imgs = torch.randn(2, 3, 32, 32)
    src_idx = torch.tensor([[0, 1, 2, 3], [8, 9, 10, 11]])
    src_valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    tgt_idx = torch.tensor([[4, 5, 6], [12, 13, 14]])
    tgt_valid = torch.tensor([[True, False, True], [True, True, False]])
    loss, pred = model(imgs, src_idx, tgt_idx, src_valid, tgt_valid)
    for b, slot in ((0, 1), (1, 2)):  # each image's padded target slot "points" at another patch
        for n in (0, 7, 15):
            moved = tgt_idx.clone()
            moved[b, slot] = n
            loss_moved, pred_moved = model(imgs, src_idx, moved, src_valid, tgt_valid)
            assert torch.equal(pred_moved, pred) and torch.equal(loss_moved, loss), (b, slot, n)
    # control: moving a valid slot's index does change the predictions
    moved = tgt_idx.clone()
    moved[0, 0] = 15
    _, pred_valid_moved = model(imgs, src_idx, moved, src_valid, tgt_valid)
    assert not torch.allclose(pred_valid_moved[0], pred[0], atol=1e-4)
    # the same slot marked valid does take the position of its index
    _, pred_as_valid = model(imgs, src_idx, tgt_idx, src_valid, torch.ones_like(tgt_valid))
    assert not torch.allclose(pred_as_valid[0, 1], pred[0, 1], atol=1e-4)


def test_loss_on_a_tiny_batch_by_hand():
    """Constant patches against a constant prediction: per-patch MSE (c - q)**2, averaged over the valid
    target slots of the whole batch (not per image first)."""
    model = _micro(16, 8)  # 2 x 2 patches of 8 x 8 x 3 pixels
    imgs = torch.zeros(2, 3, 16, 16)
    imgs[0, :, :8, :8], imgs[0, :, :8, 8:], imgs[0, :, 8:, :8], imgs[0, :, 8:, 8:] = 1.0, 2.0, 3.0, 4.0
    imgs[1] = 5.0
    pred = torch.full((2, 3, 192), 1.0)  # predicts 1 everywhere
    tgt_idx = torch.tensor([[1, 2, 3], [0, 3, 1]])
    tgt_valid = torch.tensor([[True, True, True], [True, False, False]])
    # valid slots: image 0 patches 1, 2, 3 -> (2-1)^2, (3-1)^2, (4-1)^2 = 1, 4, 9; image 1 patch 0 -> 16
    loss = model.forward_loss(imgs, pred, tgt_idx, tgt_valid)
    assert loss.item() == pytest.approx((1 + 4 + 9 + 16) / 4)  # 7.5; per image first would be 10.33
    assert model.forward_loss(imgs, pred, tgt_idx).item() == pytest.approx((1 + 4 + 9 + 16 + 16 + 16) / 6)
    assert model.forward_loss(imgs, pred, tgt_idx, torch.zeros_like(tgt_valid)).item() == 0.0
    half = pred.clone()
    half[0, 2, :96] = 4.0  # half the pixels of image 0's patch 3 predicted right: (0 + 9) / 2
    assert model.forward_loss(imgs, half, tgt_idx, tgt_valid).item() == pytest.approx((1 + 4 + 4.5 + 16) / 4)


def test_norm_pix_loss_matches_hand_normalised_targets_and_ignores_patch_affine_changes():
    model = _micro(32, 8, norm_pix_loss=True)
    _zero_head(model)
    imgs = torch.randn(1, 3, 32, 32)
    src_idx, tgt_idx = torch.tensor([[0, 1]]), torch.tensor([[2, 9, 15]])
    loss, _ = model(imgs, src_idx, tgt_idx)
    by_hand = []
    for n in (2, 9, 15):
        x = _patch_pixels(imgs, n, 8)[0]
        by_hand.append((((x - x.mean()) / (x.var() + 1e-6).sqrt()) ** 2).mean())
    torch.testing.assert_close(loss, torch.stack(by_hand).mean())

    # per-patch normalised targets: scaling + shifting the target pixels leaves the loss unchanged
    loss_affine, _ = model(imgs * 3.0 + 5.0, src_idx, tgt_idx)
    torch.testing.assert_close(loss_affine, loss, atol=1e-5, rtol=1e-5)
    plain = _micro(32, 8, norm_pix_loss=False)
    _zero_head(plain)
    assert plain(imgs * 3.0 + 5.0, src_idx, tgt_idx)[0] > 10 * plain(imgs, src_idx, tgt_idx)[0]


def test_gradient_reaches_encoder_and_position_embeddings_stay_fixed():
    model = _micro(32, 8).train()
    imgs = torch.randn(2, 3, 32, 32)
    idx = torch.stack([torch.randperm(16) for _ in range(2)])
    loss, _ = model(imgs, idx[:, :4], idx[:, 4:8])
    loss.backward()
    for name in ("patch_embed.proj.weight", "cls_token", "blocks.0.attn.qkv.weight", "norm.weight",
                 "decoder_embed.weight", "mask_token"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert not model.pos_embed.requires_grad and model.pos_embed.grad is None
    assert not model.decoder_pos_embed.requires_grad


def test_prediction_rows_follow_tgt_idx_order():
    model = _micro(32, 8)
    imgs = torch.randn(2, 3, 32, 32)
    src_idx = torch.tensor([[0, 1, 2], [3, 4, 5]])
    tgt_idx = torch.tensor([[6, 7, 8, 9, 10], [11, 12, 13, 14, 15]])
    loss, pred = model(imgs, src_idx, tgt_idx)
    perm = torch.tensor([3, 0, 4, 2, 1])
    loss_perm, pred_perm = model(imgs, src_idx, tgt_idx[:, perm])
    torch.testing.assert_close(pred_perm, pred[:, perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_perm, loss)
    # and the rows differ by position (the decoder does use the target positions)
    assert not torch.allclose(pred[:, 0], pred[:, 1], atol=1e-3)


@pytest.mark.parametrize("preset,img_size,patch_size", [("micro", 32, 8), ("micro", 48, 16), ("vit_small", 224, 16)])
def test_encoder_state_loads_into_timm_and_gives_identical_features(preset, img_size, patch_size):
    torch.manual_seed(0)
    model = create_objmae(preset, img_size=img_size, patch_size=patch_size).eval()
    dims = {k: PRESETS[preset][k] for k in ("embed_dim", "depth", "num_heads")}
    vit = timm.create_model(timm_vit_name(preset, patch_size, img_size), pretrained=False,
                            img_size=img_size, patch_size=patch_size, **dims).eval()
    missing, unexpected = vit.load_state_dict(model.encoder_state_dict(), strict=False)
    assert sorted(missing) == ["head.bias", "head.weight"] and unexpected == []

    imgs = torch.randn(1, 3, img_size, img_size)
    all_patches = torch.arange(model.num_patches).unsqueeze(0)
    with torch.no_grad():
        ours = model.forward_encoder(imgs, all_patches)
        theirs = vit.forward_features(imgs)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_vit_classifier_gets_encoder_weights_and_only_a_new_head():
    torch.manual_seed(0)
    model = create_objmae("micro", img_size=32, patch_size=8).eval()
    state = model.encoder_state_dict()
    clf = create_vit_classifier("micro", img_size=32, patch_size=8, num_classes=7, encoder_state=state,
                                global_pool="token").eval()
    assert clf.head.out_features == 7
    assert torch.equal(clf.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(clf.forward_features(imgs),
                                   model.forward_encoder(imgs, torch.arange(16).expand(2, -1)), atol=1e-4, rtol=1e-4)
        assert clf(imgs).shape == (2, 7)

    # global average pooling (MAE fine-tuning): fc_norm is new, the final norm is dropped by timm
    avg = create_vit_classifier("micro", img_size=32, patch_size=8, num_classes=7, encoder_state=state)
    assert isinstance(avg.norm, torch.nn.Identity) and torch.equal(avg.patch_embed.proj.weight,
                                                                   state["patch_embed.proj.weight"])


def test_vit_small_parameter_counts_match_table_1():
    model = create_objmae("vit_small")
    encoder = sum(p.numel() for k, p in model.named_parameters() if k in dict(model.encoder_state_dict()))
    decoder = sum(p.numel() for k, p in model.named_parameters() if k.startswith("decoder") or k == "mask_token")
    assert 21.4e6 < encoder < 21.9e6  # Table 1: 21M (timm ViT-S without head: 21.67M)
    assert 1.9e6 < decoder < 2.2e6  # 4 x 192 x 3 heads (Table 1's "19M" cannot be this width/depth)
    assert len(model.blocks) == 12 and model.blocks[0].attn.num_heads == 6 and model.norm.normalized_shape == (384,)
    assert len(model.decoder_blocks) == 4 and model.decoder_blocks[0].attn.num_heads == 3


def test_timm_names():
    assert timm_vit_name("vit_small", 16, 224) == "vit_small_patch16_224"
    assert timm_vit_name("vit_small", 8, 224) == "vit_small_patch8_224"
    assert timm_vit_name("vit_small", 16, 384) == "vit_small_patch16_384"
    assert timm_vit_name("vit_tiny", 16, 96) == "vit_tiny_patch16_224"
    assert timm_vit_name("micro", 8, 32) == "vit_tiny_patch16_224"


def test_bad_input_gives_one_line_config_errors():
    with pytest.raises(ConfigError, match=r"^model\.preset: unknown preset 'vit_huge'"):
        create_objmae("vit_huge")
    with pytest.raises(ConfigError, match=r"^model\.patch_size: 16 does not divide model\.img_size 40$"):
        create_objmae("micro", img_size=40, patch_size=16)
    state = create_objmae("micro", img_size=32, patch_size=8).encoder_state_dict()
    with pytest.raises(ConfigError, match=r"^encoder_state: does not fit micro p8 64px") as err:
        create_vit_classifier("micro", img_size=64, patch_size=8, num_classes=3, encoder_state=state)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="missing"):
        create_vit_classifier("micro", img_size=32, patch_size=8, num_classes=3,
                              encoder_state={k: v for k, v in state.items() if not k.startswith("blocks.1.")})


def test_speedup_bench_runs_and_flop_ratio_grows_as_alpha_shrinks(capsys):
    """bench/speedup.py end to end on the micro preset (numbers are reported, not asserted)."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "speedup.py"
    spec = importlib.util.spec_from_file_location("bench_speedup", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--preset", "micro", "--img-size", "32", "--patch-size", "8", "--batch-size", "4",
                         "--steps", "1", "--warmup", "0"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(result))
    rows = result["alphas"]
    assert [r["length"] for r in rows] == [8, 4, 2, 1]  # round(alpha * 16)
    flop_ratios = [r["flop_ratio"] for r in rows]
    assert 1.0 < flop_ratios[0] < flop_ratios[1] < flop_ratios[2] < flop_ratios[3]
    assert set(result["meets_targets"]) == {"judged_on", "speedup_ge_085_flop_ratio", "speedup_ge_paper", "masking_below_3pct"}


def _reference_forward(model: ObjMAE, imgs, src_idx, tgt_idx, src_valid, tgt_valid) -> torch.Tensor:
    """Paper 3.4, one image and one token at a time, from the image's pixels and the model's weights (no
    gathers, no masks as tensors): the encoder sees cls + the source patches (patch pixels -> conv weights
    + the 2-D sin-cos position of the patch; a padded slot is a zero token with no position), the decoder
    sees its projection of them (+ decoder positions) and one mask token per target slot (+ its position,
    none when padded); the last L' outputs, normalised and projected, are the predictions."""
    p, dim = model.patch_size, model.pos_embed.shape[-1]
    pos = sincos_pos_embed(model.grid_size, dim)[0]  # row 0: cls
    dec_pos = sincos_pos_embed(model.grid_size, model.decoder_pos_embed.shape[-1])[0]
    conv = model.patch_embed.proj
    preds = []
    for b in range(imgs.shape[0]):
        tokens = [model.cls_token[0, 0] + pos[0]]
        for n, valid in zip(src_idx[b].tolist(), src_valid[b].tolist()):
            pixels = _patch_pixels(imgs[b:b + 1], n, p)[0].view(p, p, 3).permute(2, 0, 1)  # [3, p, p]
            if valid:
                tokens.append((conv.weight * pixels).sum((1, 2, 3)) + conv.bias + pos[1 + n])
            else:
                tokens.append(conv.bias.clone())  # zero pixels, no position
        latent = model.norm(model.blocks(torch.stack(tokens)[None]))[0]
        dec = [model.decoder_embed(latent[0]) + dec_pos[0]]
        for t, (n, valid) in enumerate(zip(src_idx[b].tolist(), src_valid[b].tolist()), start=1):
            dec.append(model.decoder_embed(latent[t]) + (dec_pos[1 + n] if valid else 0))
        for n, valid in zip(tgt_idx[b].tolist(), tgt_valid[b].tolist()):
            dec.append(model.mask_token[0, 0] + (dec_pos[1 + n] if valid else 0))
        out = model.decoder_blocks(torch.stack(dec)[None])[0, -tgt_idx.shape[1]:]
        preds.append(model.decoder_pred(model.decoder_norm(out)))
    return torch.stack(preds)


def test_forward_equals_a_token_by_token_reference():
    model = _micro(32, 8, seed=3)
    torch.nn.init.normal_(model.patch_embed.proj.bias, std=0.5)  # a zero-padded source token is then not zero
    imgs = torch.randn(2, 3, 32, 32)
    src_idx = torch.tensor([[0, 5, 9, 9], [15, 3, 7, 1]])
    src_valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    tgt_idx = torch.tensor([[2, 14, 6], [4, 4, 12]])
    tgt_valid = torch.tensor([[True, True, False], [True, True, True]])
    with torch.no_grad():
        _, pred = model(imgs, src_idx, tgt_idx, src_valid, tgt_valid)
        expected = _reference_forward(model, imgs, src_idx, tgt_idx, src_valid, tgt_valid)
        _, pred_all_valid = model(imgs, src_idx, tgt_idx)
        expected_all_valid = _reference_forward(model, imgs, src_idx, tgt_idx, torch.ones_like(src_valid),
                                                torch.ones_like(tgt_valid))
    torch.testing.assert_close(pred, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pred_all_valid, expected_all_valid, rtol=1e-4, atol=1e-5)


def test_norm_pix_loss_of_a_flat_patch_is_finite():
    """A patch of one colour has variance 0: its normalised target is 0 (the 1e-6 keeps the division finite)."""
    model = _micro(32, 8, norm_pix_loss=True)
    _zero_head(model)
    imgs = torch.randn(1, 3, 32, 32)
    imgs[..., :8, :8] = 0.7  # patch 0
    loss, _ = model(imgs, torch.tensor([[5]]), torch.tensor([[0]]))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # variance 1e-6 (sample variance, as torch.var): target (x - mean) / sqrt(1e-6 + 1e-6) has sample variance
    # 1/2, so the loss against 0 is its mean square, (191 / 192) / 2
    x = _patch_pixels(imgs, 3, 8)[0]
    imgs[..., :8, 24:32] = (0.5 + 1e-3 * (x - x.mean()) / x.std()).view(8, 8, 3).permute(2, 0, 1)
    loss, _ = model(imgs, torch.tensor([[5]]), torch.tensor([[3]]))
    assert loss.item() == pytest.approx(191 / 192 / 2, rel=1e-3)


def test_one_valid_target_slot_is_its_own_loss():
    model = _micro(16, 8)
    imgs = torch.zeros(1, 3, 16, 16)
    imgs[..., 8:, 8:] = 3.0  # patch 3
    pred = torch.full((1, 2, 192), 1.0)
    loss = model.forward_loss(imgs, pred, torch.tensor([[3, 0]]), torch.tensor([[True, False]]))
    assert loss.item() == 4.0  # (3 - 1)**2, not halved


def test_patchify_refuses_the_wrong_size_in_one_line():
    with pytest.raises(ValueError, match=r"^imgs: expected \[B, 3, 32, 32\], got \[2, 3, 16, 16\]$"):
        _micro(32, 8).patchify(torch.zeros(2, 3, 16, 16))


def test_objmae_from_config_keeps_every_model_field():
    model = objmae_from_config(ModelConfig(preset="micro", img_size=48, patch_size=16, norm_pix_loss=True))
    assert (model.img_size, model.patch_size, model.norm_pix_loss) == (48, 16, True)
    assert len(model.blocks) == PRESETS["micro"]["depth"] and model.norm.normalized_shape == (64,)
    assert objmae_from_config(ModelConfig(preset="micro", img_size=32, patch_size=8)).norm_pix_loss is False


def test_classifier_asks_timm_for_the_named_model_and_its_weights(monkeypatch):
    """Which registered timm model (and whether its hub weights) the classifier asks for; timm's factory is
    replaced, so nothing is downloaded."""
    calls = []
    monkeypatch.setattr(timm, "create_model", lambda name, **kwargs: calls.append((name, kwargs)) or "vit")
    assert create_vit_classifier("vit_small", img_size=384, patch_size=16, num_classes=10, pretrained=True) == "vit"
    create_vit_classifier("vit_small", img_size=224, patch_size=8, num_classes=10, global_pool="token", drop_rate=0.1)
    create_vit_classifier("vit_tiny", img_size=96, patch_size=16, num_classes=2, pretrained=True)
    assert calls == [
        ("vit_small_patch16_384", dict(pretrained=True, num_classes=10, img_size=384, patch_size=16, global_pool="avg",
                                       embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0)),
        ("vit_small_patch8_224", dict(pretrained=False, num_classes=10, img_size=224, patch_size=8, global_pool="token",
                                      embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, drop_rate=0.1)),
        ("vit_tiny_patch16_224", dict(pretrained=True, num_classes=2, img_size=96, patch_size=16, global_pool="avg",
                                      embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0)),
    ]
    with pytest.raises(ConfigError, match=r"^model\.preset: 'micro' has no pretrained timm weights$"):
        create_vit_classifier("micro", img_size=32, patch_size=8, num_classes=3, pretrained=True)


def test_encoder_state_that_does_not_fit_names_the_reason():
    state = create_objmae("micro", img_size=32, patch_size=8).encoder_state_dict()
    with pytest.raises(ConfigError) as err:  # torch lists two mismatches (pos_embed, then patch_embed): the last
        create_vit_classifier("micro", img_size=32, patch_size=16, num_classes=3, encoder_state=state)
    assert str(err.value) == (
        "encoder_state: does not fit micro p16 32px (size mismatch for patch_embed.proj.weight: copying a param "
        "with shape torch.Size([64, 3, 8, 8]) from checkpoint, the shape in current model is "
        "torch.Size([64, 3, 16, 16]).)")
    bad = {k: v for k, v in state.items() if not k.startswith("blocks.1.")}  # 12 missing
    bad.update({f"extra.{i}": torch.zeros(1) for i in range(6)})  # 6 unexpected
    with pytest.raises(ConfigError) as err:
        create_vit_classifier("micro", img_size=32, patch_size=8, num_classes=3, encoder_state=bad)
    assert str(err.value) == (  # the first four of each, sorted
        "encoder_state: does not fit micro p8 32px (missing ['blocks.1.attn.proj.bias', 'blocks.1.attn.proj.weight', "
        "'blocks.1.attn.qkv.bias', 'blocks.1.attn.qkv.weight'], unexpected ['extra.0', 'extra.1', 'extra.2', "
        "'extra.3'])")


def test_a_preset_family_without_timm_models_is_refused(monkeypatch):
    monkeypatch.setitem(PRESETS, "odd", {**PRESETS["micro"], "timm_arch": "vit_odd"})
    with pytest.raises(ConfigError, match=r"^model\.preset: no timm model registered for 'odd'$"):
        timm_vit_name("odd", 8, 32)


def test_defaults_are_table_1_vit_small():
    model = ObjMAE()
    assert (model.img_size, model.patch_size, model.norm_pix_loss, model.num_patches) == (224, 16, False, 196)
    assert (len(model.blocks), model.blocks[0].attn.num_heads, model.cls_token.shape[-1]) == (12, 6, 384)
    assert (len(model.decoder_blocks), model.decoder_blocks[0].attn.num_heads, model.mask_token.shape) == (4, 3, (1, 1, 192))
    assert model.blocks[0].mlp.fc1.out_features == 4 * 384 and model.decoder_blocks[0].mlp.fc1.out_features == 4 * 192
    made = create_objmae()
    assert (made.img_size, made.patch_size, made.norm_pix_loss, len(made.blocks)) == (224, 16, False, 12)
    # trained decoder parameters by hand (qkv with bias, as MAE / timm's ViT): embed, token, 4 blocks, norm, head
    d, e, p = 192, 384, 16
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    decoder = (e * d + d) + d + 4 * block + 2 * d + (d * p * p * 3 + p * p * 3)
    trained = {k: v for k, v in model.named_parameters() if v.requires_grad}  # not the fixed position embeddings
    assert sum(v.numel() for k, v in trained.items() if k.startswith("decoder") or k == "mask_token") == decoder


def test_layers_follow_the_arguments():
    model = ObjMAE(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                   decoder_depth=2, decoder_num_heads=4, mlp_ratio=2.0)
    assert model.patch_embed.num_patches == 16 and model.patch_embed.proj.kernel_size == (8, 8)
    assert model.blocks[0].mlp.fc1.out_features == 64 and model.decoder_blocks[1].mlp.fc1.out_features == 32
    assert model.blocks[0].attn.qkv.bias is not None and model.decoder_blocks[0].attn.qkv.bias is not None
    assert model.norm.eps == 1e-6 and model.decoder_norm.eps == 1e-6  # timm ViT's LayerNorm eps


def test_initialisation_is_mae():
    """Linear layers xavier-uniform with zero bias, the patch projection xavier-uniform as a [D, 3 p p] matrix,
    tokens N(0, 0.02), LayerNorms (1, 0), fixed sin-cos position embeddings."""
    torch.manual_seed(0)
    model = create_objmae("vit_small", img_size=32, patch_size=16)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            bound = math.sqrt(6 / (m.in_features + m.out_features))
            assert 0.9 * bound < m.weight.abs().max() <= bound and torch.count_nonzero(m.bias) == 0, name
        elif isinstance(m, torch.nn.LayerNorm):
            assert torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0, name
    w = model.patch_embed.proj.weight  # [384, 3, 16, 16]
    bound = math.sqrt(6 / (3 * 16 * 16 + 384))
    assert 0.9 * bound < w.abs().max() <= bound
    assert 0.015 < model.cls_token.std() < 0.025 and 0.015 < model.mask_token.std() < 0.025
    assert torch.equal(model.pos_embed, sincos_pos_embed(2, 384)) and not model.pos_embed[0, 0].any()


def test_sizes_that_do_not_fit_are_refused_in_one_line():
    for img, patch in ((32, 0), (0, 8), (-8, 8), (32, -8), (40, 16)):
        with pytest.raises(ConfigError, match=rf"^model\.patch_size: {patch} does not divide model\.img_size {img}$"):
            create_objmae("micro", img_size=img, patch_size=patch)
    assert create_objmae("micro", img_size=2, patch_size=1).num_patches == 4  # 1-pixel patches are fine
    assert create_objmae("micro", img_size=1, patch_size=1).num_patches == 1
    with pytest.raises(ConfigError, match=r"^model\.preset: unknown preset 'vit_huge' \(choose from vit_small, vit_tiny, "
                                          r"micro\)$"):
        create_objmae("vit_huge")
    with pytest.raises(ConfigError, match=r"^model\.preset: width 6 must be divisible by 4 for 2-D sin-cos position "
                                          r"embeddings$"):
        sincos_pos_embed(4, 6)
