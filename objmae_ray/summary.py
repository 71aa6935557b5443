"""`objmae-report RUN_DIR`: the paper's tables and figures for a finished sweep, plus one static HTML page.

Which table: the dimensions the sweep searched (its saved sweep.yaml; `seed` counts as a repeat, not a
dimension) pick the paper table whose rows they are; every table is the same pivot (`pivot`): one row
per combination of the searched values, each metric's mean and sample std over the finished trials of
that row (the repeats, seeds base.seed + 0 .. R-1).

  searched dimensions                 table    columns
  (any) with 2+ transfer phases       Table 5  speed-up, top-1 / top-5 of every transfer phase
  alpha                               Table 4  speed-up, pre-train img/s, recon loss, top-1, top-5
  selection                           Table 6  top-1, top-5 (selective region: intra / inter object)
  patch_size (+ selection, alpha)     Table 7  top-1, top-5
  padding                             Table 8  top-1, top-5
  selection + alpha                   Table 9  top-1, top-5
  anything else                       ablation speed-up, pre-train img/s, recon loss, top-1, top-5

Numbers per trial: top-1 / top-5 are the last report of a transfer phase (the final phase's unless the
table names the phase), recon loss the last pre-train epoch's, speed-up `speedup_est` (FLOP ratio vs a
supervised ViT step), pre-train img/s the measured throughput of the last pre-train epoch. Only trials
that finished every phase count; stopped (ASHA) and failed trials are counted under the table and left
out of the means.

Output (default RUN_DIR/report/): table<N>_<name>.md / .csv, pareto.png (objmae_ray.report's plot,
FLOP speed-up), measured_tradeoff.png (top-1 vs measured pre-train img/s, one point per configuration),
reconstructions.png, rollout.png, object_ratio.png (figures.py; from the best trial's checkpoint and its
pre-train data), summary.json (the figures' numbers) and index.html (everything, images embedded).
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from objmae_ray.config import ChoiceParam, SweepSpec
from objmae_ray.errors import ConfigError
from objmae_ray.report import TrialRecord, finite

REPORT_DIR = "report"
_ALIAS = {"masking.alpha": "alpha", "masking.padding": "padding", "masking.selection": "selection",
          "model.patch_size": "patch_size"}
_MODEL = {"object": "ObjMAE", "mae": "MAE", "inter": "ObjMAE (inter)", "cam": "ObjMAE (CAM)"}
_REGION = {"object": "Intra-object", "inter": "Inter-object", "mae": "Whole image (MAE)", "cam": "CAM region"}
_PHASE = {"finetune": "Fine-tune", "linear": "Linear probe"}
_DATA = {"cifar100": "CIFAR-100", "coco": "COCO", "synthetic": "synthetic"}


# ---- what a table looks like ----------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """A metric column: `value(record)` is the trial's number (None if it never reported it)."""

    key: str
    title: str
    digits: int
    value: Callable[[TrialRecord], float | None]
    suffix: str = ""


@dataclass
class PaperTable:
    number: str  # "8", or "ablation"
    name: str  # file stem
    caption: str
    dims: list[str]  # dotted TrialConfig paths, one row per combination of their values
    columns: list[Column]


@dataclass
class Row:
    values: dict[str, Any]  # dim -> value
    trials: list[TrialRecord] = field(default_factory=list)  # finished trials of this row
    excluded: int = 0  # stopped / failed trials of this row
    mean: dict[str, float | None] = field(default_factory=dict)
    std: dict[str, float | None] = field(default_factory=dict)


def _phase_metric(index: int | None, metric: str) -> Callable[[TrialRecord], float | None]:
    """The last report of transfer phase `index` (1-based; None: the final phase) -> its `metric`."""
    def value(record: TrialRecord) -> float | None:
        finals = record.phase_finals()
        last = index if index is not None else max(finals, default=0)
        return finite(finals[last].get(metric)) if last >= 1 and last in finals else None
    return value


