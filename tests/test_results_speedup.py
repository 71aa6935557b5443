"""Tables and the Pareto plot show the measured speed-up where trials measured one, and say which they show
(results/tables.py, results/page.py); the results form's data-wait column."""
from __future__ import annotations

import json

import pytest

from objmae_ray.results import tables
from objmae_ray.results.page import speedup_label, write_report, write_results
from objmae_ray.results.records import records_from_dir
from test_results_tables import add_trial, make_run, md_rows


def measured(run, trial_id: str, value: float | None, wait: float | None = None) -> None:
    """Add speedup_measured (and the pre-train data_wait_frac) to every report of a trial."""
    path = run / f"trial_{trial_id}" / "result.json"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for report in lines:
        if value is not None:
            report["speedup_measured"] = value
        if wait is not None and report["phase_index"] == 0:
            report["data_wait_frac"] = wait
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")


@pytest.fixture
def alpha_run(tmp_path):
    run, spec = make_run(tmp_path, {"alpha": {"choices": [0.5, 0.25]}})
    add_trial(run, spec, "a", {"masking.alpha": 0.5}, speedup=1.7, phases=[[(0, 0), (80.0, 95.0)]])
    add_trial(run, spec, "b", {"masking.alpha": 0.25}, speedup=3.4, phases=[[(0, 0), (78.0, 94.0)]])
    return run, spec


def test_measured_speedup_is_shown_and_named(alpha_run):
    run, spec = alpha_run
    measured(run, "a", 1.9, wait=0.25)
    measured(run, "b", 3.8, wait=0.5)
    md = (write_report(run, with_figures=False) / "table4_alpha.md").read_text()
    assert [row[2] for row in md_rows(md)[1:]] == ["1.9x", "3.8x"]
    assert "speed-up = measured step-time ratio vs a supervised ViT step on the trial's device (speedup_measured)" in md
    text = write_results(str(run), spec, records_from_dir(run))
    header, *rows = md_rows(text)
    assert header[3] == "Speed Up" and header[header.index("Data Wait %")] == "Data Wait %"
    assert [r[header.index("Data Wait %")] for r in rows] == ["25.0", "50.0"]
    assert [r[3] for r in rows] == ["1.9x", "3.8x"]


def test_flop_ratio_when_nothing_was_measured_and_mixed_runs_say_so(alpha_run):
    run, spec = alpha_run
    records = records_from_dir(run)
    assert tables.speedup_kind(records).startswith("FLOP ratio vs a supervised ViT step (speedup_est")
    measured(run, "a", float("nan"))  # a trial whose baseline was never timed reports NaN: not shown
    records = records_from_dir(run)
    rows = tables.pivot(records, tables.paper_table(spec), spec)
    assert [r.mean["speedup"] for r in rows] == [1.7, 3.4]
    measured(run, "b", 3.8)
    records = records_from_dir(run)
    rows = tables.pivot(records, tables.paper_table(spec), spec)
    assert [r.mean["speedup"] for r in rows] == [1.7, 3.8]
    assert tables.speedup_kind(records) == ("measured step-time ratio (speedup_measured) for 1 of 2 trials, "
                                            "FLOP ratio (speedup_est) for the others")
    assert speedup_label(rows).startswith("pre-training speed-up (measured step-time ratio")
    assert tables.objective_key("speedup_measured") == "speedup"
