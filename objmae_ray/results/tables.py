"""Every table of a sweep is one pivot of its trial records, rendered one way (Markdown, CSV, HTML).

`pivot(records, table, spec)` makes one row per combination of the table's dimensions (dotted
TrialConfig paths) and, per column, the mean and sample std over the row's trials. Two forms:

  results   `results_table(spec)`: results.md / results.csv, written at the end of every sweep. One row
            per configuration (every searched value, seed too when searched), every trial counted
            (a stopped trial with its last values), ranked by the first objective, with the Pareto front
            in (speed-up, top-1) and the trials' statuses.
  paper     `paper_table(spec)`: report/table<N>_<name>.md / .csv (objmae-report). The paper table whose
            rows are the searched dimensions (`seed` is a repeat, not a dimension), rows in the order of
            the searched values, only trials that finished every phase (the others are counted under it).

  searched dimensions                 paper table  columns
  (any) with 2+ transfer phases       Table 5      speed-up, top-1 / top-5 of every transfer phase
  alpha (+ selection with cam)        Table 4      speed-up, pre-train img/s, recon loss (+ predict-zeros), top-1/5
  selection                           Table 6      top-1, top-5 (selective region: intra / inter object)
  patch_size (+ selection, alpha)     Table 7      top-1, top-5
  padding                             Table 8      top-1, top-5
  selection + alpha                   Table 9      top-1, top-5
  anything else                       ablation     speed-up, pre-train img/s, recon loss (+ predict-zeros), top-1/5

Paper numbers: where the configurations carry `paper` annotations (config.PaperRow), the paper form adds
a "paper row" column (the paper's row and α reading, or "extra: REASON") and, after each top-1 / top-5
column, the paper's number for that phase ("paper Top-1"); the CSV adds paper_row, paper_<key>.
Objectives: the results form ranks by the first objective's column; one naming a transfer phase
(`phase: i`) ranks by that phase's column (`objective_column`).

Noise: with `significance: welch` (the default) every table compares each row's repeats of the first
objective (Table 5: each phase's top-1) with the best row's (Welch's t-test, `significance_level`) and
marks the rows whose difference is within the seed noise ("≈"); with one repeat per row no call can be
made, and the note says so. A configuration marked `baseline: true` (a random encoder, say) adds the same
test against that row ("vs baseline").

Numbers per trial: top-1 / top-5 are the last report of a transfer phase (the final phase's unless the
column names the phase), recon loss the last pre-train epoch's, speed-up `speedup_measured` (a
supervised ViT step's time over the ObjMAE step's, measured on the trial's device, objmae_ray/train/speed.py)
where the trial reported one, else `speedup_est` (FLOP ratio); each table's note says which it shows.
Pre-train img/s is the measured throughput of the last pre-train epoch, data wait the share of that
epoch spent waiting for input (results form). A trial that loaded a stored pre-training (train/reuse.py)
reports that pre-training's final epoch; each note names where such pre-trainings came from.
A new column is a `Column` here and an entry in the table that shows it; nothing outside results/ changes.
"""
from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from objmae_ray.config import ChoiceParam, Configuration, Objective, PaperRow, SweepSpec
from objmae_ray.results.records import TrialRecord
from objmae_ray.results.stats import finite, mean_std, pareto_front, welch_p
from objmae_ray.sweep.space import configuration_rows, describe, searched, short_name

_MODEL = {"object": "ObjMAE", "mae": "MAE", "inter": "ObjMAE (inter)", "cam": "ObjMAE (CAM)"}
_REGION = {"object": "Intra-object", "inter": "Inter-object", "mae": "Whole image (MAE)", "cam": "CAM region"}
_PHASE = {"finetune": "Fine-tune", "linear": "Linear probe"}
_DATA = {"cifar100": "CIFAR-100", "coco": "COCO", "synthetic": "synthetic"}
_PAPER_NOTE = (" paper row / paper Top-1 / Top-5: the row of the paper this configuration reproduces (its `paper`"
               " annotation; α reading: side = masking.alpha is α, region = α / 2) and the paper's numbers;"
               " extra = a row the paper does not have.")
