"""Measured speed-up (train/speed.py) and the packed path inside a trial (train/loop.py without Ray): the
baseline cache, speedup_measured and data_wait_frac in the reports, the store's rules and refusals."""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import torch

from objmae_ray.config import ModelConfig, TrialConfig
from objmae_ray.errors import ConfigError
from objmae_ray.train import speed
from objmae_ray.train.loop import LocalRun, TrialRun
from objmae_ray.train.rules import trial_problems
from objmae_ray.train.trial import check_trial
from trial_helpers import tiny_config

MICRO = ModelConfig(preset="micro", img_size=32, patch_size=8)


def with_data(cfg: TrialConfig, **data) -> TrialConfig:
    body = cfg.model_dump()
    for phase in [body["pretrain"], *body["transfer"]]:
        phase["data"].update(data)
    return TrialConfig.model_validate(body)


def run_local(cfg: TrialConfig, directory: Path, speed_cache: str | None = None) -> LocalRun:
    directory.mkdir(parents=True)
    run = LocalRun(directory)
    TrialRun(cfg, run.worker(), speed_cache=speed_cache).run()
    return run


def test_step_timer_median_leaves_out_the_first_step():
    timer = speed.StepTimer(torch.device("cpu"))
    for seconds in (0.2, 0.01, 0.03, 0.02):
        timer.start()
        time.sleep(seconds)
        timer.stop()
    assert timer.median() == pytest.approx(0.02, abs=0.008)
    assert len(timer.seconds()) == 4


def test_baseline_is_measured_once_per_key_and_cached(tmp_path, monkeypatch):
    calls = []
    real = speed._time_supervised
    monkeypatch.setattr(speed, "_time_supervised", lambda *a, **k: calls.append(k["batch"]) or real(*a, **k))
    cpu = torch.device("cpu")
    first = speed.baseline_step_seconds(MICRO, optimizer="adamw", batch=4, device=cpu, cache_dir=str(tmp_path))
    again = speed.baseline_step_seconds(MICRO, optimizer="adamw", batch=4, device=cpu, cache_dir=str(tmp_path))
    assert first == again > 0 and calls == [4]
    [cached] = tmp_path.iterdir()
    assert cached.name == f"cpu-{torch.get_num_threads()}t-micro-32px-p8-b4-fp32-adamw.json"
    record = json.loads(cached.read_text())
    assert record["step_s"] == first and len(record["steps_s"]) == speed.TIMED_STEPS
    speed.baseline_step_seconds(MICRO, optimizer="adamw", batch=8, device=cpu, cache_dir=str(tmp_path))
    assert calls == [4, 8] and len(list(tmp_path.iterdir())) == 2  # another batch, another entry
    # a trial at bf16 is compared with a bf16 baseline (CPU autocast runs it), timed and cached apart
    speed.baseline_step_seconds(MICRO, optimizer="adamw", batch=4, device=cpu, cache_dir=str(tmp_path),
                                precision="bf16")
    assert calls == [4, 8, 4] and (tmp_path / f"cpu-{torch.get_num_threads()}t-micro-32px-p8-b4-bf16-adamw.json").is_file()
    assert json.loads((tmp_path / f"cpu-{torch.get_num_threads()}t-micro-32px-p8-b4-bf16-adamw.json").read_text())[
        "precision"] == "bf16"


def test_baseline_that_does_not_fit_is_timed_at_half_the_batch(monkeypatch):
    def timed(model_cfg, *, optimizer, batch, device, precision):
        if batch > 4:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return [0.1 * batch] * speed.TIMED_STEPS

    monkeypatch.setattr(speed, "_time_supervised", timed)
    result = speed.measure_baseline(MICRO, optimizer="adamw", batch=16, device=torch.device("cpu"))
    assert result["measured_batch"] == 4 and result["step_s"] == pytest.approx(0.4 * 16 / 4)


@pytest.fixture(scope="module")
def packed_runs(tmp_path_factory):
    """The tiny trial on the packed synthetic set (store: auto), twice, and once on the JPEG path."""
    tmp = tmp_path_factory.mktemp("trial")
    cfg = with_data(tiny_config(str(tmp / "cache")), store="auto", loader_workers=1)
    runs = [run_local(cfg, tmp / f"packed{i}", speed_cache=str(tmp / "speed")) for i in range(2)]
    return cfg, runs, tmp


