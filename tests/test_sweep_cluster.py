"""Offline validation of the shipped cluster YAMLs with Ray's own schema plus objmae-ray's rules (explicit
resources, a CPU-0 head, token authentication on every node), and the capacity check of a trial's workers
against node types x max_workers (objmae_ray/sweep/cluster.py, `objmae-sweep validate --cluster`)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from objmae_ray.config import ResourcesConfig
from objmae_ray.errors import ConfigError
from objmae_ray.sweep.cluster import (NodeType, capacity_problems, config_node_types, load_cluster_config, trial_fits,
                                      worker_types)
from objmae_ray.sweep.cluster import main as cluster_main

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
SPACES = CLUSTER.parent / "search_spaces"


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


# ---- token authentication ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gpu.yaml", "onprem.yaml"])
def test_shipped_configs_start_every_node_with_token_auth(name):
    """Every `ray start` of both configs runs with RAY_AUTH_MODE=token (and Train state tracking for the
    dashboard), and file_mounts ships the token to where Ray looks for it."""
    config = load_cluster_config(CLUSTER / name)
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands")
              for c in config[key] if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        assert "RAY_AUTH_MODE=token" in command and "RAY_TRAIN_ENABLE_STATE_TRACKING=1" in command
    token_mounts = {dest: src for dest, src in config["file_mounts"].items() if dest.endswith(".ray/auth_token")}
    assert list(token_mounts.values()) == ["~/.ray/auth_token"]


@pytest.mark.parametrize("name", ["gpu.yaml", "onprem.yaml"])
def test_node_started_without_token_auth_is_refused(tmp_path, name):
    config = yaml.safe_load((CLUSTER / name).read_text())
    config["worker_start_ray_commands"] = [c.replace("RAY_AUTH_MODE=token ", "")
                                           for c in config["worker_start_ray_commands"]]
    with pytest.raises(ConfigError, match=r"worker_start_ray_commands/\d: `ray start` without RAY_AUTH_MODE=token"):
        load_cluster_config(_write(tmp_path, config))


def test_token_that_is_not_shipped_or_is_written_into_the_file_is_refused(tmp_path):
    config = yaml.safe_load((CLUSTER / "gpu.yaml").read_text())
    del config["file_mounts"]["/home/ray/.ray/auth_token"]
    with pytest.raises(ConfigError, match=r"file_mounts: nothing ships the auth token to ~/\.ray/auth_token"):
        load_cluster_config(_write(tmp_path, config))
    # a token file of its own, named by RAY_AUTH_TOKEN_PATH, must be a file_mounts destination
    config["head_start_ray_commands"][1] = "export RAY_AUTH_TOKEN_PATH=/etc/ray/token; " + config["head_start_ray_commands"][1]
    config["file_mounts"]["/etc/ray/token"] = "~/.ray/auth_token"
    config["file_mounts"]["/home/ray/.ray/auth_token"] = "~/.ray/auth_token"
    load_cluster_config(_write(tmp_path, config))
    del config["file_mounts"]["/etc/ray/token"]
    with pytest.raises(ConfigError, match=r"nothing ships the auth token to /etc/ray/token"):
        load_cluster_config(_write(tmp_path, config))
    config = yaml.safe_load((CLUSTER / "gpu.yaml").read_text())
    config["head_start_ray_commands"][1] = "RAY_AUTH_TOKEN=abc123 " + config["head_start_ray_commands"][1]
    with pytest.raises(ConfigError, match=r"head_start_ray_commands/1: a token written into the file leaks"):
        load_cluster_config(_write(tmp_path, config))


def test_cluster_module_cli_refuses_a_config_without_token_auth(tmp_path, capsys):
    config = yaml.safe_load((CLUSTER / "onprem.yaml").read_text())
    config["head_start_ray_commands"][1] = config["head_start_ray_commands"][1].replace("RAY_AUTH_MODE=token", "")
    bad = _write(tmp_path, config)
    assert cluster_main([str(CLUSTER / "gpu.yaml"), str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"{CLUSTER / 'gpu.yaml'}: ok (gpu_1x")
    assert err.strip().count("\n") == 0 and "head_start_ray_commands/1" in err and str(bad) in err


# ---- capacity: what the node types can ever host ----------------------------------------------------------
def gpu_types() -> list[NodeType]:
    return config_node_types(load_cluster_config(CLUSTER / "gpu.yaml"))


def test_node_types_of_gpu_yaml_are_its_workers_with_max_workers():
    assert gpu_types() == [NodeType("gpu_1x", {"CPU": 8, "GPU": 1}, 8), NodeType("gpu_8x", {"CPU": 96, "GPU": 8}, 2)]


def test_capacity_problems_name_the_field_and_the_largest_node_type():
    one_gpu_only = [NodeType("gpu_1x", {"CPU": 8, "GPU": 1}, 8)]
    two_gpus = ResourcesConfig(use_gpu=True, gpus_per_worker=2, cpus_per_worker=4)
    assert capacity_problems(two_gpus, one_gpu_only, field="base.resources") == [
        "base.resources.gpus_per_worker: a worker needs 2 GPUs, but the largest node type, gpu_1x, has 1"]
    assert capacity_problems(two_gpus, gpu_types()) == []  # gpu_8x holds it
    assert capacity_problems(ResourcesConfig(use_gpu=True, gpus_per_worker=16), gpu_types()) == [
        "resources.gpus_per_worker: a worker needs 16 GPUs, but the largest node type, gpu_8x, has 8"]
    assert capacity_problems(ResourcesConfig(use_gpu=True, cpus_per_worker=97), gpu_types()) == [
        "resources.cpus_per_worker: a worker needs 97 CPUs, but the largest node type, gpu_8x, has 96"]
    # each need alone fits some type, both together none
    lopsided = [NodeType("cpu", {"CPU": 64, "GPU": 0}, 4), NodeType("gpu", {"CPU": 4, "GPU": 4}, 4)]
    assert capacity_problems(ResourcesConfig(use_gpu=True, cpus_per_worker=8), lopsided) == [
        "resources: a worker needs 8 CPU, 1 GPU on one node; no node type has both: cpu (64 CPU, 0 GPU), gpu (4 CPU, 4 GPU)"]
    # 8 x 1 + 2 x 8 = 24 one-GPU workers at most
    assert capacity_problems(ResourcesConfig(use_gpu=True, num_workers=24, cpus_per_worker=4), gpu_types()) == []
    assert capacity_problems(ResourcesConfig(use_gpu=True, num_workers=25, cpus_per_worker=4), gpu_types()) == [
        "resources.num_workers: 25 workers of 4 CPU, 1 GPU, but the cluster holds at most 24 (gpu_1x x 8, gpu_8x x 2)"]
    assert capacity_problems(ResourcesConfig(), []) == ["resources: the cluster has no node that can run a trial's workers"]


def test_validate_with_cluster_refuses_offline_what_no_node_type_can_host(monkeypatch, capsys):
    """`objmae-sweep validate FILE --cluster cluster/gpu.yaml`: one line naming the study's field and the node type."""
    from objmae_ray.cli import sweep_main

    for key, value in {"OBJMAE_COCO_ROOT": "/data/coco", "OBJMAE_IN100_ROOT": "/data/imagenet100",
                       "OBJMAE_COCO_STORE": "/data/stores/coco", "OBJMAE_IN100_STORE": "/data/stores/in100"}.items():
        monkeypatch.setenv(key, value)
    alpha, gpu = str(SPACES / "alpha.yaml"), str(CLUSTER / "gpu.yaml")
    assert sweep_main(["validate", alpha, "--cluster", gpu]) == 0
    assert f"{gpu}: a trial's workers fit gpu_1x, gpu_8x" in capsys.readouterr().out
    assert sweep_main(["validate", alpha, "--cluster", gpu, "--set", "resources.gpus_per_worker=16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {alpha}: base.resources.gpus_per_worker: a worker needs 16 GPUs, but the largest node "
                   f"type, gpu_8x, has 8 (node types of {gpu})"]
    assert sweep_main(["validate", alpha, "--cluster", str(CLUSTER / "onprem.yaml")]) == 0  # local provider: unknown
    assert "capacity not checked" in capsys.readouterr().out


# ---- AWS: image, instance profiles, pinned installs ------------------------------------------------------------
def _gpu() -> dict:
    return yaml.safe_load((CLUSTER / "gpu.yaml").read_text())


def _problems(tmp_path, config) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_cluster_config(_write(tmp_path, config))
    lines = str(err.value).splitlines()
    assert all(line.startswith(f"{tmp_path / 'cluster.yaml'}: ") for line in lines)
    return [line.split(": ", 1)[1] for line in lines]


@pytest.mark.parametrize("image", [None, "", "latest_dlami"])
def test_gpu_node_type_without_image_is_refused_naming_the_field(tmp_path, image):
    config = _gpu()
    if image is None:
        del config["available_node_types"]["gpu_1x"]["node_config"]["ImageId"]
    else:
        config["available_node_types"]["gpu_1x"]["node_config"]["ImageId"] = image
    [problem] = _problems(tmp_path, config)
    assert problem.startswith("available_node_types/gpu_1x/node_config/ImageId: missing, so Ray boots its default "
                              "'AWS Deep Learning AMI (Ubuntu 18.04) V71.0' (CUDA 11.2 driver)")


def test_shipped_gpu_yaml_pins_one_dlami_on_every_node_type():
    config = load_cluster_config(CLUSTER / "gpu.yaml")
    images = {t["node_config"]["ImageId"] for t in config["available_node_types"].values()}
    assert len(images) == 1 and images.pop().startswith("ami-")


def test_head_profile_must_be_one_that_can_launch_workers(tmp_path):
    config = _gpu()
    head = config["available_node_types"]["head"]["node_config"]
    head["IamInstanceProfile"] = {"Name": "objmae-ray-s3"}  # bucket-only: the autoscaler could start nothing
    assert _problems(tmp_path, config) == [
        "available_node_types/head/node_config/IamInstanceProfile: 'objmae-ray-s3' is not documented as able to "
        "launch workers; use objmae-ray-head (cluster/iam/create_roles.sh) or leave it out for Ray's ray-autoscaler-v1"]
    head["IamInstanceProfile"] = {"Arn": "arn:aws:iam::123456789012:instance-profile/objmae-ray-head"}
    load_cluster_config(_write(tmp_path, config))
    del head["IamInstanceProfile"]  # Ray's default profile (EC2 + S3 full access): works, wider
    load_cluster_config(_write(tmp_path, config))


def test_worker_profile_the_head_cannot_pass_is_refused(tmp_path):
    config = _gpu()
    config["available_node_types"]["gpu_8x"]["node_config"]["IamInstanceProfile"] = {"Name": "admin"}
    config["provider"]["cloudwatch"] = {"agent": {"config": "cloudwatch-agent-config.json"}}
    assert _problems(tmp_path, config) == [
        "available_node_types/gpu_8x/node_config/IamInstanceProfile: 'admin' cannot be passed by the head's "
        "objmae-ray-head (cluster/iam/head-policy.json allows objmae-ray-worker only)",
        "provider/cloudwatch: objmae-ray-head (cluster/iam/head-policy.json) does not cover Ray's CloudWatch calls; "
        "leave it out or give the head ray-autoscaler-v1"]


@pytest.mark.parametrize("command, unpinned", [
    ("pip install -q -e /home/ray/objmae-ray", "-e /home/ray/objmae-ray"),
    ("pip install 'torch>=2.4,<3' torchvision", "torch>=2.4,<3, torchvision"),
    ("cd /tmp && python3 -m pip install -U timm==1.0.31", "timm==1.0.31"),  # its dependencies float
    ("pip3 install --no-deps timm==1.0.*", "timm==1.0.*"),
    ("pip install -r requirements.txt", "-r requirements.txt"),
    ("echo start; env PIP_NO_CACHE_DIR=1 sudo pip install ray", "ray"),
    ("pip install -q \\\n  'torch>=2.4'", "torch>=2.4"),  # a continued line
])
def test_unpinned_pip_install_in_setup_commands_is_refused(tmp_path, command, unpinned):
    config = _gpu()
    config["setup_commands"][1] = command
    assert _problems(tmp_path, config) == [
        f"setup_commands/1: `pip install` of {unpinned} without a constraints file installs whatever is newest when "
        f"each node boots; add -c <checkout>/constraints/lock.txt (refreshed by scripts/lock.sh)"]


@pytest.mark.parametrize("command", [
    "pip install -q --constraint /home/ray/objmae-ray/constraints/lock.txt -e /home/ray/objmae-ray",
    "pip install --constraint=/home/ray/objmae-ray/constraints/lock.txt 'torch>=2.4'",
    "pip install -c/home/ray/lock.txt -e .",
    "pip install --no-deps torch==2.14.1+cu128",  # exact, and nothing else comes with it
    "echo pip install is how it is done",  # not a pip command
])
def test_pinned_pip_installs_pass(tmp_path, command):
    config = _gpu()
    config["setup_commands"][1] = command
    load_cluster_config(_write(tmp_path, config))


def test_rays_default_head_setup_command_counts_as_unpinned(tmp_path):
    """AWS's defaults.yaml runs `pip install 'boto3>=1.4.8'` on the head when the file sets no head_setup_commands."""
    config = _gpu()
    del config["head_setup_commands"]
    assert _problems(tmp_path, config) == [
        "head_setup_commands (Ray's default, the file sets none): `pip install` of boto3>=1.4.8 without a constraints "
        "file installs whatever is newest when each node boots; add -c <checkout>/constraints/lock.txt "
        "(refreshed by scripts/lock.sh)"]


def test_every_problem_of_a_config_is_one_line_of_the_cli(tmp_path, capsys):
    config = _gpu()
    del config["available_node_types"]["gpu_8x"]["node_config"]["ImageId"]
    config["available_node_types"]["head"]["node_config"]["IamInstanceProfile"] = {"Name": "objmae-ray-s3"}
    config["available_node_types"]["gpu_1x"]["worker_setup_commands"] = ["pip install nvitop"]
    bad = _write(tmp_path, config)
    assert cluster_main([str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split(": ")[2] for line in err] == [
        "available_node_types/gpu_8x/node_config/ImageId", "available_node_types/head/node_config/IamInstanceProfile",
        "available_node_types/gpu_1x/worker_setup_commands/0"]
    assert all(line.startswith(f"error: {bad}: ") for line in err)


def test_onprem_installs_are_pinned_too(tmp_path):
    config = yaml.safe_load((CLUSTER / "onprem.yaml").read_text())
    config["setup_commands"] = ["python3 -m pip install -q -e ~/objmae-ray"]
    assert [p.split(":")[0] for p in _problems(tmp_path, config)] == ["setup_commands/0"]


# ---- constraints/lock.txt ----------------------------------------------------------------------------------------
def _lock() -> dict[str, str]:
    lines = (CLUSTER.parent / "constraints" / "lock.txt").read_text().splitlines()
    pins = dict(line.split("==", 1) for line in lines if line and not line.startswith("#"))
    return {name.lower().replace("_", "-"): version for name, version in pins.items()}


def test_lock_pins_every_runtime_dependency_within_pyprojects_ranges():
    import tomllib

    from packaging.requirements import Requirement

    lock = _lock()
    project = tomllib.loads((CLUSTER.parent / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"] + project["optional-dependencies"]["test"]:
        requirement = Requirement(spec)
        name = requirement.name.lower().replace("_", "-")
        assert name in lock, f"{name} is not pinned in constraints/lock.txt (run scripts/lock.sh)"
        assert requirement.specifier.contains(lock[name], prereleases=True), f"{name}=={lock[name]} outside {spec}"
    assert not any(name.startswith(("nvidia-", "cuda-")) or "+" in v for name, v in lock.items())  # per torch build


def test_lock_is_what_this_environment_runs():
    """The tested environment is made with the lock (scripts/setup.sh -c): a pin that differs from the installed
    version means the lock was not refreshed (bash scripts/lock.sh) after an upgrade."""
    from importlib.metadata import PackageNotFoundError, version

    differ = {}
    for name, pinned in _lock().items():
        try:
            installed = version(name).split("+")[0]
        except PackageNotFoundError:
            continue
        if installed != pinned:
            differ[name] = (pinned, installed)
    assert differ == {}


def test_gpu_nodes_install_the_locked_torch_pair_from_the_cuda_12_8_index():
    config = _gpu()
    torch_install = config["setup_commands"][0]
    lock = _lock()
    assert f"torch=={lock['torch']}+cu128 torchvision=={lock['torchvision']}+cu128" in torch_install
    assert "--extra-index-url https://download.pytorch.org/whl/cu128" in torch_install
    setup = (CLUSTER.parent / "scripts" / "setup.sh").read_text()
    assert f"torch=={lock['torch']} torchvision=={lock['torchvision']}" in setup
    installs = [line for line in setup.splitlines() if re.search(r"\bpip\"? install\b", line)]
    assert len(installs) >= 2 and all("-c constraints/lock.txt" in line for line in installs), installs