_DIM_TITLES = {"masking.alpha": "α", "model.patch_size": "Patch Size", "masking.padding": "Padding Mode"}


# ---- columns ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """A metric column: `value(record)` is the trial's number (None if it never reported it)."""

    key: str  # CSV header stem (key_mean, key_std)
    title: str
    digits: int
    value: Callable[[TrialRecord], float | None]
    suffix: str = ""
    source: tuple[int, str] | None = None  # (reporting phase index, metric) of a per-phase metric column


def last(metric: str) -> Callable[[TrialRecord], float | None]:
    """The metric of the trial's last report."""
    return lambda record: finite(record.last.get(metric))


def phase_metric(index: int, metric: str) -> Callable[[TrialRecord], float | None]:
    """The metric of the last report of phase `index` (0: pre-train, i: transfer phase i)."""
    return lambda record: finite(record.phase_finals().get(index, {}).get(metric))


def measured_speedup(record: TrialRecord) -> float | None:
    """speedup_measured of the trial's last report (None where it never measured one)."""
    value = finite(record.last.get("speedup_measured"))
    return value if value is not None and value > 0 else None


def shown_speedup(record: TrialRecord) -> float | None:
    """The speed-up a table shows: measured where the trial measured it, else the FLOP ratio."""
    measured = measured_speedup(record)
    return measured if measured is not None else finite(record.last.get("speedup_est"))


SPEEDUP = Column("speedup", "Speed Up", 1, shown_speedup, "x")
DATA_WAIT = Column("data_wait_pct", "Data Wait %", 1,
                   lambda r: None if (v := finite(r.phase_finals().get(0, {}).get("data_wait_frac"))) is None
                   else 100.0 * v)
RECON = Column("recon_loss", "Recon Loss", 4, phase_metric(0, "recon_loss"))
RECON_ZERO = Column("recon_zero_loss", "Zero-pred Loss", 4, phase_metric(0, "recon_zero_loss"))  # baseline to beat
THROUGHPUT = Column("images_per_s", "Pre-train img/s", 1, phase_metric(0, "images_per_s"))  # measured
PRETRAIN_TIME = Column("pretrain_time_s", "Pre-train s", 1, last("pretrain_time_s"))


def top_columns(spec: SweepSpec) -> tuple[Column, Column]:
    """Top-1 / top-5 of the final transfer phase."""
    final = len(spec.base.transfer)
    return (Column("top1", "Top-1", 2, phase_metric(final, "top1"), source=(final, "top1")),
            Column("top5", "Top-5", 2, phase_metric(final, "top5"), source=(final, "top5")))


def _phase_label(spec: SweepSpec, i: int) -> str:
    transfer = spec.base.transfer[i - 1]
    data = _DATA.get(transfer.data.kind) or Path(transfer.data.root or transfer.data.store or transfer.data.kind).name
    return f"{_PHASE.get(transfer.mode, transfer.mode)} {data}"


def objective_key(metric: str) -> str:
    """The column key of an objective metric (`speedup_est` / `speedup_measured`: the `speedup` column)."""
    return {"speedup_est": "speedup", "speedup_measured": "speedup"}.get(metric, metric)


def objective_column(objective: Objective, spec: SweepSpec, columns: list[Column]) -> str:
    """The key of the column an objective ranks by: the column of the transfer phase it names (a phase's
    column, or `Objective.key` when the table has none), else objective_key(metric)."""
    if objective.phase is None:
        return objective_key(objective.metric)
    source = (objective.phase + 1, objective.metric)
    return next((c.key for c in columns if c.source == source), objective.key)


def _keyed_configurations(spec: SweepSpec, dims: list[str]) -> list[tuple[tuple, Configuration]]:
    """A list study's configurations with their values of `dims` (the key `pivot` rows have); [] otherwise."""
    rows = configuration_rows(spec) if spec.sampler.kind == "list" else []
    return [(tuple(row.get(d) for d in dims), c) for row, c in zip(rows, spec.configurations)]


