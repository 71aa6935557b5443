"""Real Ray Train runs of one trial on this machine (micro ViT, 32 px synthetic scenes):
both phases with metrics and checkpoints, a worker SIGKILLed mid-epoch and resumed, and a 2-worker
DDP run through Ray Tune (`tune_trainable`) whose workers stay in sync.

Run with `flock /tmp/objmae-ray.lock` (one Ray cluster per machine); Ray starts once per session."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from objmae_ray.config import TrialConfig
from objmae_ray.data import ensure_synthetic
from objmae_ray.train.checkpoint import load_checkpoint
from objmae_ray.train.trial import TrialError, run_trial, tune_trainable
from trial_helpers import tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.ray]

TIMING_KEYS = {"images_per_s", "epoch_time_s", "pretrain_time_s", "loop_start_at", "first_step_at",
               "report_time_s", "checkpoint_path", "speedup_measured", "data_wait_frac"}
CHECKPOINT_FILES = {"objmae.safetensors", "classifier.safetensors", "train_state.pt", "trial_config.json",
                    "metrics.json"}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic(root, num_images=36, img_size=32, seed=0)  # val: 9 images
    return str(root)


def ray_config(root: str, num_workers: int = 1) -> TrialConfig:
    """test_trial's tiny trial (2 pre-train epochs + 1 fine-tune + 1 linear-probe epoch, 4 steps each at
    global batch 8) on 36 train images (9 held out), with 1 CPU per worker and one restart allowed."""
    return tiny_config(root, num_images=36, name="ray-tiny", seed=7, max_failures=1,
                       resources={"num_workers": num_workers, "cpus_per_worker": 1})


def read_epochs_log(directory: Path) -> list[tuple[int, int, int, int]]:
    return [tuple(map(int, line.split())) for line in (directory / "epochs.log").read_text().splitlines()]


@pytest.fixture(scope="module")
def clean_run(ray_session, synthetic_root, tmp_path_factory) -> tuple[dict, Path]:
    storage = tmp_path_factory.mktemp("storage")
    return run_trial(ray_config(synthetic_root), str(storage), "clean"), storage


def test_both_phases_report_metrics_and_checkpoints(clean_run):
    metrics, storage = clean_run
    assert metrics["done"] is True and metrics["phase"] == "linear"
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 100.0
    assert metrics["recon_loss"] > 0 and metrics["recon_loss"] == metrics["recon_loss"]  # finite, not NaN
    assert metrics["speedup_est"] > 1.0
    checkpoint = Path(metrics["checkpoint_path"])
    assert checkpoint.name == "checkpoint_p2_linear_e0000"
    assert {p.name for p in checkpoint.iterdir()} == CHECKPOINT_FILES
    loaded = load_checkpoint(checkpoint)
    assert loaded["metrics"]["top1"] == metrics["top1"]
    assert loaded["train_state"]["phase_index"] == 2
    kept = sorted(p.name for p in (storage / "clean").glob("checkpoint_p*"))
    assert kept == ["checkpoint_p1_finetune_e0000", "checkpoint_p2_linear_e0000"]  # num_to_keep=2


def test_killed_worker_resumes_from_latest_checkpoint_with_clean_metrics(clean_run, synthetic_root, tmp_path):
    """Rank 0 SIGKILLs itself at pre-train epoch 1 step 1; Ray Train restarts the group from the epoch-0
    checkpoint: epoch 0 is not redone and the final metrics equal the clean run's."""
    clean_metrics, _ = clean_run
    marker, dump = tmp_path / "killed", tmp_path / "dump"
    dump.mkdir()
    hooks = {"kill_at": ["pretrain", 1, 1], "kill_marker": str(marker), "param_dump_dir": str(dump)}
    metrics = run_trial(ray_config(synthetic_root), str(tmp_path / "storage"), "killed", hooks=hooks)
    assert marker.exists()
    epochs = read_epochs_log(dump)
    assert [(phase, epoch) for _, phase, epoch, _ in epochs] == [(0, 0), (0, 1), (1, 0), (2, 0)]
    assert epochs[0][3] != epochs[1][3]  # epoch 1 ran in a new worker process
    assert {k: v for k, v in metrics.items() if k not in TIMING_KEYS} == \
           {k: v for k, v in clean_metrics.items() if k not in TIMING_KEYS}


