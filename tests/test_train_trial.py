"""The trial's driver side without Ray (train/trial.py): refusal before any worker starts (the rules,
then file system and cluster), TrialConfig from mappings and YAML, the CLI's one-line errors."""
from __future__ import annotations

import pytest

from objmae_ray.config import TrialConfig, trial_from_dict
from objmae_ray.errors import ConfigError
from objmae_ray.train.trial import check_trial, load_trial_config, main


def test_validate_refuses_unknown_preset():
    cfg = TrialConfig.model_validate({"model": {"preset": "vit_huge"}})
    with pytest.raises(ConfigError, match=r"^model\.preset: unknown preset 'vit_huge'"):
        check_trial(cfg, cluster_resources={"CPU": 4})


def test_validate_refuses_gpus_on_cpu_cluster():
    cfg = TrialConfig.model_validate({"resources": {"use_gpu": True, "gpus_per_worker": 1}})
    with pytest.raises(ConfigError, match=r"^resources\.use_gpu: the cluster has 0 GPUs, a worker needs 1"):
        check_trial(cfg, cluster_resources={"CPU": 8})
    check_trial(cfg, cluster_resources={"CPU": 8, "GPU": 1})  # fine with a GPU


def test_validate_refuses_too_few_cpus():
    """Against explicit live resources: a worker needs cpus_per_worker; exactly that many is enough."""
    cfg = TrialConfig.model_validate({"resources": {"cpus_per_worker": 2.5}})
    with pytest.raises(ConfigError, match=r"^resources\.cpus_per_worker: 2\.5 but the cluster has 2 CPUs$"):
        check_trial(cfg, cluster_resources={"CPU": 2.0, "GPU": 4})
    with pytest.raises(ConfigError, match=r"^resources\.cpus_per_worker: 2\.5 but the cluster has 0 CPUs$"):
        check_trial(cfg, cluster_resources={})
    check_trial(cfg, cluster_resources={"CPU": 2.5})
    check_trial(cfg, cluster_resources={"CPU": 64})


def test_validate_refuses_missing_dataset_path(tmp_path):
    missing = tmp_path / "nope"
    cfg = TrialConfig.model_validate({"transfer": [{"data": {"kind": "folder", "root": str(missing)}}]})
    with pytest.raises(ConfigError, match=r"^transfer\.0\.data\.root: .*nope not found"):
        check_trial(cfg, cluster_resources={"CPU": 4})
    cfg = TrialConfig.model_validate({"pretrain": {"data": {"kind": "coco", "root": str(tmp_path),
                                                            "ann_file": "ann.json"}}})
    with pytest.raises(ConfigError, match=r"^pretrain\.data\.ann_file: .*ann\.json not found"):
        check_trial(cfg, cluster_resources={"CPU": 4})


def test_validate_refuses_missing_cam_cache_and_warmup_past_epochs(tmp_path):
    folder = {"kind": "folder", "root": str(tmp_path)}
    cfg = TrialConfig.model_validate({"masking": {"selection": "cam"},
                                      "pretrain": {"data": {**folder, "cam_cache": str(tmp_path / "cams")}}})
    with pytest.raises(ConfigError, match=r"^pretrain\.data\.cam_cache: .*cams not found"):
        check_trial(cfg, cluster_resources={"CPU": 4})
    (tmp_path / "cams").mkdir()
    check_trial(cfg, cluster_resources={"CPU": 4})
    cfg = TrialConfig.model_validate({"masking": {"selection": "cam"},
                                      "pretrain": {"data": {"cam_cache": str(tmp_path / "cams")}}})
    with pytest.raises(ConfigError, match=r"^masking\.selection: 'cam' .* pretrain\.data\.kind is 'synthetic'"):
        check_trial(cfg, cluster_resources={"CPU": 4})
    cfg = TrialConfig.model_validate({"pretrain": {"data": folder}})
    with pytest.raises(ConfigError, match=r"^masking\.selection: 'object' needs object masks"):
        check_trial(cfg, cluster_resources={"CPU": 4})
    cfg = TrialConfig.model_validate({"pretrain": {"epochs": 2, "warmup_epochs": 3}})
    with pytest.raises(ConfigError, match=r"^pretrain\.warmup_epochs: 3 is more than epochs \(2\)"):
        check_trial(cfg, cluster_resources={"CPU": 4})


@pytest.mark.parametrize("body, field", [
    ({"masking": {"alpha": 1.5}}, "masking.alpha"),
    ({"masking": {"alpha": 0.0}}, "masking.alpha"),
    ({"pretrain": {"epohcs": 3}}, "pretrain.epohcs"),
])
def test_pydantic_refusals_name_the_field(body, field):
    with pytest.raises(ConfigError) as err:
        trial_from_dict(body)
    assert field in str(err.value) and "\n" not in str(err.value)


def test_reserved_keys_are_stripped():
    cfg = trial_from_dict({**TrialConfig().model_dump(), "_storage_path": "/x", "_hooks": {"a": 1}})
    assert cfg == TrialConfig()


def test_cli_bad_yaml_is_one_line(tmp_path, capsys):
    path = tmp_path / "trial.yaml"
    path.write_text("masking:\n  alpha: 2.0\n")
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err and "masking.alpha" in err
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_trial_config(path)


