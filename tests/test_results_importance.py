"""The report's view of the stored study (results/importance.py): PED-ANOVA importance finds the parameter the
objective depends on, too few trials give a stated reason instead of a plot, parallel coordinates are drawn,
and objmae-report shows both for a run with optuna.db."""
from __future__ import annotations

import json

import optuna

from objmae_ray.results.importance import EVALUATOR, MIN_IMPORTANCE_TRIALS, study_figures
from objmae_ray.results.page import write_report
from objmae_ray.results.plots import overlapping_texts
from objmae_ray.sweep.rundir import STUDY_FILE, load_run_spec
from objmae_ray.sweep.search import build_search
from objmae_ray.sweep.spec import load_spec
from objmae_ray.sweep.study import open_storage
from test_results_figures import saved_figures
from test_sweep_tuner import SMOKE


def smoke_study(n: int, storage=None, name: str = "s") -> optuna.Study:
    """n configurations of the smoke space (random sampler, seed 0); top1 = 100 * alpha, whatever else is chosen."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    space = build_search(load_spec(SMOKE)).searcher._space
    for _ in range(n):
        trial = study.ask(space)
        study.tell(trial, 100.0 * trial.params["masking.alpha"])
    return study


def test_importance_finds_the_parameter_the_objective_depends_on(tmp_path, monkeypatch):
    spec = load_spec(SMOKE)
    saved = saved_figures(monkeypatch)
    made, numbers = study_figures(smoke_study(24), spec, tmp_path)
    values = numbers["importance"]["values"]["top1"]
    assert numbers["importance"]["evaluator"] == EVALUATOR and "PedAnovaImportanceEvaluator" in EVALUATOR
    assert max(values, key=values.get) == "masking.alpha" and values["masking.alpha"] > 0.6
    assert abs(sum(values.values()) - 1.0) < 1e-9
    assert set(made.values()) == {"importance.png", "parallel_coordinates.png"} and numbers["skipped"] == {}
    for name in made.values():
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    # readable at the saved size: no title, label or tick label runs into another
    assert {name: overlapping_texts(fig, dpi) for name, fig, dpi in saved} == {name: [] for name in made.values()}


def test_too_few_trials_say_so(tmp_path):
    spec = load_spec(SMOKE)
    made, numbers = study_figures(smoke_study(MIN_IMPORTANCE_TRIALS - 1), spec, tmp_path)
    assert set(made.values()) == {"parallel_coordinates.png"} and not (tmp_path / "importance.png").exists()
    reason = (f"{MIN_IMPORTANCE_TRIALS - 1} completed trial(s) in the study; {EVALUATOR} needs at least "
              f"{MIN_IMPORTANCE_TRIALS} (5 in the top quantile)")
    assert numbers["skipped"] == {"hyper-parameter importance": reason}
    made, numbers = study_figures(smoke_study(1, name="one"), spec, tmp_path / "x")
    assert made == {} and "needs at least 2" in numbers["skipped"]["parallel coordinates"]
    made, numbers = study_figures(None, spec, tmp_path)
    assert made == {} and "no stored Optuna study" in numbers["skipped"]["search importance and parallel coordinates"]


def test_report_shows_the_stored_study(run_dir):
    """A run with optuna.db (study named after the run): the page embeds the parallel coordinates and states why
    there is no importance plot for its 3 configurations."""
    smoke_study(3, storage=open_storage(f"sqlite:///{run_dir / STUDY_FILE}"), name=run_dir.name)
    out = write_report(run_dir, with_figures=True, num_images=1)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["study"] == {"name": run_dir.name, "complete_trials": 3, "trials": 3}
    assert "hyper-parameter importance" in summary["skipped"] and (out / "parallel_coordinates.png").is_file()
    page = (out / "index.html").read_text()
    assert "hyper-parameter importance skipped: 3 completed trial(s) in the study" in page
    assert 'alt="parallel_coordinates.png"' in page and load_run_spec(run_dir).study == "exp"
