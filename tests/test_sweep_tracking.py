"""MLflow tracking's pieces without Ray running (sweep/tracking.py): the trial config as params, and MLflow
requested but not installed refused in one line naming the extra. The tracked sweep itself, read back
through the MLflow client, is in test_sweep_ops_ray.py."""
from __future__ import annotations

import sys

from objmae_ray.cli import sweep_main
from objmae_ray.sweep.space import base_trial
from objmae_ray.sweep.spec import load_spec
from objmae_ray.sweep.tracking import flat_params
from test_sweep_tuner import tiny_spec


def test_trial_config_as_params(tmp_path):
    spec = load_spec(tiny_spec(tmp_path, "t", "num_samples: 1\nsearch_space:\n  alpha: {choices: [0.25]}\n"))
    params = flat_params(base_trial(spec).model_dump(mode="json"))
    assert params["model.preset"] == "micro" and params["transfer.0.mode"] == "finetune"
    assert params["pretrain.data.root"] == "None" and params["masking.alpha"] == str(base_trial(spec).masking.alpha)
    assert all(isinstance(v, str) and not isinstance(v, (dict, list)) for v in params.values())


def test_mlflow_missing_is_one_line(tmp_path, monkeypatch, capsys):
    for module in ("mlflow", "mlflow.tracking", "mlflow.entities"):
        monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed
    spec_file = tiny_spec(tmp_path, "t", "sampler: {kind: grid}\nsearch_space:\n  padding: {choices: [zero]}\n")
    assert sweep_main([str(spec_file), "--mlflow", f"file:{tmp_path / 'mlruns'}", "--name", "never"]) == 2
    assert capsys.readouterr().err == \
        "error: tracking.mlflow: mlflow is not installed (pip install 'objmae-ray[mlflow]')\n"
    assert not (tmp_path / "runs" / "never").exists()
