"""Pre-trainings stored once and reused (train/reuse.py, train/loop.py), without Ray: the key, bit-identical
transfer results from a reused pre-training, and a missing or corrupt entry pre-trained afresh."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from objmae_ray.config import TrialConfig
from objmae_ray.data import ensure_synthetic
from objmae_ray.train import checkpoint as ckpt
from objmae_ray.train import reuse
from objmae_ray.train.loop import LocalRun, TrialRun
from objmae_ray.train.reuse import REUSE_NOTE, REUSED_FROM, ReusePlan, pretrain_fields, pretrain_key
from trial_helpers import tiny_config

RESULT_KEYS = ("train_loss", "top1", "top5", "val_loss", "lr", "phase", "epoch", "recon_loss", "pretrain_time_s")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic(root, num_images=32, img_size=32, seed=0)
    return str(root)


def with_(cfg: TrialConfig, **changes) -> TrialConfig:
    """cfg with dotted fields changed."""
    body = cfg.model_dump()
    for path, value in changes.items():
        node = body
        *parents, last = path.split("__")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value
    return TrialConfig.model_validate(body)


def test_key_has_what_determines_the_pre_training_and_nothing_else(synthetic_root):
    cfg = tiny_config(synthetic_root)
    key = pretrain_key(cfg)
    same = [with_(cfg, name="other"), with_(cfg, transfer__0__lr=0.5), with_(cfg, resources__cpus_per_worker=3.0),
            with_(cfg, max_failures=0), with_(cfg, masking__cam_threshold=0.9)]  # cam_*: no effect unless cam
    assert all(pretrain_key(c) == key for c in same)
    different = [with_(cfg, seed=4), with_(cfg, masking__alpha=0.5), with_(cfg, masking__padding="random"),
                 with_(cfg, pretrain__lr=0.5), with_(cfg, pretrain__epochs=3), with_(cfg, model__patch_size=16),
                 with_(cfg, resources__num_workers=2), with_(cfg, pretrain__data__num_images=16),
                 with_(cfg, pretrain__data__root="/elsewhere")]
    keys = [pretrain_key(c) for c in different]
    assert key not in keys and len(set(keys)) == len(keys)
    # mae with L <= N/2 pads nothing: its paddings are one pre-training (4 x 4 grid, alpha 1/4: L = 4)
    mae = with_(cfg, masking__selection="mae")
    assert {pretrain_key(with_(mae, masking__padding=p)) for p in ("zero", "random", "throwout", "replicate")} \
        == {pretrain_key(mae)}
    assert pretrain_fields(cfg)["code"] == reuse.code_version() and len(reuse.code_version()) == 16


def test_code_version_changes_with_the_method_sources(tmp_path, monkeypatch):
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "masking.py").write_text("A = 1\n")
    monkeypatch.setattr(reuse, "PACKAGE", tmp_path)
    monkeypatch.setattr(reuse, "CODE_FILES", ("method",))
    reuse.code_version.cache_clear()
    try:
        first = reuse.code_version()
        (tmp_path / "method" / "masking.py").write_text("A = 2\n")
        reuse.code_version.cache_clear()
        assert reuse.code_version() != first
    finally:
        reuse.code_version.cache_clear()


def run(cfg: TrialConfig, directory: Path, plan: ReusePlan | None) -> LocalRun:
    directory.mkdir(parents=True)
    local = LocalRun(directory)
    TrialRun(cfg, local.worker(), reuse=plan.to_dict() if plan else None).run()
    return local


def plan_for(cfg: TrialConfig, store: Path, mode: str, run_name: str, source: str = "") -> ReusePlan:
    return ReusePlan(mode, str(store), pretrain_key(cfg), pretrain_fields(cfg), run_name, source=source)


@pytest.fixture(scope="module")
def published(synthetic_root, tmp_path_factory):
    """A trial that pre-trained and stored its pre-training (mode publish): (cfg, store, its LocalRun)."""
    cfg = tiny_config(synthetic_root)
    tmp = tmp_path_factory.mktemp("published")
    store = tmp / "pretrained"
    return cfg, store, run(cfg, tmp / "a", plan_for(cfg, store, "publish", "study-a/trial_aaa"))


def test_publish_stores_the_final_pre_training_once(published):
    cfg, store, first = published
    record, problem = reuse.find(str(store), pretrain_key(cfg))
    assert problem is None and record["source"] == "study-a/trial_aaa"
    assert record["fields"] == json.loads(json.dumps(pretrain_fields(cfg)))
    final_pretrain = [r for r in first.reports if r["phase"] == "pretrain"][-1]
    assert record["final_report"]["recon_loss"] == final_pretrain["recon_loss"]
    _, state = reuse.load_weights(str(store), pretrain_key(cfg))
    at_end = ckpt.load_checkpoint(first.checkpoints[1])["objmae"]  # the last pre-train checkpoint
    assert state.keys() == at_end.keys() and all(torch.equal(state[k], at_end[k]) for k in state)
    assert all(r[REUSED_FROM] == "" and r[REUSE_NOTE] == "" for r in first.reports)


def test_reused_pre_training_gives_bit_identical_transfer_results(published, tmp_path):
    """The same config (seed 3) again, from the stored pre-training: its transfer phases report exactly the
    numbers of the trial that pre-trained, and end with the same classifier weights, bit for bit."""
    cfg, store, first = published
    again = run(cfg, tmp_path / "b", plan_for(cfg, store, "reuse", "study-b/trial_bbb", source="study-a/trial_aaa"))
    phases = [(r["phase"], r["epoch"]) for r in again.reports]
    assert phases == [("pretrain", 1), ("finetune", 0), ("linear", 0)]  # one report for the reused phase
    assert all(r[REUSED_FROM] == "study-a/trial_aaa" for r in again.reports)
    assert [r["trial_epoch"] for r in again.reports] == [r["trial_epoch"] for r in first.reports[1:]] == [2, 3, 4]
    for mine, theirs in zip(again.reports, first.reports[1:]):
        assert {k: mine[k] for k in RESULT_KEYS} == {k: theirs[k] for k in RESULT_KEYS}
    for mine, theirs in zip(again.checkpoints[1:], first.checkpoints[2:]):  # finetune, linear
        a, b = ckpt.load_checkpoint(mine), ckpt.load_checkpoint(theirs)
        assert all(torch.equal(a["classifier"][k], b["classifier"][k]) for k in b["classifier"])
        assert all(torch.equal(a["objmae"][k], b["objmae"][k]) for k in b["objmae"])
    # a restart after the reused phase (its checkpoint) keeps saying where the pre-training came from
    resumed = LocalRun(tmp_path / "c", checkpoints=[again.checkpoints[0]])
    (tmp_path / "c").mkdir()
    TrialRun(cfg, resumed.worker(), reuse=plan_for(cfg, store, "reuse", "study-b/trial_bbb",
                                                   source="study-a/trial_aaa").to_dict()).run()
    assert [r["phase"] for r in resumed.reports] == ["finetune", "linear"]
    assert resumed.reports[-1]["top1"] == first.reports[-1]["top1"]
    assert all(r[REUSED_FROM] == "study-a/trial_aaa" for r in resumed.reports)


@pytest.mark.parametrize("damage", ["flip_byte", "delete_weights", "bad_json"])
def test_missing_or_corrupt_entry_is_pre_trained_afresh_and_says_why(published, tmp_path, damage):
    cfg, store, first = published
    entry = tmp_path / "pretrained" / pretrain_key(cfg)
    entry.parent.mkdir()
    import shutil

    shutil.copytree(store / pretrain_key(cfg), entry)
    weights = entry / reuse.WEIGHTS_FILE
    if damage == "flip_byte":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "delete_weights":
        weights.unlink()
    else:
        (entry / reuse.RECORD_FILE).write_text("{not json")
    why = {"flip_byte": "sha256 does not match", "delete_weights": "objmae.safetensors: missing",
           "bad_json": "pretrain.json: unreadable"}[damage]
    record, problem = reuse.find(str(entry.parent), pretrain_key(cfg))
    assert (record is None) == (damage != "flip_byte") and (damage == "flip_byte" or why in problem)
    again = run(cfg, tmp_path / "b", plan_for(cfg, entry.parent, "reuse", "study-c/trial_ccc", "study-a/trial_aaa"))
    assert [(r["phase"], r["epoch"]) for r in again.reports] == [(r["phase"], r["epoch"]) for r in first.reports]
    assert all(why in r[REUSE_NOTE] and r[REUSED_FROM] == "" for r in again.reports)
    assert [r["top1"] for r in again.reports] == [r["top1"] for r in first.reports]  # pre-trained afresh, same seed
    record, state = reuse.load_weights(str(entry.parent), pretrain_key(cfg))  # and stored over the bad entry
    assert record["source"] == "study-c/trial_ccc"
