"""Figures from real model outputs (results/figures.py) and the whole `objmae-report` on a run directory
whose best trial has a real checkpoint: a micro ObjMAE trained here for 100 steps on the synthetic scenes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO
from torch.utils.data import DataLoader

from objmae_ray.cli import report_main as main
from objmae_ray.config import SweepSpec, TrialConfig
from objmae_ray.data import build_pretrain_dataset, coco_paths
from objmae_ray.data.stats import object_ratio_stats
from objmae_ray.data.transforms import denormalize
from objmae_ray.method.model import create_objmae
from objmae_ray.results import figures
from objmae_ray.results.plots import overlapping_texts
from objmae_ray.sweep.rundir import save_spec
from objmae_ray.sweep.space import TRIAL_INDEX
from objmae_ray.train.checkpoint import save_checkpoint
from objmae_ray.train.pretrain import sample_batch_masks

CFG = {"model": {"preset": "micro", "img_size": 32, "patch_size": 8},
       "masking": {"alpha": 0.25, "selection": "object", "padding": "zero"},
       "pretrain": {"epochs": 1, "warmup_epochs": 0, "batch_size": 8, "lr": 1e-3,
                    "data": {"num_images": 64, "loader_workers": 0}},
       "transfer": [{"epochs": 1, "warmup_epochs": 0, "batch_size": 8, "lr": 1e-3,
                     "data": {"num_images": 64, "loader_workers": 0}}]}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, TrialConfig]:
    """A micro ObjMAE trained for 100 steps (batch 8, object selection) on the synthetic train split."""
    cfg = TrialConfig.model_validate(CFG)
    dataset = build_pretrain_dataset(cfg.pretrain.data, img_size=32, patch_size=8, split="train")
    torch.manual_seed(0)
    model = create_objmae("micro", img_size=32, patch_size=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(dataset, batch_size=8, shuffle=True, drop_last=True, generator=generator)
    step = 0
    while step < 100:
        for batch in loader:
            masks = sample_batch_masks(batch, num_patches=16, masking=cfg.masking, generator=generator,
                                       device=torch.device("cpu"))
            loss, _ = model(batch["image"], masks.src_idx, masks.tgt_idx, masks.src_valid, masks.tgt_valid)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == 100:
                break
    return model.eval(), cfg


# ---- reconstruction (Fig. 8) -----------------------------------------------------------------------
def test_trained_reconstruction_beats_zero_baseline(trained, tmp_path):
    model, cfg = trained
    batch, masks = figures.validation_batch(cfg, 8)
    rec = figures.reconstruct(model, batch["image"], masks)
    assert rec.error.shape == rec.zero_error.shape == (8,)
    assert rec.error.mean() < 0.8 * rec.zero_error.mean(), (rec.error, rec.zero_error)
    untrained = figures.reconstruct(create_objmae("micro", img_size=32, patch_size=8), batch["image"], masks)
    assert rec.error.mean() < untrained.error.mean()  # the learning shows, not just the baseline
    # the error is the model's own loss on these masks (per-image mean over valid target slots)
    loss, _ = model(batch["image"], masks.src_idx, masks.tgt_idx, masks.src_valid, masks.tgt_valid)
    slots = masks.tgt_valid.sum(1).float()
    assert torch.isclose((rec.error * slots).sum() / slots.sum(), loss.detach(), rtol=1e-5)
    figures.plot_reconstructions(rec, tmp_path / "rec.png")
    assert (tmp_path / "rec.png").read_bytes()[:8] == PNG


def test_reconstruction_panels_show_exactly_the_chosen_patches(trained):
    model, cfg = trained
    batch, masks = figures.validation_batch(cfg, 3, seed=1)
    imgs = batch["image"]
    rec = figures.reconstruct(model, imgs, masks)
    image = torch.stack([denormalize(i) for i in imgs])  # [B, 3, H, W]
    src = figures.patch_set(masks.src_idx, masks.src_valid, 16)
    shade = torch.where(src, 1.0, figures.DARKEN).reshape(-1, 1, 4, 4).repeat_interleave(8, 2).repeat_interleave(8, 3)
    torch.testing.assert_close(rec.source, image * shade)
    # reconstruction: outside the target it is the darkened image; inside, the prediction (not the image)
    tgt = figures.patch_set(masks.tgt_idx, masks.tgt_valid, 16).reshape(-1, 1, 4, 4)
    tgt = tgt.repeat_interleave(8, 2).repeat_interleave(8, 3).expand_as(image)
    torch.testing.assert_close(rec.reconstruction[~tgt], (image * figures.DARKEN)[~tgt])
    assert not torch.allclose(rec.reconstruction[tgt], image[tgt])
    torch.testing.assert_close(rec.target[tgt], image[tgt])


# ---- attention rollout (Fig. 10) -----------------------------------------------------------------
def test_rollout_of_identity_and_uniform_attention():
    eye = torch.eye(5).expand(2, 3, 5, 5)
    torch.testing.assert_close(figures.rollout([eye] * 4), torch.eye(5).expand(2, 5, 5))
    uniform = torch.full((1, 2, 5, 5), 1 / 5)
    # ((U + I) / 2)^L = I / 2^L + (1 - 2^-L) U, since U @ U = U
    expected = torch.eye(5) / 8 + (1 - 1 / 8) * torch.full((5, 5), 1 / 5)
    torch.testing.assert_close(figures.rollout([uniform] * 3)[0], expected)


def test_hooked_attention_is_the_attention_timm_computes(trained):
    """softmax(q k^T scale) from the hook, applied to v and projected, gives the block's attention output."""
    model, cfg = trained
    imgs = torch.randn(2, 3, 32, 32)
    seen = []
    handle = model.blocks[1].attn.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    attentions = figures.encoder_attentions(model, imgs)
    handle.remove()
    (x, output), attn = seen[0], model.blocks[1].attn
    assert len(attentions) == 2 and attentions[1].shape == (2, 2, 17, 17)
    v = attn.qkv(x).reshape(2, 17, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)[2]
    torch.testing.assert_close(attn.proj((attentions[1] @ v).transpose(1, 2).reshape(2, 17, -1)), output,
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(attentions[1].sum(-1), torch.ones(2, 2, 17))


def test_rollout_map_rows_sum_to_one_and_uniform_model(trained):
    model, cfg = trained
    batch, masks = figures.validation_batch(cfg, 4)
    imgs = batch["image"]
    rolled = figures.rollout(figures.encoder_attentions(model, imgs))
    torch.testing.assert_close(rolled.sum(-1), torch.ones(4, 17))
    heat = figures.rollout_map(model, imgs)
    assert heat.shape == (4, 4, 4)
    torch.testing.assert_close(heat.flatten(1), rolled[:, 0, 1:])
    # only the region fed: zero outside it
    region = figures.selected_region(masks, 16)
    inside = figures.rollout_map(model, imgs, *figures.region_slots(region))
    assert (inside.flatten(1)[~region] == 0).all() and (inside.flatten(1)[region] > 0).all()
    # a model whose q, k are zero attends uniformly: rollout = I / 4 + 3/4 U over T = 17 tokens (2 blocks)
    uniform = create_objmae("micro", img_size=32, patch_size=8)
    with torch.no_grad():
        for block in uniform.blocks:
            block.attn.qkv.weight[:128].zero_()
            block.attn.qkv.bias[:128].zero_()
    torch.testing.assert_close(figures.rollout_map(uniform, imgs), torch.full((4, 4, 4), 0.75 / 17))


# ---- object ratios (Fig. 5) and the whole report -------------------------------------------------
def fig5(cfg: TrialConfig, png) -> dict:
    data = cfg.pretrain.data
    return object_ratio_stats(data, data.train_split, img_size=cfg.model.img_size, patch_size=cfg.model.patch_size,
                              min_ratio=cfg.masking.min_ratio, png=png)


def test_object_ratio_histogram_counts_every_object(tmp_path):
    cfg = TrialConfig.model_validate(CFG)
    stats = fig5(cfg, tmp_path / "ratios.png")
    _, ann_file = coco_paths(cfg.pretrain.data, "train", img_size=32)
    coco = COCO(str(ann_file))
    objects = [a for a in coco.dataset["annotations"] if not a.get("iscrowd")]
    assert stats["object_ratio"]["count"] == len(objects) > 64
    assert (tmp_path / "ratios.png").read_bytes()[:8] == PNG


def saved_figures(monkeypatch) -> list[tuple[str, object, float | None]]:
    """Records (file name, figure, dpi) of every matplotlib figure saved while the test runs."""
    from matplotlib.figure import Figure

    saved, original = [], Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        saved.append((Path(str(fname)).name, self, kwargs.get("dpi")))
        return original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def test_objmae_report_on_a_run_with_checkpoints(trained, tmp_path, monkeypatch):
    model, cfg = trained
    saved = saved_figures(monkeypatch)
    spec = SweepSpec.model_validate({"study": "fig", "objectives": [{"metric": "top1", "mode": "max"}],
                                     "sampler": {"kind": "grid"}, "repeats": 2,
                                     "base": CFG, "search_space": {"padding": {"choices": ["zero", "random"]}}})
    run = tmp_path / "runs" / "fig-1"
    save_spec(spec, str(run))
    untrained = create_objmae("micro", img_size=32, patch_size=8)
    for trial_id, padding, top1, speed, weights in (("a", "zero", 61.0, 500.0, model),
                                                    ("b", "random", 40.0, 700.0, untrained),
                                                    ("c", "random", 30.0, 400.0, untrained)):
        trial_cfg = cfg.model_copy(update={"masking": cfg.masking.model_copy(update={"padding": padding})})
        checkpoint = run / f"train-{trial_id}" / "checkpoint_p1_finetune_e0000"
        reports = [{"phase": "pretrain", "phase_index": 0, "epoch": 0, "recon_loss": 0.9, "top1": 0.0, "top5": 0.0,
                    "speedup_est": 3.0, "images_per_s": speed, "done": False},
                   {"phase": "finetune", "phase_index": 1, "epoch": 0, "recon_loss": 0.9, "top1": top1,
                    "top5": 100.0, "speedup_est": 3.0, "done": True}]
        save_checkpoint(checkpoint, objmae=weights, train_state={}, config=trial_cfg, metrics=reports[-1])
        trial_dir = run / f"trial_{trial_id}"
        trial_dir.mkdir()
        (trial_dir / "params.json").write_text(json.dumps({**trial_cfg.model_dump(), "masking.padding": padding,
                                                           TRIAL_INDEX: int(trial_id == "c")}))
        (trial_dir / "result.json").write_text("\n".join(
            json.dumps({**r, "trial_id": trial_id, "checkpoint_path": str(checkpoint)}) for r in reports) + "\n")

    out = tmp_path / "out"
    assert main([str(run), "--out", str(out), "--images", "3"]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"table8_padding.md", "table8_padding.csv", "pareto.png", "measured_tradeoff.png",
                     "reconstructions.png", "rollout.png", "object_probe.png", "object_ratio.png", "summary.json",
                     "index.html"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["measured_pareto_front"] == ["padding=zero", "padding=random"]  # random: mean of 700 and 400
    assert summary["skipped"] == {"search importance and parallel coordinates":  # a run without optuna.db
                                  "no stored Optuna study (run made before studies were stored)"}
    assert summary["best_trial"]["trial_id"] == "a"  # the trained one, top-1 61
    rec = summary["reconstruction"]
    assert len(rec["mse"]) == 3 and sum(rec["mse"]) < sum(rec["zero_baseline_mse"])
    page = (out / "index.html").read_text()
    [(probe_name, probe)] = summary["object_probe"].items()  # no MAE-selection trial in this run: one model
    assert probe_name.startswith("best (object, trial a)") and len(probe["mse"]) == 3
    assert page.count('src="data:image/png;base64,') == 6 and "<td>Random</td><td>2</td><td>35.00 ± 7.07</td>" in page
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched: readable offline
    # every figure readable at its saved size: no title, label or tick label runs into another
    assert sorted(name for name, _, _ in saved) == sorted(n for n in names if n.endswith(".png"))
    assert {name: overlapping_texts(fig, dpi) for name, fig, dpi in saved} == {name: [] for name, _, _ in saved}

    # a checkpoint that is gone: tables and page still written, the reason recorded in one line
    for file in run.glob("train-*/*/objmae.safetensors"):
        file.unlink()
    assert main([str(run), "--out", str(tmp_path / "out2")]) == 0
    skipped = json.loads((tmp_path / "out2" / "summary.json").read_text())["skipped"]
    assert list(skipped) == ["search importance and parallel coordinates", "checkpoint figures"]
    assert "objmae.safetensors: not found" in skipped["checkpoint figures"]
    assert "checkpoint figures skipped" in (tmp_path / "out2" / "index.html").read_text()


def test_figures_on_real_coco_photos(shared_data, tmp_path):
    """COCO-mini (real photos, polygon and RLE masks): Fig. 5 counts every non-crowd object of train2017,
    Fig. 8 / 10 run on its val2017 images with object masks from pycocotools."""
    coco_root = shared_data / "coco-mini"
    cfg = TrialConfig.model_validate({**CFG, "model": {"preset": "micro", "img_size": 64, "patch_size": 8},
                                      "pretrain": {**CFG["pretrain"], "data": {
                                          "kind": "coco", "root": str(coco_root), "train_split": "train2017",
                                          "val_split": "val2017", "loader_workers": 0}}})
    stats = fig5(cfg, tmp_path / "ratios.png")
    annotations = json.loads((coco_root / "annotations" / "instances_train2017.json").read_text())["annotations"]
    assert stats["object_ratio"]["count"] == sum(not a.get("iscrowd") for a in annotations)
    assert stats["object_ratio"]["share_lt_0.1"] > 0.5  # paper Fig. 5: most COCO objects are small
    batch, masks = figures.validation_batch(cfg, 3)
    assert batch["object_patches"].shape[-1] == 64 and not masks.fallback.all()
    model = create_objmae("micro", img_size=64, patch_size=8)
    rec = figures.reconstruct(model, batch["image"], masks)
    assert torch.isfinite(rec.error).all() and rec.reconstruction.shape == (3, 3, 64, 64)
    heat = figures.rollout_map(model, batch["image"])
    assert heat.shape == (3, 8, 8) and (heat > 0).all()


def test_object_probe_hides_exactly_the_largest_eligible_object():
    """Fig. 2 / 7: target = every patch of the largest eligible object, source = every other patch."""
    patches = torch.zeros(2, 3, 16, dtype=torch.bool)
    patches[0, 0, [0, 1, 4, 5]] = True  # image 0: slot 0 (largest) is too small by ratio, slot 1 is eligible
    patches[0, 1, [10, 11, 14]] = True
    patches[1, 0, [2, 3]] = True  # image 1: slot 0 eligible
    ratio = torch.tensor([[0.01, 0.2, 0.0], [0.3, 0.0, 0.0]])
    masks = figures.object_probe_masks({"object_patches": patches, "object_ratio": ratio}, min_ratio=0.05)
    target = [set(masks.tgt_idx[b][masks.tgt_valid[b]].tolist()) for b in range(2)]
    source = [set(masks.src_idx[b][masks.src_valid[b]].tolist()) for b in range(2)]
    assert target == [{10, 11, 14}, {2, 3}]
    assert source == [set(range(16)) - {10, 11, 14}, set(range(16)) - {2, 3}]
    with pytest.raises(Exception, match="no eligible object"):
        figures.object_probe_masks({"object_patches": patches[:, 2:], "object_ratio": ratio[:, 2:]}, min_ratio=0.05)
