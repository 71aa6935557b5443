"""The cost plan's bounds (sweep/plan.py): each phase runs at the slower of compute and loading, the
GPU-hours follow from that rate, and `objmae-sweep validate` says per configuration which bound applies."""
from __future__ import annotations

import math

import pytest

from objmae_ray.cli import sweep_main
from objmae_ray.config import SweepSpec
from objmae_ray.method.flops import objmae_flops, supervised_flops
from objmae_ray.sweep.plan import LOADER_IMAGES_PER_CORE, plan

COCO_STUDY = {
    "study": "cost", "objectives": [{"metric": "top1", "mode": "max"}], "sampler": {"kind": "grid"},
    "estimate": {"gpu_tflops": 10.0},
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
    # pre-train: 4 CPUs x 200 img/s = 800 img/s loading per worker; compute 1e13 / FLOPs per image
    for (_, phases), alpha in ((high, 0.5), (low, 0.0625)):
        pretrain, linear = phases
        compute = 10e12 / objmae_flops("vit_small", 224, 16, alpha)
        assert pretrain.compute_rate == pytest.approx(compute) and pretrain.loading_rate == 4 * LOADER_IMAGES_PER_CORE["coco"]
        rate = min(compute, 800.0)
        assert pretrain.wall_s == pytest.approx(10 * 72_452 / (2 * rate))  # COCO 2014 train after the paper's filter
        assert pretrain.gpu_hours == pytest.approx(pretrain.wall_s * 2 / 3600)
        # linear probe on CIFAR-100: forward-only steps, 50k train + 10k val images per epoch
        step = supervised_flops("vit_small", 224, 16)
        assert linear.compute_rate == pytest.approx(10e12 * 60_000 / (60_000 * step / 3))
        assert linear.loading_rate == 4 * LOADER_IMAGES_PER_CORE["cifar100"]
    assert high[1][0].bound == "compute" and low[1][0].bound == "loading"  # 631 vs 5,083 img/s of compute
    assert plan(spec).gpu_hours == pytest.approx(sum(p.gpu_hours for _, ps in (high, low) for p in ps))


def test_the_packed_path_lifts_the_loading_bound():
    jpeg, packed = plan(spec_with()), plan(spec_with(store="/stores/coco"))
    low_jpeg, low_packed = jpeg.bounds[1][1][0], packed.bounds[1][1][0]
    assert low_packed.loading_rate == 4 * LOADER_IMAGES_PER_CORE["packed"] and low_packed.bound == "compute"
    assert low_packed.gpu_hours < low_jpeg.gpu_hours / 3
    own = plan(SweepSpec.model_validate({**COCO_STUDY, "estimate": {"gpu_tflops": 10.0, "images_per_core": 50.0}}))
    assert own.bounds[0][1][0].loading_rate == 200.0  # estimate.images_per_core overrides the table


def test_validate_prints_the_bound_of_every_configuration(tmp_path, capsys):
    import yaml

    path = tmp_path / "cost.yaml"
    path.write_text(yaml.safe_dump(COCO_STUDY))
    assert sweep_main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("  alpha=")]
    assert len(lines) == 2
    compute = [f"{10e12 / objmae_flops('vit_small', 224, 16, a):,.0f}" for a in (0.5, 0.0625)]
    assert lines[0].startswith(f"  alpha=0.5: pre-train compute-bound (compute {compute[0]} < loading 800 img/s), "
                               f"linear compute-bound")
    assert lines[1].startswith(f"  alpha=0.0625: pre-train loading-bound (loading 800 < compute {compute[1]} img/s)")
    assert lines[1].endswith("GPU-h")
    assert "cpus_per_worker x 200 (coco files), 1,000 (cifar100 files) img/s per core" in out


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