def _last(metric: str) -> Callable[[TrialRecord], float | None]:
    return lambda record: finite(record.last.get(metric))


def _pretrain(metric: str) -> Callable[[TrialRecord], float | None]:
    return lambda record: finite(record.phase_finals().get(0, {}).get(metric))


SPEEDUP = Column("speedup", "Speed Up", 1, _last("speedup_est"), "x")
RECON = Column("recon_loss", "Recon Loss", 4, _pretrain("recon_loss"))
THROUGHPUT = Column("images_per_s", "Pre-train img/s", 1, _pretrain("images_per_s"))  # measured
TOP1 = Column("top1", "Top-1", 2, _phase_metric(None, "top1"))
TOP5 = Column("top5", "Top-5", 2, _phase_metric(None, "top5"))


def _phase_columns(spec: SweepSpec) -> list[Column]:
    """Top-1 / top-5 of every transfer phase, e.g. "Fine-tune folder Top-1" (Table 5)."""
    columns = []
    for i, transfer in enumerate(spec.base.transfer, start=1):
        data = _DATA.get(transfer.data.kind) or Path(transfer.data.root or transfer.data.kind).name
        label = f"{_PHASE.get(transfer.mode, transfer.mode)} {data}"
        columns += [Column(f"top1_phase{i}", f"{label} Top-1", 2, _phase_metric(i, "top1")),
                    Column(f"top5_phase{i}", f"{label} Top-5", 2, _phase_metric(i, "top5"))]
    return columns


def searched_dims(spec: SweepSpec) -> list[str]:
    """Dotted paths of the dimensions the sweep varied (in file order), without `seed` (a repeat)."""
    from objmae_ray.sweep import searched

    return [path for path in searched(spec) if path != "seed"]


def choose_table(spec: SweepSpec) -> PaperTable:
    """The paper table whose rows are the searched dimensions (see the module docstring)."""
    dims = searched_dims(spec)
    short = {_ALIAS.get(d, d) for d in dims}
    order = ["masking.selection", "masking.alpha", "model.patch_size", "masking.padding"]
    dims = sorted(dims, key=lambda d: order.index(d) if d in order else len(order))
    if len(spec.base.transfer) > 1:
        return PaperTable("5", "table5_transfer", "Transfer of the pre-trained encoder to each downstream task",
                          dims, [SPEEDUP] + _phase_columns(spec))
    if short == {"alpha"}:
        return PaperTable("4", "table4_alpha", "Performance vs. acceleration over alpha", dims,
                          [SPEEDUP, THROUGHPUT, RECON, TOP1, TOP5])
    if short == {"selection"}:
        return PaperTable("6", "table6_selection", "Selective regions (intra- vs inter-object)", dims, [TOP1, TOP5])
    if "patch_size" in short and short <= {"selection", "alpha", "patch_size"}:
        return PaperTable("7", "table7_patch_size", "Model, alpha and patch size", dims, [TOP1, TOP5])
    if short == {"padding"}:
        return PaperTable("8", "table8_padding", "Ablation of the padding mode", dims, [TOP1, TOP5])
    if short == {"selection", "alpha"}:
        return PaperTable("9", "table9_alpha", "Ablation of alpha for ObjMAE and MAE", dims, [TOP1, TOP5])
    return PaperTable("ablation", "table_ablation", "Searched settings", dims,
                      [SPEEDUP, THROUGHPUT, RECON, TOP1, TOP5])


# ---- the pivot -------------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _dim_order(spec: SweepSpec, dim: str) -> Callable[[Any], tuple]:
    """Sort key of a dimension's values: the order of its choices in the file, else ascending."""
    from objmae_ray.sweep import searched

    param = searched(spec).get(dim)
    choices = list(param.choices) if isinstance(param, ChoiceParam) else []
    return lambda v: (choices.index(v), 0, "") if v in choices else (
        len(choices), v if isinstance(v, (int, float)) else 0, str(v))