def test_two_worker_ddp_through_tune_stays_in_sync(ray_session, synthetic_root, tmp_path):
    """tune_trainable -> TorchTrainer with 2 workers: reports reach Tune, and after every epoch both ranks
    hold bit-identical parameters although they trained on disjoint halves of the data."""
    from ray import tune

    dump = tmp_path / "dump"
    dump.mkdir()
    param_space = {**ray_config(synthetic_root, num_workers=2).model_dump(), "_hooks": {"param_dump_dir": str(dump)}}
    tuner = tune.Tuner(tune.with_resources(tune_trainable, {"cpu": 0.1}), param_space=param_space,
                       tune_config=tune.TuneConfig(num_samples=1),
                       run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), name="ddp"))
    results = tuner.fit()
    assert not results.errors
    result = results[0]
    assert result.metrics["done"] is True and 0.0 <= result.metrics["top1"] <= 100.0
    assert result.metrics["training_iteration"] == 4  # 2 pre-train + 1 fine-tune + 1 linear reports
    assert Path(result.metrics["checkpoint_path"], "classifier.safetensors").is_file()
    assert result.metrics["val_images"] == 9  # ranks evaluate 5 + 4 images: uneven batches, exact total
    for phase, epoch in [(0, 0), (0, 1), (1, 0), (2, 0)]:
        rank0, rank1 = (json.loads((dump / f"rank{r}-phase{phase}-epoch{epoch}.json").read_text()) for r in (0, 1))
        assert rank0["param_sha256"] == rank1["param_sha256"]
        assert len(rank0["sample_indices"]) == len(rank1["sample_indices"]) > 0
        assert not set(rank0["sample_indices"]) & set(rank1["sample_indices"])


def test_non_finite_loss_fails_the_trial_with_one_line(ray_session, synthetic_root, tmp_path):
    """An absurd lr makes the loss NaN at the second step: run_trial raises a one-line TrialError naming it."""
    body = ray_config(synthetic_root).model_dump()
    body["pretrain"].update(lr=1e36, warmup_epochs=0)
    body["max_failures"] = 0
    with pytest.raises(TrialError) as err:
        run_trial(TrialConfig.model_validate(body), str(tmp_path), "nan")
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("trial nan: NonFiniteLossError: pretrain: loss is nan at epoch 0 step 1;")


def test_three_worker_losses_in_one_trial_each_redo_at_most_one_checkpoint_interval(ray_session, synthetic_root,
                                                                                     tmp_path):
    """Rank 0 is SIGKILLed three times in one trial (pre-train epoch 1 before any checkpoint, pre-train epoch 3,
    fine-tune epoch 0) with checkpoints every 2 epochs and no error retries (max_failures 0): the trial
    finishes, and each restart begins at the epoch after the latest checkpoint."""
    body = ray_config(synthetic_root).model_dump()
    body["pretrain"]["epochs"] = 4
    body.update(checkpoint_every=2, max_failures=0)
    marker, dump = tmp_path / "killed", tmp_path / "dump"
    dump.mkdir()
    hooks = {"kill_at": [["pretrain", 1, 1], ["pretrain", 3, 2], ["finetune", 0, 1]], "kill_marker": str(marker),
             "param_dump_dir": str(dump)}
    metrics = run_trial(TrialConfig.model_validate(body), str(tmp_path / "storage"), "reclaimed", hooks=hooks)
    assert metrics["done"] is True and metrics["phase"] == "linear"
    assert [line.split(" at ")[1] for line in marker.read_text().splitlines()] == \
           ["pretrain epoch 1 step 1", "pretrain epoch 3 step 2", "finetune epoch 0 step 1"]
    epochs = read_epochs_log(dump)
    # attempt 1: e0 (no checkpoint yet) | 2: e0 e1 [ckpt] e2 | 3: e2 e3 [ckpt, phase end] | 4: fine-tune, linear
    assert [(phase, epoch) for _, phase, epoch, _ in epochs] == \
           [(0, 0), (0, 0), (0, 1), (0, 2), (0, 2), (0, 3), (1, 0), (2, 0)]
    pids = [pid for *_, pid in epochs]
    assert [pids.index(pid) for pid in dict.fromkeys(pids)] == [0, 1, 4, 6]  # four worker processes


def test_an_error_in_the_trial_is_retried_max_failures_times_then_fails(ray_session, synthetic_root, tmp_path):
    """A RuntimeError raised by the trial's code at every attempt: 1 + max_failures (2) attempts, then a
    one-line TrialError naming it (worker losses have their own budget, max_restarts)."""
    body = ray_config(synthetic_root).model_dump()
    body.update(max_failures=2, max_restarts=100)
    marker = tmp_path / "raised"
    hooks = {"raise_at": ["pretrain", 0, 1], "kill_marker": str(marker)}
    with pytest.raises(TrialError) as err:
        run_trial(TrialConfig.model_validate(body), str(tmp_path / "storage"), "bug", hooks=hooks)
    assert len(marker.read_text().splitlines()) == 3
    assert "\n" not in str(err.value)
    assert "RuntimeError: injected error at pretrain epoch 0 step 1" in str(err.value)
