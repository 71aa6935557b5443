"""Stored pre-trainings on the sweep side (sweep/pretrained.py), without Ray: `validate` over several files counts
the shared and stored pre-trainings and the GPU-hours with and without reuse; `pretrained_from: RUN_DIR` makes
one transfer-only trial per finished pre-training of that run, each with the key its pre-training was stored under."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from objmae_ray.cli import sweep_main
from objmae_ray.errors import ConfigError
from objmae_ray.sweep.plan import phase_costs
from objmae_ray.sweep.pretrained import planned_configs, reuse_plan
from objmae_ray.sweep.space import trial_from_tune_config
from objmae_ray.sweep.rundir import trial_dirs
from objmae_ray.sweep.spec import load_spec
from objmae_ray.train import reuse

REPO = Path(__file__).resolve().parents[1]
PAPER = ["alpha", "selection", "padding", "patch_size", "transfer"]


@pytest.fixture
def data_roots(monkeypatch):
    for var in ("OBJMAE_COCO_ROOT", "OBJMAE_IN100_ROOT", "OBJMAE_CIFAR_ROOT", "OBJMAE_IN100_CAM", "OBJMAE_COCO_STORE",
                "OBJMAE_IN100_STORE", "OBJMAE_IN100_CAM_STORE", "OBJMAE_CIFAR_STORE"):
        monkeypatch.setenv(var, f"/data/{var.lower()}")


def test_paper_studies_share_their_pre_trainings(data_roots, capsys):
    """transfer.yaml's MAE alpha 1/2 and ObjMAE object alpha 0.17 (seed 0; Table 5's "0.34" in the region
    reading) are pre-trained by alpha.yaml and selection.yaml: run after them, transfer.yaml pre-trains only its
    side-reading ObjMAE row and saves exactly those two pre-trainings."""
    files = [(f"{name}.yaml", load_spec(REPO / "search_spaces" / f"{name}.yaml")) for name in PAPER]
    plan = reuse_plan(files)
    by_file = {s.file: s for s in plan.studies}
    transfer = by_file["transfer.yaml"]
    assert (transfer.trials, transfer.pretrainings, transfer.shared, transfer.stored) == (4, 1, 2, 0)
    configs, exact = planned_configs(files[-1][1])
    assert exact and len(configs) == 4
    shared = [c for c in configs if c.masking.alpha in (0.5, 0.17) and c.pretrain.epochs > 0]  # MAE 1/2, object 0.17
    assert len(shared) == 2
    pretrain_hours = sum(p.gpu_hours for c in shared for p in phase_costs(c, files[-1][1]) if p.name == "pre-train")
    assert transfer.hours_without - transfer.hours_with == pytest.approx(pretrain_hours)
    assert by_file["alpha.yaml"].shared == 0 and by_file["alpha.yaml"].hours_with == by_file["alpha.yaml"].hours_without
    assert plan.hours_with < plan.hours_without
    # the same through the command line, all five files at once
    assert sweep_main(["validate", *(str(REPO / "search_spaces" / f"{n}.yaml") for n in PAPER)]) == 0
    out = capsys.readouterr().out
    assert "transfer.yaml: 4 trials, 1 pre-trainings run, 2 reused (2 shared with earlier trials" in out
    assert (f"all 5 file(s): {plan.hours_without:.3g} GPU-hours without reuse, {plan.hours_with:.3g} with reuse"
            in out)


def tiny_file(tmp_path: Path, name: str, extra: dict | None = None) -> Path:
    body = {"study": name, "objectives": [{"metric": "top1", "mode": "max"}], "storage": str(tmp_path / "runs"),
            "base": {"model": {"preset": "micro", "img_size": 32, "patch_size": 8},
                     "pretrain": {"epochs": 1, "warmup_epochs": 0, "batch_size": 8, "lr": 1e-3},
                     "transfer": [{"mode": "linear", "epochs": 1, "warmup_epochs": 0, "batch_size": 8, "lr": 0.1}]},
            **(extra or {})}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_a_pre_training_already_stored_is_counted_as_reused(tmp_path):
    """A grid over two transfer learning rates x 2 seeds: 2 pre-trainings (one per seed), 2 shared; with the
    seed-0 pre-training stored in the storage, 1 runs and 3 are reused. TPE over the same space (values that
    never change the pre-training) counts one pre-training per seed too."""
    grid = {"sampler": {"kind": "grid"}, "repeats": 2, "search_space": {"transfer.0.lr": {"choices": [0.1, 0.2]}}}
    spec = load_spec(tiny_file(tmp_path, "probe", grid))
    study = reuse_plan([("probe", spec)]).studies[0]
    assert (study.trials, study.pretrainings, study.shared, study.stored) == (4, 2, 2, 0)
    configs, _ = planned_configs(spec)
    seed0 = next(c for c in configs if c.seed == 0)
    reuse.publish(reuse.store_root(str(tmp_path / "runs")), reuse.pretrain_key(seed0), state={"w": torch.zeros(2)},
                  fields={}, source="old/trial_x", final_report={})
    study = reuse_plan([("probe", spec)]).studies[0]
    assert (study.pretrainings, study.shared, study.stored) == (1, 2, 1)
    tpe = load_spec(tiny_file(tmp_path, "tpe", {**grid, "sampler": {"kind": "tpe"}, "num_samples": 2}))
    study = reuse_plan([("tpe", tpe)]).studies[0]
    assert study.exact and (study.trials, study.pretrainings, study.shared, study.stored) == (4, 1, 2, 1)


def test_pretrained_from_makes_one_trial_per_finished_pre_training(run_dir, tmp_path, capsys):
    """run_dir: 4 finished trials (alpha 1/4 and 1/2, two seeds each). A linear-probe file with pretrained_from
    gets 4 list rows; each trial's pre-training key is its source trial's, its transfer phase the file's."""
    sources = [trial_from_tune_config(t.config) for t in trial_dirs(str(run_dir))]
    path = tiny_file(tmp_path, "probe", {"pretrained_from": str(run_dir)})
    spec = load_spec(path)
    assert spec.sampler.kind == "list" and spec.repeats == 1 and len(spec.configurations) == 4
    configs, exact = planned_configs(spec)
    assert exact
    assert sorted(reuse.pretrain_key(c) for c in configs) == sorted(reuse.pretrain_key(s) for s in sources)
    # a file at another precision still gets the sources' pre-trainings (precision is part of the key)
    other, _ = planned_configs(load_spec(path, ["precision=bf16"]))
    assert sorted(reuse.pretrain_key(c) for c in other) == sorted(reuse.pretrain_key(s) for s in sources)
    assert all(c.transfer[0].mode == "linear" and c.transfer[0].lr == 0.1 and len(c.transfer) == 1 for c in configs)
    assert sweep_main(["validate", str(path)]) == 0
    assert "4 trial(s), one per finished pre-training of" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"probe2.yaml:\d+: pretrained_from: .*no-run.*not found"):
        load_spec(tiny_file(tmp_path, "probe2", {"pretrained_from": str(tmp_path / "no-run")}))
    searched = {"pretrained_from": str(run_dir), "search_space": {"transfer.0.lr": {"choices": [0.1, 0.2]}}}
    with pytest.raises(ConfigError, match="fix every search_space value"):
        load_spec(tiny_file(tmp_path, "probe3", searched))
    listed = {"pretrained_from": str(run_dir), "sampler": {"kind": "list"}, "configurations": [{"seed": 0}]}
    with pytest.raises(ConfigError, match="remove `configurations`"):
        load_spec(tiny_file(tmp_path, "probe4", listed))