def pivot(records: list[TrialRecord], spec: SweepSpec, dims: list[str], columns: list[Column]) -> list[Row]:
    """One row per combination of `dims` values among the records; each column's mean and sample std
    over the row's finished trials (status "done"). Rows in the order of the searched values."""
    rows: dict[tuple, Row] = {}
    for record in records:
        values = {d: record.params.get(d) for d in dims}
        row = rows.setdefault(tuple(values.values()), Row(values))
        if record.status == "done":
            row.trials.append(record)
        else:
            row.excluded += 1
    for row in rows.values():
        for column in columns:
            numbers = [v for v in (column.value(r) for r in row.trials) if v is not None]
            row.mean[column.key], row.std[column.key] = _mean_std(numbers)
    keys = [_dim_order(spec, d) for d in dims]
    return sorted(rows.values(), key=lambda row: tuple(k(row.values[d]) for k, d in zip(keys, dims)))


# ---- rendering ------------------------------------------------------------------------------------
def _dim_title(table: PaperTable, dim: str) -> str:
    if dim == "masking.selection":
        return "Selective Region" if table.number == "6" else "Model"
    return {"masking.alpha": "α", "model.patch_size": "Patch Size", "masking.padding": "Padding Mode"}.get(dim, dim)


def _dim_text(table: PaperTable, dim: str, value: Any) -> str:
    if dim == "masking.selection":
        return (_REGION if table.number == "6" else _MODEL).get(value, str(value))
    if dim == "masking.padding":
        return str(value).capitalize()
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _cell(column: Column, mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{column.digits}f}{column.suffix}" + (f" ± {std:.{column.digits}f}" if std else "")


