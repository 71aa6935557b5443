"""The cost plan's bounds (sweep/plan.py): each phase runs at the slower of compute and loading, the
GPU-hours follow from that rate, and `objmae-sweep validate` says per configuration which bound applies."""
from __future__ import annotations

import math

import pytest

from objmae_ray.cli import sweep_main
from objmae_ray.config import SweepSpec
from objmae_ray.method.flops import objmae_flops, supervised_flops
from objmae_ray.sweep.plan import per_cpu, plan

COCO_STUDY = {
    "study": "cost", "objectives": [{"metric": "top1", "mode": "max"}], "sampler": {"kind": "grid"},
    "estimate": {"gpu_tflops": 5.0},
    "base": {
        "model": {"preset": "vit_small", "img_size": 224, "patch_size": 16},
        "pretrain": {"epochs": 10, "warmup_epochs": 1, "data": {"kind": "coco", "root": "/data/coco"}},
        "transfer": [{"mode": "linear", "epochs": 2, "warmup_epochs": 0,
                      "data": {"kind": "cifar100", "root": "/data/cifar"}}],
        "resources": {"num_workers": 2, "use_gpu": True, "cpus_per_worker": 4, "gpus_per_worker": 1},
    },
    "search_space": {"alpha": {"choices": [0.5, 0.0625]}},
}


def spec_with(**pretrain_data) -> SweepSpec:
    body = {**COCO_STUDY, "base": {**COCO_STUDY["base"]}}
    body["base"]["pretrain"] = {**body["base"]["pretrain"], "data": {**body["base"]["pretrain"]["data"], **pretrain_data}}
    return SweepSpec.model_validate(body)


def test_each_phase_runs_at_the_slower_rate():
    spec = spec_with()
    high, low = plan(spec).bounds  # alpha 0.5, then 1/16
    assert [name for name, _ in plan(spec).bounds] == ["alpha=0.5", "alpha=0.0625"]
    # pre-train: 4 vCPUs x 200 / 2 img/s = 400 img/s loading per worker; compute 5e12 / FLOPs per image
    for (_, phases), alpha in ((high, 0.5), (low, 0.0625)):
        pretrain, linear = phases
        compute = 5e12 / objmae_flops("vit_small", 224, 16, alpha)
        assert pretrain.compute_rate == pytest.approx(compute) and pretrain.loading_rate == 4 * 100.0 == 4 * per_cpu("coco")
        rate = min(compute, 400.0)
        assert pretrain.wall_s == pytest.approx(10 * 72_452 / (2 * rate))  # COCO 2014 train after the paper's filter
        assert pretrain.gpu_hours == pytest.approx(pretrain.wall_s * 2 / 3600)
        # linear probe on CIFAR-100: forward-only steps, 50k train + 10k val images per epoch
        step = supervised_flops("vit_small", 224, 16)
        assert linear.compute_rate == pytest.approx(5e12 * 60_000 / (60_000 * step / 3))
        assert linear.loading_rate == 4 * per_cpu("cifar100") == 2000.0
    assert high[1][0].bound == "compute" and low[1][0].bound == "loading"  # 315 vs 2,541 img/s of compute
    assert plan(spec).gpu_hours == pytest.approx(sum(p.gpu_hours for _, ps in (high, low) for p in ps))


def test_the_packed_path_lifts_the_loading_bound():
    jpeg, packed = plan(spec_with()), plan(spec_with(store="/stores/coco"))
    low_jpeg, low_packed = jpeg.bounds[1][1][0], packed.bounds[1][1][0]
    assert low_packed.loading_rate == 4 * per_cpu("packed") and low_packed.bound == "compute"
    assert low_packed.gpu_hours < low_jpeg.gpu_hours / 3
    own = plan(SweepSpec.model_validate({**COCO_STUDY, "estimate": {"gpu_tflops": 5.0, "images_per_core": 50.0}}))
    assert own.bounds[0][1][0].loading_rate == 200.0  # estimate.images_per_core overrides the table


def test_validate_prints_the_bound_of_every_configuration(tmp_path, capsys):
    import yaml

    path = tmp_path / "cost.yaml"
    path.write_text(yaml.safe_dump(COCO_STUDY))
    assert sweep_main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("  alpha=")]
    assert len(lines) == 2
    compute = [f"{5e12 / objmae_flops('vit_small', 224, 16, a):,.0f}" for a in (0.5, 0.0625)]
    assert lines[0].startswith(f"  alpha=0.5: pre-train compute-bound (compute {compute[0]} < loading 400 img/s), "
                               f"linear compute-bound")
    assert lines[1].startswith(f"  alpha=0.0625: pre-train loading-bound (loading 400 < compute {compute[1]} img/s)")
    assert lines[1].endswith("GPU-h")
    assert "cpus_per_worker x 100 (coco files), 500 (cifar100 files) (a vCPU: 0.5 x a core's rate) img/s per CPU" in out


def test_cpu_trials_count_one_device_per_worker():
    spec = SweepSpec.model_validate({**COCO_STUDY, "base": {**COCO_STUDY["base"], "resources": {"num_workers": 3}}})
    [(_, [pretrain, _])] = plan(spec).bounds[:1]
    assert math.isclose(pretrain.gpu_hours, pretrain.wall_s * 3 / 3600)