def paper_numbers(spec: SweepSpec, dims: list[str]) -> dict[tuple, PaperRow]:
    """The configurations' `paper` annotations by the row's values of `dims`."""
    return {key: c.paper for key, c in _keyed_configurations(spec, dims) if c.paper is not None}


def speedup_kind(records: list[TrialRecord]) -> str:
    """Which speed-up the tables of these trials show, in words (for notes and plot labels)."""
    reported = [r for r in records if shown_speedup(r) is not None]
    measured = sum(measured_speedup(r) is not None for r in reported)
    if reported and measured == len(reported):
        return "measured step-time ratio vs a supervised ViT step on the trial's device (speedup_measured)"
    if measured:
        return (f"measured step-time ratio (speedup_measured) for {measured} of {len(reported)} trials, "
                f"FLOP ratio (speedup_est) for the others")
    return "FLOP ratio vs a supervised ViT step (speedup_est; no trial measured one)"


# ---- tables -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoiseTest:
    """Which rows differ from the best row (or the baseline row) by no more than the seed noise, on one column."""

    key: str  # column key
    mode: str  # "max" / "min": which row is best
    level: float  # significance level of Welch's t-test
    against: tuple | None = None  # the baseline row's values of the table's dims; None: the best row


@dataclass
class Table:
    name: str  # file stem
    heading: str
    dims: list[str]  # dotted TrialConfig paths, one row per combination of their values
    columns: list[Column]
    ranked: bool  # results form (rank, configuration, Pareto, status; every trial) or paper form
    number: str = ""  # paper table number ("8", "ablation")
    note: str = ""
    noise: list[NoiseTest] = field(default_factory=list)  # one "vs best" column each
    paper: dict[tuple, PaperRow] = field(default_factory=dict)  # paper form: dims values -> the paper's row

    def paper_row(self, row: "Row") -> PaperRow | None:
        return self.paper.get(tuple(row.values.get(d) for d in self.dims))


@dataclass
class Row:
    values: dict[str, Any]  # dim -> value
    trials: list[TrialRecord] = field(default_factory=list)  # the trials the numbers come from
    excluded: int = 0  # paper form: stopped / failed trials of this row
    statuses: list[str] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)  # column key -> the trials' values
    mean: dict[str, float | None] = field(default_factory=dict)
    std: dict[str, float | None] = field(default_factory=dict)


def baseline_values(spec: SweepSpec, dims: list[str]) -> tuple | None:
    """The values of `dims` of the configuration marked `baseline: true`, or None."""
    return next((key for key, c in _keyed_configurations(spec, dims) if c.baseline), None)


def _noise_tests(spec: SweepSpec, columns: list[Column], dims: list[str]) -> list[NoiseTest]:
    """The first objective's column, else every top-1 column (Table 5's phases), against the best row and,
    when a configuration is the baseline, against it too; none if the spec says so."""
    if spec.significance == "none":
        return []
    objective = spec.objectives[0]
    keys = [c.key for c in columns]
    key = objective_column(objective, spec, columns)
    if key in keys and not key.startswith("top1_phase"):  # Table 5 tests every phase's top-1, as it shows them
        tests = [NoiseTest(key, objective.mode, spec.significance_level)]
    else:
        tests = [NoiseTest(key, "max", spec.significance_level) for key in keys if key.startswith("top1")]
    against = baseline_values(spec, dims)
    return tests + ([NoiseTest(t.key, t.mode, t.level, against) for t in tests] if against is not None else [])