def table_cells(table: PaperTable, rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """(header, body) of the table as text cells."""
    header = [_dim_title(table, d) for d in table.dims] + ["n"] + [c.title for c in table.columns]
    body = [[_dim_text(table, d, row.values[d]) for d in table.dims] + [str(len(row.trials))]
            + [_cell(c, row.mean[c.key], row.std[c.key]) for c in table.columns] for row in rows]
    return header, body


def _title(table: PaperTable, spec: SweepSpec) -> str:
    label = f"Table {table.number}" if table.number.isdigit() else "Ablation"
    return f"{label} (paper form): {table.caption} (study {spec.study})"


def _note(rows: list[Row]) -> str:
    excluded = sum(r.excluded for r in rows)
    text = "mean ± sample std over n finished seeds; top-1/5 in %; speed-up = FLOP ratio vs a supervised ViT step."
    return text + (f" {excluded} stopped or failed trial(s) left out." if excluded else "")


def markdown(table: PaperTable, rows: list[Row], spec: SweepSpec) -> str:
    header, body = table_cells(table, rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return f"## {_title(table, spec)}\n\n" + "\n".join(lines) + f"\n\n{_note(rows)}\n"


def csv_text(table: PaperTable, rows: list[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(table.dims + ["n", "excluded"] + [f"{c.key}_{s}" for c in table.columns for s in ("mean", "std")])
    for row in rows:
        numbers = [v for c in table.columns for v in (row.mean[c.key], row.std[c.key])]
        writer.writerow([row.values[d] for d in table.dims] + [len(row.trials), row.excluded]
                        + ["" if v is None else f"{v:.6g}" for v in numbers])
    return out.getvalue()


def html_table(table: PaperTable, rows: list[Row], spec: SweepSpec) -> str:
    header, body = table_cells(table, rows)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return (f"<h2>{html.escape(_title(table, spec))}</h2>\n<table><thead><tr>{head}</tr></thead>"
            f"<tbody>{cells}</tbody></table>\n<p class=note>{html.escape(_note(rows))}</p>\n")


def _describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{_ALIAS.get(d, d)}={v:.4g}" if isinstance(v, float) else f"{_ALIAS.get(d, d)}={v}"
                     for d, v in values.items()) or "base"


# ---- figures --------------------------------------------------------------------------------------
def make_figures(run_dir: Path, spec: SweepSpec, records: list[TrialRecord], out: Path, *,
                 num_images: int = 4) -> tuple[dict[str, str], dict[str, Any]]:
    """Write the PNGs into out; return ({caption: file name}, numbers). A figure that cannot be made is
    skipped with its one-line reason in numbers["skipped"] (e.g. checkpoints on remote storage)."""
    made: dict[str, str] = {}
    numbers: dict[str, Any] = {"skipped": {}}
    _tradeoff_figures(spec, records, out, made, numbers)
    _checkpoint_figures(run_dir, spec, out, num_images, made, numbers)
    return made, numbers


def _tradeoff_figures(spec: SweepSpec, records: list[TrialRecord], out: Path, made: dict, numbers: dict) -> None:
    """Top-1 against FLOP speed-up (objmae_ray.report's plot) and against measured pre-train throughput."""
    from objmae_ray import figures, report

    report.plot_pareto(report.group_trials(records, spec), out / "pareto.png")
    made["Top-1 against pre-training speed-up (FLOP ratio); the Pareto front joined (red)"] = "pareto.png"
    configurations = pivot(records, spec, searched_dims(spec), [THROUGHPUT, TOP1])
    points = [(r.mean["images_per_s"], r.mean["top1"], _describe(r.values)) for r in configurations
              if r.mean["images_per_s"] is not None and r.mean["top1"] is not None]
    if points:
        front = figures.plot_measured_tradeoff(points, out / "measured_tradeoff.png")
        made["Top-1 against measured pre-train throughput; the Pareto front joined (red)"] = "measured_tradeoff.png"
        numbers["measured_pareto_front"] = [points[i][2] for i in front]


def _checkpoint_figures(run_dir: Path, spec: SweepSpec, out: Path, num_images: int, made: dict,
                        numbers: dict) -> None:
    """Fig. 8 and Fig. 10 from the best trial's checkpoint on its validation images; Fig. 5 of its data."""
    from objmae_ray import figures
    from objmae_ray.export import best_trial, checkpoint_dir

    objective = spec.objectives[0]
    try:
        best = best_trial(run_dir, objective.metric, objective.mode)
        model, cfg = figures.load_checkpoint_model(checkpoint_dir(best))
    except ConfigError as err:
        numbers["skipped"]["checkpoint figures"] = str(err)
        return
    numbers["best_trial"] = {"trial_id": best.trial_id, "params": best.params, objective.metric:
                             finite(best.last.get(objective.metric)), "checkpoint": str(checkpoint_dir(best))}
    try:
        batch, masks = figures.validation_batch(cfg, num_images)
    except ConfigError as err:
        numbers["skipped"]["reconstructions and rollout"] = str(err)
    else:
        imgs = batch["image"]
        rec = figures.reconstruct(model, imgs, masks)
        figures.plot_reconstructions(rec, out / "reconstructions.png")
        made[f"Fig. 8: source, target and reconstructed target patches of trial {best.trial_id} "
             f"(validation images; other patches darker)"] = "reconstructions.png"
        numbers["reconstruction"] = {"mse": rec.error.tolist(), "zero_baseline_mse": rec.zero_error.tolist(),
                                     "fallback": masks.fallback.tolist()}
        region = figures.selected_region(masks, model.num_patches)
        whole = figures.rollout_map(model, imgs)
        inside = figures.rollout_map(model, imgs, *figures.region_slots(region))
        figures.plot_rollout(imgs, region, whole, inside, out / "rollout.png")
        made[f"Fig. 10: attention rollout of trial {best.trial_id}'s encoder (cls token over the patches)"] = \
            "rollout.png"
    try:
        stats = figures.plot_object_ratios(cfg, out / "object_ratio.png")
    except ConfigError as err:
        numbers["skipped"]["object ratio histogram"] = str(err)
        return
    if stats is None:
        numbers["skipped"]["object ratio histogram"] = f"pretrain.data.kind {cfg.pretrain.data.kind!r} has no masks"
    else:
        made["Fig. 5: object ratios of the pre-training set (red: minimum ratio)"] = "object_ratio.png"
        numbers["object_ratio"] = stats


# ---- the page -------------------------------------------------------------------------------------
_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}
th{background:#eee}td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:90%}
figure{margin:1.5em 0}img{max-width:100%;border:1px solid #ddd}figcaption{font-size:90%;color:#333}"""


def _embedded(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def html_page(spec: SweepSpec, records: list[TrialRecord], tables_html: str, made: dict[str, str],
              numbers: dict[str, Any], out: Path) -> str:
    """A static page (no server, no network): tables, figures embedded as base64 PNGs, skipped figures."""
    counts = {s: sum(r.status == s for r in records) for s in ("done", "stopped", "error", "pending")}
    dims = ", ".join(_ALIAS.get(d, d) for d in searched_dims(spec)) or "none"
    objectives = ", ".join(f"{o.metric} ({o.mode})" for o in spec.objectives)
    parts = [f"<!DOCTYPE html><html><head><meta charset=utf-8><title>ObjMAE sweep {html.escape(spec.study)}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>ObjMAE sweep: {html.escape(spec.study)}</h1>",
             f"<p>{len(records)} trials ({', '.join(f'{n} {s}' for s, n in counts.items() if n)}); "
             f"searched: {html.escape(dims)}; objectives: {html.escape(objectives)}; "
             f"repeats per configuration: {spec.repeats}.</p>", tables_html]
    best = numbers.get("best_trial")
    if best:
        parts.append(f"<p>Best trial by {html.escape(spec.objectives[0].metric)}: <code>{html.escape(best['trial_id'])}"
                     f"</code> {html.escape(json.dumps(best['params']))}</p>")
    for caption, name in made.items():
        parts.append(f"<figure><img alt=\"{html.escape(name)}\" src=\"{_embedded(out / name)}\">"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    for what, reason in numbers.get("skipped", {}).items():
        parts.append(f"<p class=note>{html.escape(what)} skipped: {html.escape(reason)}</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_summary(run_dir: str | Path, out: str | Path | None = None, *, num_images: int = 4,
                  figures: bool = True) -> Path:
    """Tables (Markdown + CSV), figures and index.html of the run in run_dir, into out (default run_dir/report)."""
    from objmae_ray.report import records_from_dir
    from objmae_ray.sweep import load_run_spec

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: run directory not found (remote storage: copy it locally first)")
    spec = load_run_spec(run_dir)
    records = records_from_dir(run_dir)
    if not records:
        raise ConfigError(f"{run_dir}: no trials found (no trial directory with params.json)")
    out = Path(out) if out is not None else run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    table = choose_table(spec)
    rows = pivot(records, spec, table.dims, table.columns)
    (out / f"{table.name}.md").write_text(markdown(table, rows, spec))
    (out / f"{table.name}.csv").write_text(csv_text(table, rows))
    made, numbers = make_figures(run_dir, spec, records, out, num_images=num_images) if figures else ({}, {})
    (out / "summary.json").write_text(json.dumps({"table": table.name, **numbers}, indent=2, default=str))
    (out / "index.html").write_text(html_page(spec, records, html_table(table, rows, spec), made, numbers, out))
    return out


def main(argv: list[str] | None = None) -> int:
    """`objmae-report RUN_DIR [--out DIR] [--images N] [--no-figures]`."""
    parser = argparse.ArgumentParser(prog="objmae-report",
                                     description="The paper's tables and figures for a finished objmae-sweep run.")
    parser.add_argument("run_dir", help="the sweep's run directory (<storage>/<name>)")
    parser.add_argument("--out", default=None, help=f"output directory (default RUN_DIR/{REPORT_DIR})")
    parser.add_argument("--images", type=int, default=4, help="validation images in the figures (default 4)")
    parser.add_argument("--no-figures", action="store_true", help="tables and page only")
    args = parser.parse_args(argv)
    try:
        out = write_summary(args.run_dir, args.out, num_images=args.images, figures=not args.no_figures)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report written to {out} (open {out / 'index.html'})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
