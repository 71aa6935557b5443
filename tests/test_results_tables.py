"""The one pivot and its two forms (results/tables.py, written by results/page.py) on run directories laid
out as Tune + the trial leave them (sweep.yaml, trial dirs with params.json / result.json), with known
metrics: the means and spreads in the Markdown and CSV must be the ones of the trials they came from."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from objmae_ray.cli import report_main as main
from objmae_ray.config import SweepSpec
from objmae_ray.results.page import write_report, write_results
from objmae_ray.results.records import TrialRecord, records_from_dir
from objmae_ray.results.stats import pareto_front, welch_p
from objmae_ray.results.tables import (NoiseTest, Row, csv_text, html_table, markdown, measured_speedup, noise_calls, note,
                                       objective_key, paper_table, pivot, results_table, shown_speedup, speedup_kind)
from objmae_ray.sweep.rundir import save_spec
from objmae_ray.sweep.space import TRIAL_INDEX
from objmae_ray.sweep.spec import load_spec
from run_helpers import SPEC

REPO = Path(__file__).resolve().parents[1]
BASE = {"model": {"preset": "micro", "img_size": 32, "patch_size": 8},
        "pretrain": {"epochs": 1, "warmup_epochs": 0, "batch_size": 8, "lr": 1e-3},
        "transfer": [{"epochs": 2, "warmup_epochs": 0, "batch_size": 8, "lr": 1e-3}]}


def make_run(tmp_path: Path, search_space: dict, repeats: int = 1, base: dict | None = None) -> tuple[Path, SweepSpec]:
    spec = SweepSpec.model_validate({"study": "t", "objectives": [{"metric": "top1", "mode": "max"}],
                                     "sampler": {"kind": "grid"}, "repeats": repeats, "base": base or BASE,
                                     "search_space": search_space})
    run = tmp_path / "runs" / "t-1"
    save_spec(spec, str(run))
    return run, spec


def add_trial(run: Path, spec: SweepSpec, trial_id: str, params: dict, *, repeat: int = 0,
              phases: list[list[tuple[float, float]]], recon: float = 0.5, speedup: float = 2.0,
              images_per_s: float = 100.0, stop_after: int | None = None) -> None:
    """One trial: params.json (base config + dotted searched values + repeat index) and result.json with one
    pre-train report, then per transfer phase one report per (top1, top5) epoch; `stop_after` cuts the history."""
    cfg = spec.base.model_dump()
    (run / f"trial_{trial_id}").mkdir(parents=True)
    (run / f"trial_{trial_id}" / "params.json").write_text(json.dumps({**cfg, **params, TRIAL_INDEX: repeat}))
    reports = [{"phase": "pretrain", "phase_index": 0, "epoch": 0, "recon_loss": recon, "recon_zero_loss": 0.95,
                "top1": 0.0, "top5": 0.0, "speedup_est": speedup, "images_per_s": images_per_s, "done": False}]
    for i, epochs in enumerate(phases, start=1):
        reports += [{"phase": "finetune", "phase_index": i, "epoch": e, "recon_loss": recon, "top1": t1, "top5": t5,
                     "speedup_est": speedup, "done": False} for e, (t1, t5) in enumerate(epochs)]
    reports[-1]["done"] = True
    reports = reports[:stop_after]
    lines = [json.dumps({**r, "trial_id": trial_id, "training_iteration": k + 1}) for k, r in enumerate(reports)]
    (run / f"trial_{trial_id}" / "result.json").write_text("\n".join(lines) + "\n")


def md_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]


def test_table8_padding_mean_and_spread_over_seeds(tmp_path):
    run, spec = make_run(tmp_path, {"padding": {"choices": ["zero", "replicate", "random", "throwout"]}}, repeats=2)
    # final epoch counts, not the best epoch: zero's first seed peaks at 90 mid-run
    add_trial(run, spec, "z0", {"masking.padding": "zero"}, repeat=0, phases=[[(90.0, 99.0), (83.0, 94.0)]])
    add_trial(run, spec, "z1", {"masking.padding": "zero"}, repeat=1, phases=[[(10.0, 20.0), (84.0, 94.5)]])
    add_trial(run, spec, "p0", {"masking.padding": "replicate"}, repeat=0, phases=[[(1.0, 2.0), (82.0, 94.0)]])
    add_trial(run, spec, "p1", {"masking.padding": "replicate"}, repeat=1, phases=[[(1.0, 2.0), (83.0, 94.1)]])
    add_trial(run, spec, "r0", {"masking.padding": "random"}, repeat=0, phases=[[(1.0, 2.0), (83.5, 93.8)]])
    add_trial(run, spec, "r1", {"masking.padding": "random"}, repeat=1, phases=[[(1.0, 2.0), (83.5, 93.8)]])
    add_trial(run, spec, "t0", {"masking.padding": "throwout"}, repeat=0, phases=[[(1.0, 2.0), (80.0, 90.0)]])
    add_trial(run, spec, "t1", {"masking.padding": "throwout"}, repeat=1, phases=[[(99.0, 99.0), (99.0, 99.0)]],
              stop_after=2)  # stopped by ASHA after its first fine-tune epoch: left out

    assert main([str(run), "--no-figures"]) == 0
    out = run / "report"
    md = (out / "table8_padding.md").read_text()
    assert md.startswith("## Table 8 (paper form): Ablation of the padding mode (study t)")
    rows = md_rows(md)
    assert rows[0] == ["Padding Mode", "n", "Top-1", "Top-5", "vs best"]
    # Welch's t-test against Zero (the first best row): replicate (82, 83) vs (83, 84): t = -1 / sqrt(0.5),
    # 2 degrees of freedom, two-sided p = 1 - |t| / sqrt(t^2 + 2) = 0.29; random (83.5, 83.5): t = 0, p = 1
    assert rows[1:] == [
        ["Zero", "2", "83.50 ± 0.71", "94.25 ± 0.35", "best"],  # sample std of (83, 84) = 0.7071
        ["Replicate", "2", "82.50 ± 0.71", "94.05 ± 0.07", "≈ p=0.29"],
        ["Random", "2", "83.50", "93.80", "≈ p=1"],  # identical seeds: spread 0, shown without ±
        ["Throwout", "1", "80.00", "90.00", "-"],  # one finished seed: no call
    ]
    assert "1 stopped or failed trial(s) left out" in md and "Welch's t-test on top1" in md

    table = list(csv.DictReader((out / "table8_padding.csv").open()))
    assert [r["masking.padding"] for r in table] == ["zero", "replicate", "random", "throwout"]
    assert [int(r["n"]) for r in table] == [2, 2, 2, 1] and [int(r["excluded"]) for r in table] == [0, 0, 0, 1]
    assert float(table[0]["top1_mean"]) == 83.5 and math.isclose(float(table[0]["top1_std"]), math.sqrt(0.5),
                                                                  rel_tol=1e-5)
    assert math.isclose(float(table[1]["top5_mean"]), 94.05) and float(table[3]["top1_std"]) == 0.0
    assert [r["vs_best_top1"] for r in table] == ["best", "≈ p=0.29", "≈ p=1", "-"]  # each row its own call
    page = (out / "index.html").read_text()
    assert "<td>Zero</td><td>2</td><td>83.50 ± 0.71</td>" in page and "8 trials (7 done, 1 stopped)" in page


def test_table9_model_and_alpha_rows_in_search_order(tmp_path):
    run, spec = make_run(tmp_path, {"selection": {"choices": ["object", "mae"]}, "alpha": {"choices": [0.5, 0.17]}})
    top1 = {("object", 0.5): 87.52, ("object", 0.17): 88.40, ("mae", 0.5): 89.52, ("mae", 0.17): 88.38}
    for i, ((selection, alpha), value) in enumerate(top1.items()):
        add_trial(run, spec, f"x{i}", {"masking.selection": selection, "masking.alpha": alpha},
                  phases=[[(0.0, 0.0), (value, value + 9)]])
    table = paper_table(spec)
    assert table.number == "9" and table.dims == ["masking.selection", "masking.alpha"]
    rows = pivot(records_from_dir(run), table, spec)
    assert [(r.values["masking.selection"], r.values["masking.alpha"]) for r in rows] == list(top1)
    assert [r.mean["top1"] for r in rows] == list(top1.values())
    assert [r.mean["top5"] for r in rows] == [v + 9 for v in top1.values()]
    md = (write_report(run, with_figures=False) / "table9_alpha.md").read_text()
    # one seed per row: the best row (MAE 0.5) is marked, no other call can be made
    assert md_rows(md)[1] == ["ObjMAE", "0.5", "1", "87.52", "96.52", "-"] and md_rows(md)[4][0] == "MAE"
    assert md_rows(md)[3][-1] == "best" and "No call on noise" in md


def test_table5_one_column_pair_per_transfer_phase(tmp_path):
    base = {**BASE, "transfer": [
        {"mode": "finetune", "epochs": 1, "warmup_epochs": 0, "batch_size": 8, "lr": 1e-3,
         "data": {"kind": "folder", "root": "/data/imagenet100"}},
        {"mode": "linear", "epochs": 2, "warmup_epochs": 0, "batch_size": 8, "lr": 0.1,
         "data": {"kind": "folder", "root": "/data/imagenet100"}},
        {"mode": "finetune", "epochs": 1, "warmup_epochs": 0, "batch_size": 8, "lr": 1e-3,
         "data": {"kind": "cifar100", "root": "/data/cifar"}}]}
    run, spec = make_run(tmp_path, {"selection": {"choices": ["mae", "object"]}}, repeats=2, base=base)
    add_trial(run, spec, "m0", {"masking.selection": "mae"}, repeat=0, speedup=1.9,
              phases=[[(89.0, 98.0)], [(30.0, 55.0), (33.0, 60.0)], [(82.0, 95.0)]])
    add_trial(run, spec, "m1", {"masking.selection": "mae"}, repeat=1, speedup=1.9,
              phases=[[(90.0, 98.4)], [(31.0, 56.0), (34.0, 61.0)], [(84.0, 96.0)]])
    add_trial(run, spec, "o0", {"masking.selection": "object"}, repeat=0, speedup=2.1,
              phases=[[(87.5, 97.5)], [(29.0, 55.0), (29.8, 57.2)], [(81.8, 94.0)]])
    table = paper_table(spec)
    assert table.number == "5"
    assert [c.title for c in table.columns] == [
        "Speed Up", "Fine-tune imagenet100 Top-1", "Fine-tune imagenet100 Top-5", "Linear probe imagenet100 Top-1",
        "Linear probe imagenet100 Top-5", "Fine-tune CIFAR-100 Top-1", "Fine-tune CIFAR-100 Top-5"]
    rows = pivot(records_from_dir(run), table, spec)
    mae, obj = rows
    assert mae.values == {"masking.selection": "mae"} and len(mae.trials) == 2
    assert mae.mean == pytest.approx({"speedup": 1.9, "top1_phase1": 89.5, "top5_phase1": 98.2, "top1_phase2": 33.5,
                                      "top5_phase2": 60.5, "top1_phase3": 83.0, "top5_phase3": 95.5})
    assert mae.std["top1_phase3"] == pytest.approx(math.sqrt(2.0)) and mae.std["speedup"] == 0.0
    assert obj.mean["top1_phase2"] == 29.8 and obj.std["top1_phase2"] == 0.0  # the probe's last epoch
    md = (write_report(run, with_figures=False) / "table5_transfer.md").read_text()
    assert md_rows(md)[1] == ["MAE", "2", "1.9x", "89.50 ± 0.71", "98.20 ± 0.28", "33.50 ± 0.71", "60.50 ± 0.71",
                              "83.00 ± 1.41", "95.50 ± 0.71", "best", "best", "best"]  # vs best, per phase's top-1
    assert md_rows(md)[0][-1] == "vs best (Fine-tune CIFAR-100 Top-1)" and md_rows(md)[2][-3:] == ["-", "-", "-"]
    assert " vs best: Welch's t-test on top1_phase1, top1_phase2, top1_phase3 over the repeats against the best" in md


def test_table4_alpha_speedup_recon_and_seed_as_repeat(tmp_path):
    run, spec = make_run(tmp_path, {"alpha": {"choices": [0.5, 0.25]}, "seed": {"choices": [0, 1]}})
    add_trial(run, spec, "a", {"masking.alpha": 0.5, "seed": 0}, recon=0.56, speedup=1.9, images_per_s=100.0,
              phases=[[(0, 0), (89.0, 98.0)]])
    add_trial(run, spec, "b", {"masking.alpha": 0.5, "seed": 1}, recon=0.58, speedup=1.9, images_per_s=110.0,
              phases=[[(0, 0), (90.0, 98.0)]])
    add_trial(run, spec, "c", {"masking.alpha": 0.25, "seed": 0}, recon=0.48, speedup=3.6, images_per_s=330.0,
              phases=[[(0, 0), (88.0, 97.0)]])
    table = paper_table(spec)
    assert table.number == "4" and table.dims == ["masking.alpha"]  # the searched seed pools, it is no row
    md = (write_report(run, with_figures=False) / "table4_alpha.md").read_text()
    assert md_rows(md)[0] == ["α", "n", "Speed Up", "Pre-train img/s", "Recon Loss", "Zero-pred Loss", "Top-1",
                              "Top-5", "vs best"]
    assert md_rows(md)[1:] == [["0.5", "2", "1.9x", "105.0 ± 7.1", "0.5700 ± 0.0141", "0.9500", "89.50 ± 0.71",
                                "98.00", "best"],
                               ["0.25", "1", "3.6x", "330.0", "0.4800", "0.9500", "88.00", "97.00", "-"]]


def test_other_dimensions_get_the_generic_ablation_table(tmp_path):
    run, spec = make_run(tmp_path, {"pretrain.lr": {"choices": [0.01, 0.001]}})
    add_trial(run, spec, "a", {"pretrain.lr": 0.001}, phases=[[(0, 0), (40.0, 70.0)]])
    table = paper_table(spec)
    assert table.number == "ablation" and table.dims == ["pretrain.lr"]
    rows = pivot(records_from_dir(run), table, spec)
    assert [r.values["pretrain.lr"] for r in rows] == [0.001] and rows[0].mean["top1"] == 40.0


def test_repository_search_spaces_pick_their_paper_tables(monkeypatch, tmp_path):
    for var in ("OBJMAE_COCO_ROOT", "OBJMAE_IN100_ROOT", "OBJMAE_CIFAR_ROOT", "OBJMAE_IN100_CAM"):
        monkeypatch.setenv(var, str(tmp_path))
    for var in ("OBJMAE_COCO_STORE", "OBJMAE_IN100_STORE", "OBJMAE_IN100_CAM_STORE", "OBJMAE_CIFAR_STORE"):
        monkeypatch.setenv(var, str(tmp_path / "stores-on-the-workers"))
    picked = {f.stem: paper_table(load_spec(f)).number for f in sorted((REPO / "search_spaces").glob("*.yaml"))}
    assert picked == {"alpha": "9", "alpha_cam": "4", "joint": "ablation", "padding": "8", "patch_size": "7",
                      "sanity": "5", "selection": "6", "smoke": "ablation", "transfer": "5"}


def test_bad_run_directories_give_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'missing'}: run directory not found\n"
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sweep.yaml: not found" in err
    run, _ = make_run(tmp_path, {"padding": {"choices": ["zero"]}})
    assert main([str(run)]) == 2
    assert capsys.readouterr().err == f"error: {run}: no trials found (no trial directory with params.json)\n"


def test_error_txt_counts_only_when_nothing_was_reported_after_it(tmp_path):
    """A trial that errored and was finished by `objmae-sweep --resume` is done, not failed."""
    import os

    from objmae_ray.results.records import records_from_dir

    run, spec = make_run(tmp_path, {"padding": {"choices": ["zero"]}})
    add_trial(run, spec, "a", {"masking.padding": "zero"}, phases=[[(50.0, 90.0), (60.0, 95.0)]])
    add_trial(run, spec, "b", {"masking.padding": "zero"}, phases=[[(50.0, 90.0)]], stop_after=1)
    for trial, error_age in (("a", -100), ("b", +100)):  # a: error before its last report; b: after
        error = run / f"trial_{trial}" / "error.txt"
        error.write_text("worker died")
        result_mtime = (run / f"trial_{trial}" / "result.json").stat().st_mtime
        os.utime(error, (result_mtime + error_age, result_mtime + error_age))
    status = {r.trial_id: r.status for r in records_from_dir(run)}
    assert status == {"a": "done", "b": "error"}


# ---- results form (results.md / results.csv) ---------------------------------------------------------
def test_results_table_groups_repeats_and_ranks(run_dir):
    spec = SweepSpec.model_validate(SPEC)
    records = records_from_dir(run_dir)
    assert [r.repeat for r in records] == [0, 1, 0, 1] and all(r.status == "done" for r in records)
    rows = pivot(records, results_table(spec), spec)
    assert [r.values for r in rows] == [{"masking.alpha": 0.25}, {"masking.alpha": 0.5}]  # final top-1 means 65 > 63
    assert math.isclose(rows[0].mean["top1"], (60.0 + 70.0) / 2)
    assert math.isclose(rows[0].std["top1"], math.sqrt(50.0))  # sample std of 60, 70
    assert math.isclose(rows[1].mean["top1"], (65.0 + 61.0) / 2)
    assert math.isclose(rows[1].mean["recon_loss"], 0.4) and rows[1].std["recon_loss"] == 0.0


def test_report_files(run_dir):
    spec = SweepSpec.model_validate(SPEC)
    text = write_results(str(run_dir), spec, records_from_dir(run_dir))
    md = (run_dir / "results.md").read_text()
    assert md in text
    rows = [line for line in md.splitlines() if line.startswith("| ")][1:]
    assert rows[0].startswith("| 1 | alpha=0.25 | 2 | 3.5x | 0.6500 | - | 65.00 ± 7.07 |")  # no zero-pred loss reported
    assert rows[1].startswith("| 2 | alpha=0.5 | 2 | 1.9x | 0.4000 | - | 63.00 ± 2.83 |")
    # 0.25: faster and better, but (60, 70) vs (65, 61) is well within the seed spread
    assert rows[0].endswith("| best | * | 2 done |") and rows[1].endswith("|  | 2 done |") and "| ≈ p=0." in rows[1]
    table = list(csv.DictReader((run_dir / "results.csv").open()))
    assert [r["configuration"] for r in table] == ["alpha=0.25", "alpha=0.5"]
    assert float(table[0]["top1_mean"]) == 65.0 and math.isclose(float(table[0]["top1_std"]), 7.07107, rel_tol=1e-5)
    png = (run_dir / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_pareto_front():
    points = [(1.0, 90.0), (2.0, 85.0), (1.5, 80.0), (4.0, 70.0), (4.0, 60.0), (2.0, 85.0)]
    assert pareto_front(points) == [0, 1, 3, 5]  # (1.5, 80) and (4, 60) are dominated; ties both kept


def test_table_marks_stopped_and_missing():
    spec = SweepSpec.model_validate(SPEC)
    records = [TrialRecord("x", {"masking.alpha": 0.5}, 0, [{"phase_index": 0, "speedup_est": 2.0, "top1": 0.0,
                                                             "recon_loss": 0.5, "done": False}]),
               TrialRecord("y", {"masking.alpha": 0.25}, 0, [], error=True)]
    table = results_table(spec)
    md = markdown(table, pivot(records, table, spec))
    assert "| alpha=0.5 | 1 | 2.0x | 0.5000 | - | - |" in md and "1 stopped" in md
    assert "| alpha=0.25 | 1 | - | - | - | - |" in md and "1 error" in md


# ---- every table form, rendered exactly ----------------------------------------------------------------
# In-memory trial records with known metrics; the expected Markdown / CSV / HTML is written out by hand.
def spec_of(space: dict, base: dict = BASE, objectives=({"metric": "top1", "mode": "max"},),
            sampler: str = "grid", significance: str = "none") -> SweepSpec:
    body = {"study": "s", "objectives": list(objectives), "sampler": {"kind": sampler}, "base": base,
            "search_space": space, "significance": significance}  # "none": the forms alone (noise: tests above)
    if sampler != "grid":
        body["num_samples"] = 4
    return SweepSpec.model_validate(body)


def record(trial_id: str, params: dict, phases: list[tuple[float, float]], *, speedup: float = 2.0,
           recon: float = 0.5, images_per_s: float = 100.0, done: bool = True, **last) -> TrialRecord:
    """A pre-train report, then one report per transfer phase (top1, top5); `last` adds metrics to the last."""
    history = [{"phase_index": 0, "epoch": 0, "recon_loss": recon, "images_per_s": images_per_s,
                "speedup_est": speedup, "top1": 0.0, "top5": 0.0, "done": False}]
    history += [{"phase_index": i, "epoch": 0, "top1": t1, "top5": t5, "speedup_est": speedup, "done": False}
                for i, (t1, t5) in enumerate(phases, start=1)]
    history[-1].update(done=done, **last)
    return TrialRecord(trial_id, params, 0, history)


RESULTS_NOTE = ("mean ± sample std over repeats; speed-up = FLOP ratio vs a supervised ViT step (speedup_est; no trial "
                "measured one); zero-pred loss = the pre-training loss of predicting zeros (the baseline a "
                "reconstruction must beat); data wait = share of the last pre-train epoch spent waiting for input; "
                "Pareto = not dominated in (speed-up, top-1).")
PAPER_NOTE = ("mean ± sample std over n finished seeds; top-1/5 in %; speed-up = FLOP ratio vs a supervised ViT step "
              "(speedup_est; no trial measured one).")


def paper_markdown(spec: SweepSpec, records: list[TrialRecord]) -> tuple[str, str]:
    table = paper_table(spec)
    return table.name, markdown(table, pivot(records, table, spec))


def test_table6_exact():
    spec = spec_of({"selection": {"choices": ["object", "inter", "mae"]}})
    name, md = paper_markdown(spec, [
        record("a", {"masking.selection": "mae"}, [(80.0, 90.0)]),
        record("b", {"masking.selection": "object"}, [(70.0, 91.0)]),
        record("c", {"masking.selection": "object"}, [(72.0, 91.0)]),
        record("d", {"masking.selection": "inter"}, [(60.0, 92.5)], done=False),
        record("e", {"masking.selection": "inter"}, [(61.0, 92.5)], done=False),
        record("f", {}, [(50.0, 60.0)])])  # a trial without the searched value
    assert name == "table6_selection"
    assert md == ("## Table 6 (paper form): Selective regions (intra- vs inter-object) (study s)\n\n"
                  "| Selective Region | n | Top-1 | Top-5 |\n|---|---|---|---|\n"
                  "| Intra-object | 2 | 71.00 ± 1.41 | 91.00 |\n"
                  "| Inter-object | 0 | - | - |\n"
                  "| Whole image (MAE) | 1 | 80.00 | 90.00 |\n"
                  "| None | 1 | 50.00 | 60.00 |\n\n"
                  f"{PAPER_NOTE} 2 stopped or failed trial(s) left out.\n")


def test_table7_and_table9_exact():
    spec = spec_of({"patch_size": {"choices": [16, 8]}, "alpha": {"choices": [0.5, 0.34]},
                    "selection": {"choices": ["mae", "object"]}})
    name, md = paper_markdown(spec, [
        record("a", {"model.patch_size": 8, "masking.alpha": 0.34, "masking.selection": "object"}, [(61.0, 81.0)]),
        record("b", {"model.patch_size": 16, "masking.alpha": 0.34, "masking.selection": "object"}, [(62.0, 82.0)]),
        record("c", {"model.patch_size": 16, "masking.alpha": 0.5, "masking.selection": "mae"}, [(63.0, 83.0)])])
    assert name == "table7_patch_size"
    assert md == ("## Table 7 (paper form): Model, alpha and patch size (study s)\n\n"  # dims: selection, alpha, patch
                  "| Model | α | Patch Size | n | Top-1 | Top-5 |\n|---|---|---|---|---|---|\n"
                  "| MAE | 0.5 | 16 | 1 | 63.00 | 83.00 |\n"
                  "| ObjMAE | 0.34 | 16 | 1 | 62.00 | 82.00 |\n"
                  "| ObjMAE | 0.34 | 8 | 1 | 61.00 | 81.00 |\n\n"
                  f"{PAPER_NOTE}\n")
    spec = spec_of({"alpha": {"choices": [0.25, 0.125]}, "selection": {"choices": ["object", "mae"]}})
    name, md = paper_markdown(spec, [
        record("a", {"masking.alpha": 0.125, "masking.selection": "object"}, [(50.0, 70.0)]),
        record("b", {"masking.alpha": 0.25, "masking.selection": "mae"}, [(51.0, 71.0)])])
    assert name == "table9_alpha"
    assert md == ("## Table 9 (paper form): Ablation of alpha for ObjMAE and MAE (study s)\n\n"
                  "| Model | α | n | Top-1 | Top-5 |\n|---|---|---|---|---|\n"
                  "| ObjMAE | 0.125 | 1 | 50.00 | 70.00 |\n"
                  "| MAE | 0.25 | 1 | 51.00 | 71.00 |\n\n"
                  f"{PAPER_NOTE}\n")
    # CAM regions against MAE over alpha is Table 4 (its alpha 1/2 row is MAE): alpha first
    spec = spec_of({"alpha": {"choices": [0.25, 0.125]}, "selection": {"choices": ["cam", "mae"]}})
    name, md = paper_markdown(spec, [
        record("a", {"masking.alpha": 0.125, "masking.selection": "cam"}, [(50.0, 70.0)]),
        record("b", {"masking.alpha": 0.25, "masking.selection": "mae"}, [(51.0, 71.0)])])
    assert name == "table4_alpha"
    assert md == ("## Table 4 (paper form): Performance vs. acceleration over alpha (study s)\n\n"
                  "| α | Model | n | Speed Up | Pre-train img/s | Recon Loss | Zero-pred Loss | Top-1 | Top-5 |\n"
                  "|---|---|---|---|---|---|---|---|---|\n"
                  "| 0.25 | MAE | 1 | 2.0x | 100.0 | 0.5000 | - | 51.00 | 71.00 |\n"
                  "| 0.125 | ObjMAE (CAM) | 1 | 2.0x | 100.0 | 0.5000 | - | 50.00 | 70.00 |\n\n"
                  f"{PAPER_NOTE}\n")


def test_table4_over_a_range_sorts_by_value():
    spec = spec_of({"alpha": {"type": "float", "low": 0.05, "high": 0.5}}, sampler="tpe")
    name, md = paper_markdown(spec, [
        record("a", {"masking.alpha": 0.5}, [(80.0, 90.0)], speedup=1.9, recon=0.25, images_per_s=50.0),
        record("b", {"masking.alpha": 0.0625}, [(70.0, 85.0)], speedup=9.2, recon=0.75, images_per_s=410.5),
        record("c", {"masking.alpha": 0.13793}, [(75.0, 88.0)], speedup=3.6, recon=0.5, images_per_s=150.0)])
    assert name == "table4_alpha"
    assert md == ("## Table 4 (paper form): Performance vs. acceleration over alpha (study s)\n\n"
                  "| α | n | Speed Up | Pre-train img/s | Recon Loss | Zero-pred Loss | Top-1 | Top-5 |\n"
                  "|---|---|---|---|---|---|---|---|\n"
                  "| 0.0625 | 1 | 9.2x | 410.5 | 0.7500 | - | 70.00 | 85.00 |\n"  # no trial reported a zero loss
                  "| 0.1379 | 1 | 3.6x | 150.0 | 0.5000 | - | 75.00 | 88.00 |\n"
                  "| 0.5 | 1 | 1.9x | 50.0 | 0.2500 | - | 80.00 | 90.00 |\n\n"
                  f"{PAPER_NOTE}\n")


def test_table8_and_ablation_exact():
    spec = spec_of({"padding": {"choices": ["zero", "random"]}})
    name, md = paper_markdown(spec, [record("a", {"masking.padding": "random"}, [(1.0, 2.0)]),
                                     record("b", {"masking.padding": "zero"}, [(3.0, 4.0)])])
    assert name == "table8_padding"
    assert md == ("## Table 8 (paper form): Ablation of the padding mode (study s)\n\n"
                  "| Padding Mode | n | Top-1 | Top-5 |\n|---|---|---|---|\n"
                  "| Zero | 1 | 3.00 | 4.00 |\n| Random | 1 | 1.00 | 2.00 |\n\n"
                  f"{PAPER_NOTE}\n")
    # an int range: numeric order (5 < 10 < 20, not "10" < "20" < "5"); a trial without the value sorts as 0
    spec = spec_of({"pretrain.epochs": {"type": "int", "low": 5, "high": 20}}, sampler="tpe")
    name, md = paper_markdown(spec, [
        record("a", {"pretrain.epochs": 20}, [(3.0, 4.0)]),
        record("b", {}, [(9.0, 9.5)]),
        record("c", {"pretrain.epochs": 5}, [(1.0, 2.0)], speedup=2.25),
        record("d", {"pretrain.epochs": 10}, [(2.0, 3.0)])])
    assert name == "table_ablation"
    assert md == ("## Ablation (paper form): Searched settings (study s)\n\n"
                  "| pretrain.epochs | n | Speed Up | Pre-train img/s | Recon Loss | Zero-pred Loss | Top-1 | Top-5 |\n"
                  "|---|---|---|---|---|---|---|---|\n"
                  "| None | 1 | 2.0x | 100.0 | 0.5000 | - | 9.00 | 9.50 |\n"  # sorts as 0
                  "| 5 | 1 | 2.2x | 100.0 | 0.5000 | - | 1.00 | 2.00 |\n"  # 2.25 at one digit: round half to even
                  "| 10 | 1 | 2.0x | 100.0 | 0.5000 | - | 2.00 | 3.00 |\n"
                  "| 20 | 1 | 2.0x | 100.0 | 0.5000 | - | 3.00 | 4.00 |\n\n"
                  f"{PAPER_NOTE}\n")


def test_table5_exact():
    folder = {"kind": "folder", "root": "/data/in100"}
    base = {**BASE, "transfer": [{"mode": "finetune", "epochs": 1, "warmup_epochs": 0, "batch_size": 8, "lr": 1e-3,
                                  "data": folder},
                                 {"mode": "linear", "epochs": 1, "warmup_epochs": 0, "batch_size": 8, "lr": 0.1,
                                  "data": {"kind": "cifar100", "root": "/data/cifar"}}]}
    spec = spec_of({"selection": {"choices": ["mae", "object"]}}, base=base)
    name, md = paper_markdown(spec, [record("a", {"masking.selection": "object"}, [(80.0, 95.0), (40.0, 70.0)]),
                                     record("b", {"masking.selection": "mae"}, [(81.0, 96.0), (41.0, 71.0)])])
    assert name == "table5_transfer"
    assert md == ("## Table 5 (paper form): Transfer of the pre-trained encoder to each downstream task (study s)\n\n"
                  "| Model | n | Speed Up | Fine-tune in100 Top-1 | Fine-tune in100 Top-5 | Linear probe CIFAR-100 Top-1 "
                  "| Linear probe CIFAR-100 Top-5 |\n|---|---|---|---|---|---|---|\n"
                  "| MAE | 1 | 2.0x | 81.00 | 96.00 | 41.00 | 71.00 |\n"
                  "| ObjMAE | 1 | 2.0x | 80.00 | 95.00 | 40.00 | 70.00 |\n\n"
                  f"{PAPER_NOTE}\n")


def test_results_form_exact_in_markdown_csv_and_html():
    """Two transfer phases (a column for the earlier one), a second objective that is no column yet (val_loss),
    ranks by the first objective, the Pareto front, statuses."""
    base = {**BASE, "transfer": [BASE["transfer"][0], {**BASE["transfer"][0], "mode": "linear"}]}
    spec = spec_of({"alpha": {"choices": [0.5, 0.25]}, "padding": {"choices": ["zero", "random"]}}, base=base,
                   objectives=({"metric": "top1", "mode": "max"}, {"metric": "val_loss", "mode": "min"}))
    records = [
        record("a", {"masking.alpha": 0.5, "masking.padding": "zero"}, [(70.0, 90.0), (50.0, 80.0)], speedup=1.5,
               val_loss=1.25, pretrain_time_s=10.0),
        record("b", {"masking.alpha": 0.5, "masking.padding": "zero"}, [(72.0, 90.0), (52.0, 80.0)], speedup=1.5,
               val_loss=1.75, pretrain_time_s=12.0, done=False),
        record("c", {"masking.alpha": 0.25, "masking.padding": "random"}, [(60.0, 85.0), (55.0, 79.0)], speedup=3.0,
               val_loss=2.0, pretrain_time_s=5.0),
        record("d", {"masking.alpha": 0.25, "masking.padding": "zero"}, [(58.0, 80.0), (40.0, 75.0)], speedup=2.5),
    ]
    table = results_table(spec)
    assert table.name == "results"
    rows = pivot(records, table, spec)
    assert markdown(table, rows) == (
        "## s: 3 configurations, ranked by top1 (max), val_loss (min)\n\n"
        "| rank | configuration | runs | Speed Up | Recon Loss | Zero-pred Loss | Top-1 | Top-5 "
        "| top1 1:finetune synthetic | Pre-train s | Data Wait % | val_loss | Pareto | status |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"  # no zero loss, no data wait reported: "-"
        "| 1 | alpha=0.25, padding=random | 1 | 3.0x | 0.5000 | - | 55.00 | 79.00 | 60.00 | 5.0 | - | 2.00 | * "
        "| 1 done |\n"
        "| 2 | alpha=0.5, padding=zero | 2 | 1.5x | 0.5000 | - | 51.00 ± 1.41 | 80.00 | 71.00 ± 1.41 | 11.0 ± 1.4 | - "
        "| 1.50 ± 0.35 |  | 1 done, 1 stopped |\n"  # (3.0x, 55) dominates (1.5x, 51) and (2.5x, 40)
        "| 3 | alpha=0.25, padding=zero | 1 | 2.5x | 0.5000 | - | 40.00 | 75.00 | 58.00 | - | - | - |  | 1 done |\n\n"
        f"{RESULTS_NOTE}\n")
    assert csv_text(table, rows).splitlines() == [
        "rank,configuration,runs,speedup_mean,speedup_std,recon_loss_mean,recon_loss_std,recon_zero_loss_mean,"
        "recon_zero_loss_std,top1_mean,top1_std,top5_mean,top5_std,top1 1:finetune synthetic_mean,"
        "top1 1:finetune synthetic_std,pretrain_time_s_mean,pretrain_time_s_std,data_wait_pct_mean,"
        "data_wait_pct_std,val_loss_mean,val_loss_std",
        '1,"alpha=0.25, padding=random",1,3,0,0.5,0,,,55,0,79,0,60,0,5,0,,,2,0',
        '2,"alpha=0.5, padding=zero",2,1.5,0,0.5,0,,,51,1.4142135623730951,80,0,71,1.4142135623730951,11,1.4142135623730951,,,1.5,0.3535533905932738',
        '3,"alpha=0.25, padding=zero",1,2.5,0,0.5,0,,,40,0,75,0,58,0,,,,,,']
    page = html_table(table, rows[2:])
    assert page == (
        "<h2>s: 1 configurations, ranked by top1 (max), val_loss (min)</h2>\n<table><thead><tr>"
        + "".join(f"<th>{h}</th>" for h in ["rank", "configuration", "runs", "Speed Up", "Recon Loss", "Zero-pred Loss",
                                            "Top-1", "Top-5", "top1 1:finetune synthetic", "Pre-train s", "Data Wait %",
                                            "val_loss", "Pareto", "status"])
        + "</tr></thead><tbody><tr>"
        + "".join(f"<td>{c}</td>" for c in ["1", "alpha=0.25, padding=zero", "1", "2.5x", "0.5000", "-", "40.00",
                                            "75.00", "58.00", "-", "-", "-", "*", "1 done"])
        + f"</tr></tbody></table>\n<p class=note>{RESULTS_NOTE}</p>\n")
    two = html_table(table, rows[:2])
    assert two.count("<tr>") == 3 and "</tr><tr><td>2</td>" in two  # header row, then one row per configuration
    assert "<td>alpha=a &lt;b&gt;</td>" in html_table(table, [Row({"masking.alpha": "a <b>"}, mean=rows[0].mean,
                                                                std=rows[0].std, statuses=["done"])])


def test_results_form_of_one_phase_and_a_speedup_objective():
    """One transfer phase: no per-phase column; speedup_est is the Speed Up column (no second one), ranked on it."""
    spec = spec_of({"alpha": {"choices": [0.5, 0.25]}}, objectives=({"metric": "speedup_est", "mode": "max"},))
    table = results_table(spec)
    assert [c.title for c in table.columns] == ["Speed Up", "Recon Loss", "Zero-pred Loss", "Top-1", "Top-5",
                                                "Pre-train s", "Data Wait %"]
    rows = pivot([record("a", {"masking.alpha": 0.5}, [(80.0, 90.0)], speedup=1.9),
                  record("b", {"masking.alpha": 0.25}, [(70.0, 90.0)], speedup=3.5)], table, spec)
    assert [r.values["masking.alpha"] for r in rows] == [0.25, 0.5]
    assert markdown(table, rows).startswith("## s: 2 configurations, ranked by speedup_est (max)\n\n"
                                            "| rank | configuration | runs | Speed Up | Recon Loss | Zero-pred Loss "
                                            "| Top-1 | Top-5 | Pre-train s | Data Wait % | Pareto | status |\n")
    base = {**BASE, "transfer": [BASE["transfer"][0]] * 3}
    assert [c.key for c in results_table(spec_of({"alpha": {"choices": [0.5]}}, base=base)).columns] == [
        "speedup", "recon_loss", "recon_zero_loss", "top1", "top5", "top1 1:finetune synthetic",
        "top1 2:finetune synthetic", "pretrain_time_s", "data_wait_pct"]


def test_results_form_ranks_a_min_objective_with_missing_values_last():
    spec = spec_of({"alpha": {"choices": [0.5, 0.25, 0.125]}}, objectives=({"metric": "val_loss", "mode": "min"},))
    table = results_table(spec)
    rows = pivot([record("a", {"masking.alpha": 0.5}, [(80.0, 90.0)], val_loss=0.5),
                  record("b", {"masking.alpha": 0.25}, [(70.0, 90.0)]),  # never reported val_loss
                  record("c", {"masking.alpha": 0.125}, [(60.0, 90.0)], val_loss=0.0)], table, spec)
    assert [r.values["masking.alpha"] for r in rows] == [0.125, 0.5, 0.25]


def test_paper_dimensions_in_the_papers_order_then_file_order():
    spec = spec_of({"pretrain.lr": {"choices": [0.1, 0.01]}, "padding": {"choices": ["zero", "random"]},
                    "patch_size": {"choices": [16, 8]}, "pretrain.epochs": {"choices": [1, 2]}})
    assert paper_table(spec).dims == ["model.patch_size", "masking.padding", "pretrain.lr", "pretrain.epochs"]


def test_rows_without_pre_training_read_as_a_plain_vit():
    """A searched pretrain.epochs 0 trains a ViT from scratch: its model is "ViT (no pre-training)" and its alpha "-"."""
    spec = spec_of({"selection": {"choices": ["object"]}, "alpha": {"choices": [0.25]},
                    "pretrain.epochs": {"choices": [1, 0]}})
    name, md = paper_markdown(spec, [
        record("a", {"masking.selection": "object", "masking.alpha": 0.25, "pretrain.epochs": 0}, [(40.0, 70.0)]),
        record("b", {"masking.selection": "object", "masking.alpha": 0.25, "pretrain.epochs": 1}, [(60.0, 80.0)])])
    assert name == "table_ablation"
    assert md == ("## Ablation (paper form): Searched settings (study s)\n\n"
                  "| Model | α | pretrain.epochs | n | Speed Up | Pre-train img/s | Recon Loss | Zero-pred Loss | Top-1 "
                  "| Top-5 |\n|---|---|---|---|---|---|---|---|---|---|\n"
                  "| ObjMAE | 0.25 | 1 | 1 | 2.0x | 100.0 | 0.5000 | - | 60.00 | 80.00 |\n"
                  "| ViT (no pre-training) | - | 0 | 1 | 2.0x | 100.0 | 0.5000 | - | 40.00 | 70.00 |\n\n"
                  f"{PAPER_NOTE}\n")


def test_measured_speedup_where_the_trial_measured_one_else_the_flop_ratio():
    measured = record("m", {}, [(1.0, 2.0)], speedup=2.0, speedup_measured=2.5)
    slower = record("s", {}, [(1.0, 2.0)], speedup=2.0, speedup_measured=0.5)  # slower than the ViT step: still shown
    zero = record("z", {}, [(1.0, 2.0)], speedup=3.0, speedup_measured=0.0)  # 0: no measurement
    never = record("n", {}, [(1.0, 2.0)], speedup=4.0)
    assert [measured_speedup(r) for r in (measured, slower, zero, never)] == [2.5, 0.5, None, None]
    assert [shown_speedup(r) for r in (measured, slower, zero, never)] == [2.5, 0.5, 3.0, 4.0]
    assert speedup_kind([measured, slower]) == ("measured step-time ratio vs a supervised ViT step on the trial's "
                                                "device (speedup_measured)")
    assert speedup_kind([measured, zero, never]) == ("measured step-time ratio (speedup_measured) for 1 of 3 trials, "
                                                     "FLOP ratio (speedup_est) for the others")
    assert speedup_kind([zero, never]) == "FLOP ratio vs a supervised ViT step (speedup_est; no trial measured one)"
    assert objective_key("speedup_measured") == objective_key("speedup_est") == "speedup"
    assert objective_key("top1") == "top1"


def test_noise_test_on_the_first_objectives_column():
    objectives = ({"metric": "speedup_measured", "mode": "max"}, {"metric": "top1", "mode": "max"})
    spec = spec_of({"alpha": {"choices": [0.5, 0.25]}}, objectives=objectives, significance="welch")
    assert results_table(spec).noise == [NoiseTest("speedup", "max", 0.05)]
    spec = spec_of({"padding": {"choices": ["zero", "random"]}}, significance="welch")
    assert paper_table(spec).noise == [NoiseTest("top1", "max", 0.05)]


def test_noise_calls_against_the_best_row():
    def row(mean, samples=None):
        return Row({}, samples={} if samples is None else {"v": samples}, mean={"v": mean})

    # min: the lowest mean is best. (10, 11) vs (0, 1): t = 10 / sqrt(0.25 + 0.25), 2 degrees of freedom,
    # p = 1 - |t| / sqrt(t^2 + 2) = 1 - 14.142 / 14.213 = 0.005; a row without the column's values: no call
    rows = [row(10.5, [10.0, 11.0]), row(0.5, [0.0, 1.0]), row(None)]
    assert noise_calls(NoiseTest("v", "min", 0.05), rows) == ["≠ p=0.005", "best", "-"]
    assert noise_calls(NoiseTest("v", "max", 0.05), rows) == ["best", "≠ p=0.005", "-"]
    # the best row without values: no call for anyone
    assert noise_calls(NoiseTest("v", "max", 0.05), [row(3.0), row(1.0, [0.0, 2.0])]) == ["best", "-"]
    assert noise_calls(NoiseTest("v", "max", 0.05), [row(None), row(None)]) == ["-", "-"]
    # a p-value equal to the level is within the noise: (82, 83) vs (83, 84), p = 0.29 (Table 8 above)
    level = welch_p([82.0, 83.0], [83.0, 84.0])
    rows = [row(83.5, [83.0, 84.0]), row(82.5, [82.0, 83.0])]
    assert noise_calls(NoiseTest("v", "max", level), rows) == ["best", "≈ p=0.29"]


def test_vs_baseline_compares_every_row_with_the_marked_row():
    """`baseline: true` on a list study's random-encoder row: a second noise column, against that row, in the
    results form (Markdown and CSV); the best row still gets its "vs best" call."""
    spec = SweepSpec.model_validate({
        "study": "s", "objectives": [{"metric": "top1", "mode": "max"}], "sampler": {"kind": "list"}, "repeats": 2,
        "base": BASE, "significance": "welch",
        "configurations": [{"pretrain.epochs": 0, "baseline": True}, {"selection": "mae"}, {"selection": "object"}]})
    random, mae, obj = ({"pretrain.epochs": 0, "masking.selection": "object"}, {"pretrain.epochs": 1, "masking.selection": "mae"},
                        {"pretrain.epochs": 1, "masking.selection": "object"})
    records = [record("a", random, [(60.0, 90.0)]), record("b", random, [(62.0, 90.0)]),
               record("c", mae, [(70.0, 90.0)]), record("d", mae, [(73.0, 90.0)]),
               record("e", obj, [(63.0, 90.0)]), record("f", obj, [(64.0, 90.0)])]
    table = results_table(spec)
    assert [(t.key, t.against) for t in table.noise] == [("top1", None), ("top1", ("object", 0))]
    header, *rows = md_rows(markdown(table, pivot(records, table, spec)))
    calls = {row[1]: row[header.index("vs best")] + " / " + row[header.index("vs baseline")] for row in rows}
    def call(ours, theirs):
        p = welch_p(ours, theirs)
        return f"≈ p={p:.2g}" if p >= 0.05 else f"≠ p={p:.2g}"

    assert welch_p([70.0, 73.0], [60.0, 62.0]) < 0.05 <= welch_p([63.0, 64.0], [60.0, 62.0])  # both calls occur
    assert calls == {"selection=mae, pretrain.epochs=1": f"best / {call([70.0, 73.0], [60.0, 62.0])}",
                     "selection=object, pretrain.epochs=1": f"{call([63.0, 64.0], [70.0, 73.0])} / "
                                                            f"{call([63.0, 64.0], [60.0, 62.0])}",
                     "selection=object, pretrain.epochs=0": f"{call([60.0, 62.0], [70.0, 73.0])} / baseline"}
    assert "against the best row (vs best) and the baseline row (vs baseline)" in note(table, pivot(records, table, spec))
    assert csv_text(table, pivot(records, table, spec)).splitlines()[0].endswith("vs_best_top1,vs_baseline_top1")
    # the baseline row has not run (yet): no call against it
    assert noise_calls(table.noise[1], pivot(records[2:], table, spec), table.dims) == ["-", "-"]


def test_an_objective_naming_a_phase_ranks_and_picks_the_best_by_that_phase():
    """{metric: top1, phase: 0} in a fine-tune + linear study: the results form ranks by the fine-tune's top-1
    (its own column), the best record for export is the fine-tune's best, not the linear probe's."""
    from objmae_ray.results.export import best_record

    base = {**BASE, "transfer": [BASE["transfer"][0], {**BASE["transfer"][0], "mode": "linear"}]}
    spec = spec_of({"alpha": {"choices": [0.5, 0.25]}}, base=base,
                   objectives=({"metric": "top1", "mode": "max", "phase": 0},))
    records = [record("a", {"masking.alpha": 0.5}, [(70.0, 90.0), (50.0, 80.0)], checkpoint_path="/ck/a"),
               record("c", {"masking.alpha": 0.25}, [(60.0, 85.0), (55.0, 79.0)], checkpoint_path="/ck/c")]
    assert [r.final("top1", 0) for r in records] == [70.0, 60.0] and [r.final("top1") for r in records] == [50.0, 55.0]
    table = results_table(spec)
    rows = pivot(records, table, spec)
    assert [row.values["masking.alpha"] for row in rows] == [0.5, 0.25]  # by the fine-tune, not the probe (50 < 55)
    assert markdown(table, rows).startswith("## s: 2 configurations, ranked by top1 of transfer.0 (max)\n")
    assert best_record(records, "top1", "max", phase=0).trial_id == "a"
    assert best_record(records, "top1", "max").trial_id == "c"  # the last report: the linear probe