def results_table(spec: SweepSpec) -> Table:
    """results.md / results.csv: every searched value, ranked by the first objective (module docstring)."""
    top1, top5 = top_columns(spec)
    columns = [SPEEDUP, RECON, RECON_ZERO, top1, top5]
    for i, transfer in enumerate(spec.base.transfer[:-1], start=1):
        key = f"top1 {i}:{transfer.mode} {transfer.data.kind}"
        columns.append(Column(key, key, 2, phase_metric(i, "top1"), source=(i, "top1")))
    columns += [PRETRAIN_TIME, DATA_WAIT]
    for objective in spec.objectives:  # an objective without a column gets one
        key = objective_column(objective, spec, columns)
        if key in {c.key for c in columns}:
            continue
        value = last(key) if objective.phase is None else phase_metric(objective.phase + 1, objective.metric)
        source = None if objective.phase is None else (objective.phase + 1, objective.metric)
        columns.append(Column(key, key, 2, value, source=source))
    objectives = ", ".join(o.label for o in spec.objectives)
    return Table("results", f"{spec.study}: {{rows}} configurations, ranked by {objectives}",
                 sorted(searched(spec)), columns, ranked=True,
                 note="mean ± sample std over repeats; speed-up = {speedup}; zero-pred loss = the pre-training loss"
                      " of predicting zeros (the baseline a reconstruction must beat); data wait = share of the last"
                      " pre-train epoch spent waiting for input; Pareto = not dominated in (speed-up, top-1).",
                 noise=_noise_tests(spec, columns, sorted(searched(spec))))


def paper_table(spec: SweepSpec) -> Table:
    """The paper table whose rows are the searched dimensions (see the module docstring)."""
    dims = [path for path in searched(spec) if path != "seed"]
    short = {short_name(d) for d in dims}
    order = ["masking.selection", "masking.alpha", "model.patch_size", "masking.padding"]
    dims = sorted(dims, key=lambda d: order.index(d) if d in order else len(order))
    top1, top5 = top_columns(spec)
    if len(spec.base.transfer) > 1:
        phases = []
        for i in range(1, len(spec.base.transfer) + 1):
            label = _phase_label(spec, i)
            phases += [Column(f"top1_phase{i}", f"{label} Top-1", 2, phase_metric(i, "top1"), source=(i, "top1")),
                       Column(f"top5_phase{i}", f"{label} Top-5", 2, phase_metric(i, "top5"), source=(i, "top5"))]
        number, name, caption, columns = ("5", "table5_transfer",
                                          "Transfer of the pre-trained encoder to each downstream task",
                                          [SPEEDUP] + phases)
    elif short == {"alpha"} or (short == {"alpha", "selection"} and "cam" in searched(spec)["masking.selection"].choices):
        dims = sorted(dims, key=lambda d: d != "masking.alpha")  # Table 4: alpha first, its 1/2 row is MAE
        number, name, caption, columns = ("4", "table4_alpha", "Performance vs. acceleration over alpha",
                                          [SPEEDUP, THROUGHPUT, RECON, RECON_ZERO, top1, top5])
    elif short == {"selection"}:
        number, name, caption, columns = ("6", "table6_selection", "Selective regions (intra- vs inter-object)",
                                          [top1, top5])
    elif "patch_size" in short and short <= {"selection", "alpha", "patch_size"}:
        number, name, caption, columns = "7", "table7_patch_size", "Model, alpha and patch size", [top1, top5]
    elif short == {"padding"}:
        number, name, caption, columns = "8", "table8_padding", "Ablation of the padding mode", [top1, top5]
    elif short == {"selection", "alpha"}:
        number, name, caption, columns = "9", "table9_alpha", "Ablation of alpha for ObjMAE and MAE", [top1, top5]
    else:
        number, name, caption, columns = ("ablation", "table_ablation", "Searched settings",
                                          [SPEEDUP, THROUGHPUT, RECON, RECON_ZERO, top1, top5])
    label = f"Table {number}" if number.isdigit() else "Ablation"
    paper = paper_numbers(spec, dims)
    return Table(name, f"{label} (paper form): {caption} (study {spec.study})", dims, columns, ranked=False,
                 number=number, note="mean ± sample std over n finished seeds; top-1/5 in %; "
                                     "speed-up = {speedup}." + (_PAPER_NOTE if paper else ""),
                 noise=_noise_tests(spec, columns, dims), paper=paper)