def test_a_scratch_row_costs_no_pre_training_and_a_low_label_split_costs_its_images():
    body = {**COCO_STUDY, "sampler": {"kind": "list"}, "search_space": {},
            "configurations": [{"pretrain.epochs": 0}, {"pretrain.epochs": 10}]}
    body["base"] = {**COCO_STUDY["base"], "transfer": [{**COCO_STUDY["base"]["transfer"][0], "train_images": 1000}]}
    scratch, pretrained = plan(SweepSpec.model_validate(body)).bounds
    assert [p.name for p in scratch[1]] == ["linear"] and [p.name for p in pretrained[1]] == ["pre-train", "linear"]
    linear = scratch[1][0]  # 1,000 labelled of CIFAR-100's 50,000 train images + its 10,000 val images per epoch
    assert linear.wall_s == pytest.approx(2 * 11_000 / (2 * min(linear.compute_rate, linear.loading_rate)))


# ---- the GPU a trial runs on, its memory, and the bytes a study writes (issue 21) -------------------------

def test_the_cluster_default_gpu_type_sets_the_rate_the_memory_plan_and_accumulation(capsys):
    """patch_size.yaml on cluster/gpu.yaml: gpu_1x is a g5 (A10G, 22.5 GiB, 70 x 0.2 TFLOP/s); ViT-S/8
    fine-tuning at 256 does not fit and runs as 2 x 128, printed; patch 16 needs no accumulation."""
    import os
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {name: "/data/" + name.lower() for name in ("OBJMAE_COCO_ROOT", "OBJMAE_IN100_ROOT", "OBJMAE_COCO_STORE",
                                                       "OBJMAE_IN100_STORE")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert sweep_main(["validate", str(repo / "search_spaces" / "patch_size.yaml"),
                           "--cluster", str(repo / "cluster" / "gpu.yaml")]) == 0
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    out = capsys.readouterr().out
    assert "on gpu_1x: A10G 22.5 GiB, 14 sustained TFLOP/s (70 peak x MFU 0.2)" in out
    accumulation = [line for line in out.splitlines() if line.startswith("memory: ")]
    assert accumulation == ["memory: finetune: gradient accumulation 2 x 128 images (estimated peak 37.6 GiB at 256 "
                            "> 22.5 GiB; 19.5 GiB at 128) (selection=mae, alpha=0.5, patch_size=8, and 2 more "
                            "configurations)"]
    rows = {line.split(":")[0].strip(): line for line in out.splitlines() if line.startswith("  selection=")}
    assert "with accumulation" not in rows["selection=mae, alpha=0.5, patch_size=16"]
    assert "finetune compute-bound" in rows["selection=mae, alpha=0.5, patch_size=8"]


def test_node_type_gpu_by_instance_type_resources_and_a_measured_run(tmp_path):
    import json

    from objmae_ray.sweep.gpus import GPUS, measured, node_type_gpu

    assert node_type_gpu({"resources": {"GPU": 8}, "node_config": {"InstanceType": "p5.48xlarge"}}).name == "H100"
    assert node_type_gpu({"resources": {"GPU": 1}, "node_config": {"InstanceType": "g6.xlarge"}}).memory_gib == 22.5
    assert node_type_gpu({"resources": {"CPU": 8}, "node_config": {"InstanceType": "g5.xlarge"}}) is None
    named = node_type_gpu({"resources": {"GPU": 1, "objmae_gpu_A100-80GB": 1, "objmae_gpu_memory_gib": 70}})
    assert (named.name, named.memory_gib) == ("A100-80GB", 70.0)
    run = {"benchmark": "gpu_check", "mode": "cuda", "machine": {"gpu": "NVIDIA A10G"},
           "speedup": {"result": {"supervised": {"gflops_fwd_bwd": 3500.0, "step_ms": 350.0}}}}
    (tmp_path / "gpu_check-host-1.json").write_text(json.dumps(run))
    (tmp_path / "gpu_check-host-2.json").write_text(json.dumps({**run, "mode": "cpu"}))  # a CPU run never counts
    a10g = measured(GPUS["A10G"], tmp_path)
    assert a10g.sustained_tflops == pytest.approx(10.0) and a10g.source.startswith("measured 10 by ")
    assert measured(GPUS["H100"], tmp_path) == GPUS["H100"]


def test_the_plan_prints_the_bytes_checkpoints_write():
    """checkpoint_every 1: one checkpoint per epoch (the old default); by default every 15 minutes of the
    phase's wall time and at its end, so far fewer bytes."""
    from objmae_ray.sweep.plan import Target, checkpoint_bytes
    from objmae_ray.sweep.gpus import GPUS

    every_epoch = {**COCO_STUDY, "base": {**COCO_STUDY["base"], "checkpoint_every": 1}}
    per_epoch, timed = plan(SweepSpec.model_validate(every_epoch)), plan(SweepSpec.model_validate(COCO_STUDY))
    for (_, phases) in per_epoch.bounds:
        assert [p.checkpoints for p in phases] == [10, 2]
    for (_, phases) in timed.bounds:
        pretrain = phases[0]
        assert pretrain.checkpoints == min(10, int(pretrain.wall_s // 900) + 1)
    from objmae_ray.config import TrialConfig
    cfg = TrialConfig()
    assert 370e6 < checkpoint_bytes(cfg, "pre-train", "lookahead_adamw") < 390e6  # ViT-S ObjMAE: 23.7M x 16 bytes
    assert per_epoch.bytes_written == pytest.approx(per_epoch.bytes_per_trial * per_epoch.trials)
    assert timed.bytes_written < per_epoch.bytes_written
    gpu = plan(SweepSpec.model_validate(COCO_STUDY), Target("gpu_8x", GPUS["H100"]))
    assert gpu.tflops == 5.0  # estimate.gpu_tflops still wins over the GPU's rate
    assert all(p.peak_gib is not None for _, phases in gpu.bounds for p in phases)