def test_pretrained_from_a_run_with_one_pre_training_is_one_trial(run_dir, tmp_path):
    """Source trials that share one pre-training (here: one trial) give one row."""
    import shutil

    for trial in sorted(run_dir.glob("trial_*"))[1:]:
        shutil.rmtree(trial)
    spec = load_spec(tiny_file(tmp_path, "one", {"pretrained_from": str(run_dir)}))
    source = trial_from_tune_config(trial_dirs(str(run_dir))[0].config)
    assert len(spec.configurations) == 1 and spec.configurations[0].settings == {"seed": source.seed}
    from objmae_ray.sweep.search import optuna_space

    assert list(optuna_space(spec)) == ["seed"]
    assert [reuse.pretrain_key(c) for c in planned_configs(spec)[0]] == [reuse.pretrain_key(source)]


def test_reuse_hours_use_the_clusters_gpu_like_the_plan(data_roots, capsys):
    """`validate --cluster`: the reuse summary prices trials on the cluster's GPU, as the plan lines above it
    do, so a study's GPU-hours without reuse equal its plan's total."""
    import re

    assert sweep_main(["validate", str(REPO / "search_spaces" / "transfer.yaml"),
                       "--cluster", str(REPO / "cluster" / "gpu.yaml")]) == 0
    out = capsys.readouterr().out
    total = re.search(r"([\d.]+) GPU-hours in all", out).group(1)
    assert re.search(rf"transfer.yaml: 4 trials, .*; {re.escape(total)} GPU-h without reuse", out), out