# ---- the pivot --------------------------------------------------------------------------------------
def _dim_order(spec: SweepSpec, dim: str) -> Callable[[Any], tuple]:
    """Sort key of a dimension's values: the order of its choices in the file, else ascending."""
    param = searched(spec).get(dim)
    choices = list(param.choices) if isinstance(param, ChoiceParam) else []
    return lambda v: (choices.index(v), 0, "") if v in choices else (
        len(choices), v if isinstance(v, (int, float)) else 0, str(v))


def pivot(records: list[TrialRecord], table: Table, spec: SweepSpec) -> list[Row]:
    """One row per combination of the table's dims among the records, with each column's mean and std.

    Results form: every trial counts, rows ranked by the first objective (missing values last).
    Paper form: only finished trials count (the rest are `excluded`), rows in the order of the searched values.
    """
    rows: dict[tuple, Row] = {}
    for record in records:
        values = {d: record.params.get(d) for d in table.dims}
        row = rows.setdefault(tuple(values.values()), Row(values))
        row.statuses.append(record.status)
        if table.ranked or record.status == "done":
            row.trials.append(record)
        else:
            row.excluded += 1
    for row in rows.values():
        for column in table.columns:
            row.samples[column.key] = [v for v in (column.value(r) for r in row.trials) if v is not None]
            row.mean[column.key], row.std[column.key] = mean_std(row.samples[column.key])
    if table.ranked:
        objective = spec.objectives[0]
        key, sign = objective_column(objective, spec, table.columns), (-1 if objective.mode == "max" else 1)
        return sorted(rows.values(), key=lambda row: (row.mean.get(key) is None, sign * (row.mean.get(key) or 0.0),
                                                      describe(row.values)))
    keys = [_dim_order(spec, d) for d in table.dims]
    return sorted(rows.values(), key=lambda row: tuple(k(row.values[d]) for k, d in zip(keys, table.dims)))


def on_pareto_front(rows: list[Row]) -> set[int]:
    """Indices of the rows not dominated in (speed-up, top-1) means."""
    points = [(r.mean.get("speedup"), r.mean.get("top1")) for r in rows]
    valid = [i for i, p in enumerate(points) if None not in p]
    return {valid[i] for i in pareto_front([points[i] for i in valid])}


# ---- rendering ----------------------------------------------------------------------------------------
def _dim_title(table: Table, dim: str) -> str:
    if dim == "masking.selection":
        return "Selective Region" if table.number == "6" else "Model"
    return _DIM_TITLES.get(dim, dim)


def _dim_text(table: Table, dim: str, values: dict[str, Any]) -> str:
    """A row's value of one dimension as the paper writes it (a row without pre-training: "ViT-S (scratch)")."""
    value = values[dim]
    if values.get("pretrain.epochs") == 0 and dim in ("masking.selection", "masking.alpha"):
        return "ViT (no pre-training)" if dim == "masking.selection" else "-"
    if dim == "masking.selection":
        return (_REGION if table.number == "6" else _MODEL).get(value, str(value))
    if dim == "masking.padding":
        return str(value).capitalize()
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _cell(column: Column, mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{column.digits}f}{column.suffix}" + (f" ± {std:.{column.digits}f}" if std else "")


def noise_calls(test: NoiseTest, rows: list[Row], dims: list[str] = ()) -> list[str]:
    """Per row, against the best row (or the baseline row: `test.against`, its values of `dims`) on the
    test's column: "best" / "baseline", "≈ p=0.41" (within the seed noise), "≠ p=0.003" (a real difference),
    or "-" (no call: fewer than 2 values on a side, no spread, or the baseline row has not run)."""
    means = [row.mean.get(test.key) for row in rows]
    if test.against is not None:
        ref = next((i for i, row in enumerate(rows) if tuple(row.values.get(d) for d in dims) == test.against), None)
        if ref is None:
            return ["-"] * len(rows)
        label = "baseline"
    elif all(m is None for m in means):
        return ["-"] * len(rows)
    else:
        sign = 1 if test.mode == "max" else -1
        ref = max((i for i, m in enumerate(means) if m is not None), key=lambda i: sign * means[i])
        label = "best"
    calls = []
    for i, row in enumerate(rows):
        p = welch_p(row.samples.get(test.key, []), rows[ref].samples.get(test.key, []))
        calls.append(label if i == ref else "-" if p is None else
                     f"≈ p={p:.2g}" if p >= test.level else f"≠ p={p:.2g}")
    return calls