def test_trial_on_the_store_reports_measured_speedup_and_input_wait(packed_runs):
    cfg, (run, _), tmp = packed_runs
    phases = [r["phase"] for r in run.reports]
    assert phases == ["pretrain", "pretrain", "finetune", "linear"]
    pretrain = run.reports[:2]
    for report in pretrain:
        assert report["speedup_measured"] > 0 and 0 <= report["data_wait_frac"] <= 1
    for report in run.reports[2:]:  # transfer phases carry the last pre-train value
        assert report["speedup_measured"] == pretrain[-1]["speedup_measured"] and 0 <= report["data_wait_frac"] <= 1
    baseline = json.loads(next((tmp / "speed").iterdir()).read_text())
    assert baseline["batch"] == cfg.pretrain.batch_size and baseline["preset"] == "micro"
    assert (tmp / "cache" / "packed").is_dir()  # store: auto packed the synthetic set into the cache
    assert run.reports[-1]["top1"] >= 0 and run.reports[-1]["val_images"] == 8  # val split of 32 -> 8 images


def test_trial_on_the_store_is_reproducible(packed_runs):
    _, (a, b), _ = packed_runs
    keys = ("train_loss", "recon_loss", "top1", "val_loss", "fallback")
    assert [{k: r[k] for k in keys} for r in a.reports] == [{k: r[k] for k in keys} for r in b.reports]


def test_trial_on_a_missing_store_names_the_path_and_the_node(tmp_path):
    cfg = with_data(tiny_config(str(tmp_path)), store=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'nowhere'}: packed store not found on node "
                                          rf"{socket.gethostname()}"):
        run_local(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^pretrain\.data\.store: .*nowhere not found"):
        check_trial(cfg, cluster_resources={"CPU": 4})


def test_store_rules():
    coco = {"kind": "coco", "store": "/stores/coco"}
    cfg = TrialConfig.model_validate({"pretrain": {"data": coco}, "transfer": [{"data": coco}]})
    assert trial_problems(cfg) == []  # a store needs no data.root
    cfg = TrialConfig.model_validate({"pretrain": {"data": {"kind": "coco", "store": "auto"}},
                                      "transfer": [{"data": {"kind": "cifar100", "store": "s3://b/cifar"}}]})
    assert trial_problems(cfg) == [
        "pretrain.data.store: 'auto' packs the built-in synthetic set only; pack a 'coco' dataset with "
        "`objmae-data pack` and give its directory",
        "transfer.0.data.store: s3://b/cifar is a URI; a store is memory-mapped, so give a directory every node mounts",
    ]
    cam = TrialConfig.model_validate({"masking": {"selection": "cam"},
                                      "pretrain": {"data": {"kind": "folder", "store": "/stores/in100"}}})
    assert trial_problems(cam) == []  # the store holds the CAM grids (checked when it opens)


@pytest.mark.parametrize("store", [None, "auto"])
def test_data_wait_frac_is_the_share_spent_waiting_and_speedup_the_step_time_ratio(tmp_path, monkeypatch, store):
    """A slow input (0.2 s per batch, JPEG path or store) shows in data_wait_frac; speedup_measured is the
    baseline step time over the median ObjMAE step time."""
    from objmae_ray.data import coco
    from objmae_ray.data.loader import PackedView

    cfg = with_data(tiny_config(str(tmp_path / "cache")), store=store, loader_workers=0)
    if store:
        gather = PackedView.gather
        monkeypatch.setattr(PackedView, "gather", lambda self, *a: time.sleep(0.2) or gather(self, *a))
    else:
        load = coco.CocoObjects._load
        monkeypatch.setattr(coco.CocoObjects, "_load", lambda self, i: time.sleep(0.025) or load(self, i))  # x 8 images
    monkeypatch.setattr("objmae_ray.train.loop.baseline_step_seconds", lambda *a, **k: 1.5)
    monkeypatch.setattr(speed.StepTimer, "median", lambda self: 0.5)
    run = run_local(cfg, tmp_path / "run")
    pretrain = [r for r in run.reports if r["phase"] == "pretrain"]
    for r in pretrain:  # 4 batches x 0.2 s of waiting per epoch, inside the epoch's time
        assert 0.8 <= r["data_wait_frac"] * r["epoch_time_s"] <= r["epoch_time_s"], r
    assert all(r["speedup_measured"] == 3.0 for r in run.reports)
