"""Offline validation of the shipped cluster YAMLs with Ray's own schema plus objmae-ray's rules."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from objmae_ray.sweep.cluster import load_cluster_config, trial_fits, worker_types
from objmae_ray.config import ResourcesConfig
from objmae_ray.errors import ConfigError

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def _write(tmp_path, config) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("name", ["gpu.yaml", "onprem.yaml"])
def test_shipped_cluster_configs_pass_rays_schema(name):
    config = load_cluster_config(CLUSTER / name)
    assert config["cluster_name"].startswith("objmae-ray")


def test_gpu_yaml_has_cpu_head_and_spot_gpu_workers():
    config = load_cluster_config(CLUSTER / "gpu.yaml")
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"]["CPU"] == 0
    assert "InstanceMarketOptions" not in head["node_config"]  # on-demand head
    workers = worker_types(config)
    assert {r["GPU"] for r in workers.values()} == {1, 8}
    for name in workers:
        assert config["available_node_types"][name]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start  # reachable only through `ray dashboard` (SSH)


def test_typo_in_node_type_is_refused_with_field(tmp_path):
    config = yaml.safe_load((CLUSTER / "gpu.yaml").read_text())
    config["available_node_types"]["gpu_1x"]["min_worker"] = 1  # typo of min_workers
    with pytest.raises(ConfigError, match="available_node_types/gpu_1x.*min_worker"):
        load_cluster_config(_write(tmp_path, config))


def test_fractional_resource_is_refused(tmp_path):
    config = yaml.safe_load((CLUSTER / "gpu.yaml").read_text())
    config["available_node_types"]["gpu_8x"]["resources"]["GPU"] = 0.5
    with pytest.raises(ConfigError, match="gpu_8x/resources/GPU.*integer"):
        load_cluster_config(_write(tmp_path, config))


def test_missing_gpu_resource_is_refused(tmp_path):
    config = yaml.safe_load((CLUSTER / "gpu.yaml").read_text())
    del config["available_node_types"]["gpu_1x"]["resources"]["GPU"]
    with pytest.raises(ConfigError, match="gpu_1x/resources: missing explicit 'GPU'"):
        load_cluster_config(_write(tmp_path, config))


def test_head_that_schedules_trials_is_refused(tmp_path):
    config = yaml.safe_load((CLUSTER / "gpu.yaml").read_text())
    config["available_node_types"]["head"]["resources"]["CPU"] = 8
    with pytest.raises(ConfigError, match="head/resources/CPU"):
        load_cluster_config(_write(tmp_path, config))


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: cluster config not found"):
        load_cluster_config(tmp_path / "nope.yaml")


def test_trial_fits_checks_per_worker_bundle_and_total_capacity():
    config = load_cluster_config(CLUSTER / "gpu.yaml")
    one_gpu = ResourcesConfig(num_workers=1, use_gpu=True, cpus_per_worker=6, gpus_per_worker=1)
    assert trial_fits(one_gpu, config) == ["gpu_1x", "gpu_8x"]
    too_many_cpus = ResourcesConfig(num_workers=1, use_gpu=True, cpus_per_worker=12, gpus_per_worker=1)
    assert trial_fits(too_many_cpus, config) == ["gpu_8x"]
    # 8 x gpu_1x + 2 x 8 = 24 GPUs at most
    assert trial_fits(ResourcesConfig(num_workers=24, use_gpu=True, cpus_per_worker=4), config)
    assert trial_fits(ResourcesConfig(num_workers=25, use_gpu=True, cpus_per_worker=4), config) == []


def test_head_without_driver_resource_is_refused(tmp_path):
    config = yaml.safe_load((CLUSTER / "gpu.yaml").read_text())
    del config["available_node_types"]["head"]["resources"]["objmae_driver"]
    with pytest.raises(ConfigError, match="head/resources: missing 'objmae_driver'"):
        load_cluster_config(_write(tmp_path, config))
