"""Pre-trainings stored once and reused, on the session's Ray cluster: the claim (a named Ray actor) is unique and
goes with its owner; two concurrent trials with one key run one pre-training; a second study in the same
`objmae-sweep` call and a `pretrained_from` study reuse it; console and results table say so."""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from objmae_ray.results.records import records_from_dir
from objmae_ray.train import reuse
from test_sweep_tuner import tiny_spec


def _claim_eventually(key: str, owner: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        handle, holder = reuse.claim(key, owner)
        if handle is not None:
            return handle
        time.sleep(0.5)
    raise AssertionError(f"claim of {key} not free after {timeout_s} s (held by {holder})")


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_claim_is_unique_and_goes_with_its_owner(ray_session):
    ray = ray_session
    key = f"test-{uuid.uuid4().hex[:12]}"
    first, holder = reuse.claim(key, "run/trial_a")
    assert first is not None and holder == "run/trial_a"
    assert reuse.claim(key, "run/trial_b") == (None, "run/trial_a")
    reuse.release(first)
    second = _claim_eventually(key, "run/trial_b")  # released: free again
    reuse.release(second)

    @ray.remote(num_cpus=0)
    class Owner:
        def take(self, key: str) -> bool:
            self.handle, _ = reuse.claim(key, "run/trial_c")
            return self.handle is not None

    owner = Owner.remote()
    assert ray.get(owner.take.remote(key), timeout=120)
    assert reuse.claim(key, "run/trial_d") == (None, "run/trial_c")
    ray.kill(owner)  # the claimer dies without releasing: its claim dies with it
    reuse.release(_claim_eventually(key, "run/trial_d"))


def sweep_file(tmp_path: Path, name: str, extra: str, transfer_mode: str = "finetune") -> Path:
    """A micro study: 2 pre-train epochs, 1 transfer epoch, half a CPU per worker."""
    return tiny_spec(tmp_path, name, extra, pretrain_epochs=2, transfer_mode=transfer_mode)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(1200)
def test_concurrent_trials_pre_train_once_and_later_studies_reuse(ray_session, tmp_path, capsys):
    """`objmae-sweep lrs.yaml probe.yaml`: lrs runs 2 trials at once that differ only in the fine-tune lr (one
    key): one pre-trains (2 pre-train reports) while the other waits, then reuses it (1 report of that phase, at
    the same trial_epoch); probe (a linear probe, same pre-training) reuses it too; then a `pretrained_from`
    study over lrs reuses it again. One entry in <storage>/pretrained, named by the trial that made it."""
    from objmae_ray.cli import sweep_main

    lrs = sweep_file(tmp_path, "lrs", "sampler: {kind: grid}\nconcurrency: 2\nsearch_space:\n"
                                      "  transfer.0.lr: {choices: [1.0e-3, 2.0e-3]}\n")
    probe = sweep_file(tmp_path, "probe", "sampler: {kind: grid}\nsearch_space:\n  transfer.0.lr: {choices: [0.1]}\n",
                       transfer_mode="linear")
    address = ray_session.get_runtime_context().gcs_address
    assert sweep_main([str(lrs), str(probe), "--address", address, "--name", "t"]) == 0
    out = capsys.readouterr().out
    runs = tmp_path / "runs"
    entries = [p for p in (runs / "pretrained").iterdir() if p.is_dir()]
    assert len(entries) == 1
    source = json.loads((entries[0] / reuse.RECORD_FILE).read_text())["source"]
    records = records_from_dir(runs / "t-lrs")
    assert len(records) == 2 and all(r.status == "done" for r in records)
    ran = [r for r in records if not r.last.get(reuse.REUSED_FROM)]
    reused = [r for r in records if r.last.get(reuse.REUSED_FROM)]
    assert len(ran) == 1 and len(reused) == 1
    assert source == f"t-lrs/{Path(ran[0].path).name}" and reused[0].last[reuse.REUSED_FROM] == source
    assert [h["phase"] for h in ran[0].history] == ["pretrain", "pretrain", "finetune"]
    assert [h["phase"] for h in reused[0].history] == ["pretrain", "finetune"]
    assert [h["trial_epoch"] for h in reused[0].history] == [2, 3]
    assert reused[0].history[0]["recon_loss"] == ran[0].history[1]["recon_loss"]
    # concurrent: the reusing trial started (Tune's clock) before the other's pre-training had ended
    started = reused[0].history[0]["timestamp"] - reused[0].history[0]["time_total_s"]
    assert started < ran[0].history[1]["timestamp"] - 1
    assert f"pre-training reused from {source}" in out  # console line
    assert f"pre-training reused from {source} (1 trial)." in (runs / "t-lrs" / "results.md").read_text()
    probed = records_from_dir(runs / "t-probe")
    assert len(probed) == 1 and probed[0].last[reuse.REUSED_FROM] == source
    assert [h["phase"] for h in probed[0].history] == ["pretrain", "linear"]
    # a transfer-only study over the finished run: one trial (both lrs trials share their pre-training)
    again = sweep_file(tmp_path, "again", f"pretrained_from: {runs / 't-lrs'}\n", transfer_mode="linear")
    assert sweep_main([str(again), "--address", address, "--name", "t-again"]) == 0
    again_records = records_from_dir(runs / "t-again")
    assert len(again_records) == 1 and again_records[0].last[reuse.REUSED_FROM] == source
    assert len([p for p in (runs / "pretrained").iterdir() if p.is_dir()]) == 1