def _noise_columns(table: Table, rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """(headers, per row the calls) of the table's noise tests."""
    titles = {c.key: c.title for c in table.columns}
    several = len({t.key for t in table.noise}) > 1
    headers = [("vs baseline" if t.against is not None else "vs best") + (f" ({titles[t.key]})" if several else "")
               for t in table.noise]
    calls = [noise_calls(test, rows, table.dims) for test in table.noise]
    return headers, [[column[i] for column in calls] for i in range(len(rows))]


def noise_note(table: Table, rows: list[Row]) -> str:
    """How the noise columns were made, or why no call could be made."""
    if not table.noise:
        return ""
    keys = ", ".join(dict.fromkeys(t.key for t in table.noise))
    if not any(len(row.samples.get(t.key, [])) >= 2 for row in rows for t in table.noise):
        return (f" No call on noise: each row has fewer than 2 finished repeats, so differences in {keys} "
                f"cannot be compared with the seed spread (set repeats >= 2).")
    against = "the best row" + (" (vs best) and the baseline row (vs baseline)"
                                if any(t.against is not None for t in table.noise) else "")
    return (f" vs best: Welch's t-test on {keys} over the repeats against {against}; "
            f"≈ = within the seed noise (p >= {table.noise[0].level:g}), ≠ = a difference beyond it, - = no call.")


def _statuses(row: Row) -> str:
    return ", ".join(f"{row.statuses.count(s)} {s}" for s in sorted(set(row.statuses)))


def text_cells(table: Table, rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """(header, body) of the table as text cells: the one renderer behind Markdown and HTML."""
    columns = [c.title for c in table.columns]
    noise, calls = _noise_columns(table, rows)
    if table.ranked:
        front = on_pareto_front(rows)
        header = ["rank", "configuration", "runs"] + columns + noise + ["Pareto", "status"]
        body = [[str(i), describe(row.values), str(len(row.trials))]
                + [_cell(c, row.mean[c.key], row.std[c.key]) for c in table.columns] + calls[i - 1]
                + ["*" if i - 1 in front else "", _statuses(row)] for i, row in enumerate(rows, start=1)]
        return header, body
    if not table.paper:
        header = [_dim_title(table, d) for d in table.dims] + ["n"] + columns + noise
        body = [[_dim_text(table, d, row.values) for d in table.dims] + [str(len(row.trials))]
                + [_cell(c, row.mean[c.key], row.std[c.key]) for c in table.columns] + calls[i]
                for i, row in enumerate(rows)]
        return header, body
    header = [_dim_title(table, d) for d in table.dims] + ["paper row", "n"]  # each paper column after ours
    header += [t for c in table.columns for t in ([c.title] + ([f"paper {c.title}"] if _paper_of(c) else []))] + noise
    body = []
    for i, row in enumerate(rows):
        paper = table.paper_row(row)
        cells = [_dim_text(table, d, row.values) for d in table.dims] + [_paper_label(paper), str(len(row.trials))]
        for column in table.columns:
            cells.append(_cell(column, row.mean[column.key], row.std[column.key]))
            if _paper_of(column):
                number = paper_value(paper, column)
                cells.append("-" if number is None else f"{number:.{column.digits}f}")
        body.append(cells + calls[i])
    return header, body


def _paper_of(column: Column) -> bool:
    """Whether the paper prints this column (top-1 / top-5 of a transfer phase)."""
    return column.source is not None and column.source[1] in ("top1", "top5")


def paper_value(paper: PaperRow | None, column: Column) -> float | None:
    """The paper's number for a top-1 / top-5 column (None: no annotation, an extra row, or not printed)."""
    if paper is None or not _paper_of(column):
        return None
    numbers = getattr(paper, column.source[1]) or []
    index = column.source[0] - 1  # reporting phase i is transfer phase i - 1
    return numbers[index] if 0 <= index < len(numbers) else None


def _paper_label(paper: PaperRow | None) -> str:
    if paper is None:
        return "-"
    if paper.extra is not None:
        return f"extra: {paper.extra}"
    return paper.row + (f" (α {paper.alpha:g}, {paper.alpha_reading} reading)" if paper.alpha is not None else "")


def heading(table: Table, rows: list[Row]) -> str:
    return table.heading.replace("{rows}", str(len(rows)))


def note(table: Table, rows: list[Row]) -> str:
    excluded = sum(r.excluded for r in rows)
    text = table.note.replace("{speedup}", speedup_kind([t for r in rows for t in r.trials]))
    return (text + (f" {excluded} stopped or failed trial(s) left out." if excluded else "") + noise_note(table, rows)
            + reuse_note(rows))


def reuse_note(rows: list[Row]) -> str:
    """' pre-training reused from RUN/trial_<id> (n trials).': the trials that loaded a stored pre-training
    (objmae_ray/train/reuse.py) instead of running their own; '' when none did."""
    sources: dict[str, int] = {}
    for trial in (t for row in rows for t in row.trials):
        source = trial.last.get("pretrain_reused_from")
        if isinstance(source, str) and source:
            sources[source] = sources.get(source, 0) + 1
    return "".join(f" pre-training reused from {s} ({n} trial{'s' if n > 1 else ''})." for s, n in sorted(sources.items()))


def markdown(table: Table, rows: list[Row]) -> str:
    header, body = text_cells(table, rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return f"## {heading(table, rows)}\n\n" + "\n".join(lines) + f"\n\n{note(table, rows)}\n"


def html_table(table: Table, rows: list[Row]) -> str:
    header, body = text_cells(table, rows)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return (f"<h2>{html.escape(heading(table, rows))}</h2>\n<table><thead><tr>{head}</tr></thead>"
            f"<tbody>{cells}</tbody></table>\n<p class=note>{html.escape(note(table, rows))}</p>\n")


def _raw(value: float | None) -> str:
    """A CSV cell that reads back as the same float: 3, 0.5, 1.4142135623730951; None as empty."""
    if value is None:
        return ""
    text = repr(float(value))
    return text.removesuffix(".0")


def csv_text(table: Table, rows: list[Row]) -> str:
    """Raw numbers at full precision (what the study stores): results form
    `rank, configuration, runs, <key>_mean, <key>_std, ...`; paper form
    `<dims>, n, excluded, <key>_mean, <key>_std, ...` (+ `paper_row, paper_<key>...` where the configurations
    carry `paper` annotations)."""
    out = io.StringIO()
    writer = csv.writer(out)
    stats = [f"{c.key}_{s}" for c in table.columns for s in ("mean", "std")]
    _, calls = _noise_columns(table, rows)
    printed = [c for c in table.columns if _paper_of(c)] if table.paper else []
    writer.writerow((["rank", "configuration", "runs"] if table.ranked else table.dims + ["n", "excluded"]) + stats
                    + [f"vs_{'baseline' if t.against is not None else 'best'}_{t.key}" for t in table.noise]
                    + (["paper_row"] + [f"paper_{c.key}" for c in printed] if table.paper else []))
    for i, row in enumerate(rows, start=1):
        numbers = [v for c in table.columns for v in (row.mean[c.key], row.std[c.key])]
        lead = ([i, describe(row.values), len(row.trials)] if table.ranked
                else [row.values[d] for d in table.dims] + [len(row.trials), row.excluded])
        paper = table.paper_row(row) if table.paper else None
        tail = ([_paper_label(paper)] + [_raw(paper_value(paper, c)) for c in printed]) if table.paper else []
        writer.writerow(lead + [_raw(v) for v in numbers] + calls[i - 1] + tail)
    return out.getvalue()
