"""ObjMAE model: shapes, the loss on known inputs, padding semantics, timm compatibility."""
from __future__ import annotations

import pytest
import timm
import torch

from objmae_ray.errors import ConfigError
from objmae_ray.method.model import PRESETS, ObjMAE, create_objmae, create_vit_classifier, timm_vit_name


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
