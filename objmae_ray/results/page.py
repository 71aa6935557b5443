"""What a finished sweep writes: the results table in its run directory, and the report (`objmae-report`).

`write_results(run_path, spec, records)` (end of every sweep): results.md, results.csv, pareto.png in
the run directory (objmae_ray/results/tables.py's results form).
`write_report(run_dir)`: into RUN_DIR/report/ the paper table (table<N>_<name>.md / .csv), figures,
summary.json (the figures' numbers) and index.html (everything, images embedded):
  pareto.png              top-1 against speed-up (measured where the trials measured it), one point per configuration
  measured_tradeoff.png   top-1 against measured pre-train img/s
  importance.png          hyper-parameter importance from the stored Optuna study (results/importance.py)
  parallel_coordinates.png  the study's trials over the searched parameters
  reconstructions.png     Fig. 8 from the best trial's checkpoint on its validation images
  rollout.png             Fig. 10, attention rollout of the best trial's encoder
  object_probe.png        Fig. 2 / 7: one whole object hidden, rebuilt from the rest of the image by the best
                          trial and by the best MAE-selection trial when the run has one, with their rollouts
  object_ratio.png        Fig. 5 of its pre-training data
A figure that cannot be made is skipped with its one-line reason on the page.
Remote runs (s3://...) are read in place; both functions write into the run directory there too (the
report is rendered in a temporary directory, then copied).
"""
from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path
from typing import Any

from objmae_ray.config import SweepSpec
from objmae_ray.data.stats import object_ratio_stats
from objmae_ray.errors import ConfigError
from objmae_ray.results import figures, tables
from objmae_ray.results.export import best_record, best_trial, local_checkpoint
from objmae_ray.results.importance import study_figures
from objmae_ray.results.plots import FLOP_SPEEDUP, MEASURED_THROUGHPUT, plot_tradeoff
from objmae_ray.results.records import TrialRecord, records_from_dir
from objmae_ray.results.stats import finite
from objmae_ray.sweep.rundir import is_remote, join, load_run_spec, require_run, upload, write_text
from objmae_ray.sweep.space import base_trial, describe, short_name
from objmae_ray.sweep.study import study_for_reading
from objmae_ray.train.checkpoint import objmae_from_checkpoint

REPORT_DIR = "report"
RESULTS_MD, RESULTS_CSV, PARETO_PNG = "results.md", "results.csv", "pareto.png"


# ---- results table (every sweep) --------------------------------------------------------------------
def speedup_label(rows: list[tables.Row]) -> str:
    """The x label of a speed-up plot: which speed-up the rows show (tables.speedup_kind)."""
    kind = tables.speedup_kind([t for r in rows for t in r.trials])
    return FLOP_SPEEDUP if kind.startswith("FLOP") else f"pre-training speed-up ({kind.split(' (')[0]})"


def plot_pareto(rows: list[tables.Row], path: str | Path) -> None:
    """top-1 against the shown speed-up (measured or FLOP ratio, named on the axis), one point per row."""
    points = [(r.mean.get("speedup"), r.mean.get("top1"), describe(r.values), r.std.get("top1")) for r in rows]
    plot_tradeoff([p for p in points if p[0] is not None and p[1] is not None], path, xlabel=speedup_label(rows))


def write_results(run_path: str, spec: SweepSpec, records: list[TrialRecord]) -> str:
    """Write results.md, results.csv and pareto.png into the run directory (local or remote); return the table."""
    table = tables.results_table(spec)
    rows = tables.pivot(records, table, spec)
    text = tables.markdown(table, rows)
    write_text(join(run_path, RESULTS_MD), text)
    write_text(join(run_path, RESULTS_CSV), tables.csv_text(table, rows))
    with tempfile.TemporaryDirectory(prefix="objmae-results-") as scratch:
        plot_pareto(rows, Path(scratch) / PARETO_PNG)
        upload(Path(scratch) / PARETO_PNG, join(run_path, PARETO_PNG))
    return text + f"\nwritten: {', '.join(join(run_path, f) for f in (RESULTS_MD, RESULTS_CSV, PARETO_PNG))}"


# ---- figures ----------------------------------------------------------------------------------------
def make_figures(run_dir: str, spec: SweepSpec, records: list[TrialRecord], out: Path, *,
                 num_images: int = 4) -> tuple[dict[str, str], dict[str, Any]]:
    """Write the PNGs into out; return ({caption: file name}, numbers). A figure that cannot be made is
    skipped with its one-line reason in numbers["skipped"]."""
    made: dict[str, str] = {}
    numbers: dict[str, Any] = {"skipped": {}}
    _tradeoff_figures(spec, records, out, made, numbers)
    search_made, search_numbers = study_figures(study_for_reading(run_dir), spec, out)
    made.update(search_made)
    numbers["skipped"].update(search_numbers.pop("skipped"))
    numbers.update(search_numbers)
    _checkpoint_figures(run_dir, spec, out, num_images, made, numbers)
    if "best_trial" in numbers:
        _object_probe(spec, records, out, num_images, made, numbers)
    return made, numbers


def _tradeoff_figures(spec: SweepSpec, records: list[TrialRecord], out: Path, made: dict, numbers: dict) -> None:
    """Top-1 against FLOP speed-up and against measured pre-train throughput."""
    results = tables.results_table(spec)
    rows = tables.pivot(records, results, spec)
    plot_pareto(rows, out / "pareto.png")
    made[f"Top-1 against {speedup_label(rows)}; the Pareto front joined (red)"] = "pareto.png"
    top1, _ = tables.top_columns(spec)
    measured = tables.Table("measured", "", [d for d in results.dims if d != "seed"], [tables.THROUGHPUT, top1],
                            ranked=False)
    points = [(r.mean["images_per_s"], r.mean["top1"], describe(r.values), None)
              for r in tables.pivot(records, measured, spec)
              if r.mean["images_per_s"] is not None and r.mean["top1"] is not None]
    if points:
        front = plot_tradeoff(points, out / "measured_tradeoff.png", xlabel=MEASURED_THROUGHPUT)
        made["Top-1 against measured pre-train throughput; the Pareto front joined (red)"] = "measured_tradeoff.png"
        numbers["measured_pareto_front"] = [points[i][2] for i in front]


def _checkpoint_figures(run_dir: str, spec: SweepSpec, out: Path, num_images: int, made: dict,
                        numbers: dict) -> None:
    """Fig. 8 and Fig. 10 from the best trial's checkpoint on its validation images; Fig. 5 of its data."""
    objective = spec.objectives[0]
    try:
        best = best_trial(run_dir, objective.metric, objective.mode, objective.phase)
        with tempfile.TemporaryDirectory(prefix="objmae-report-") as scratch:
            model, cfg = objmae_from_checkpoint(local_checkpoint(best.checkpoint_dir(), scratch))
    except ConfigError as err:
        numbers["skipped"]["checkpoint figures"] = str(err)
        return
    numbers["best_trial"] = {"trial_id": best.trial_id, "params": best.params, objective.key:
                             finite(best.final(objective.metric, objective.phase)),
                             "checkpoint": str(best.checkpoint_dir())}
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
    data = cfg.pretrain.data
    if data.kind not in ("synthetic", "coco"):
        numbers["skipped"]["object ratio histogram"] = f"pretrain.data.kind {data.kind!r} has no masks"
        return
    try:
        stats = object_ratio_stats(data, data.train_split, img_size=cfg.model.img_size,
                                   patch_size=cfg.model.patch_size, min_ratio=cfg.masking.min_ratio,
                                   png=out / "object_ratio.png")
    except ConfigError as err:
        numbers["skipped"]["object ratio histogram"] = str(err)
        return
    made["Fig. 5: object ratios of the pre-training set (red: minimum ratio)"] = "object_ratio.png"
    numbers["object_ratio"] = {k: v for k, v in stats.items() if k != "png"}


def _object_probe(spec: SweepSpec, records: list[TrialRecord], out: Path, num_images: int, made: dict,
                  numbers: dict) -> None:
    """Fig. 2 / 7: the best trial, and the best trial with MAE selection, each rebuild a whole hidden object."""
    objective = spec.objectives[0]
    base_selection = base_trial(spec).masking.selection
    mae = [r for r in records if r.params.get("masking.selection", base_selection) == "mae"]
    chosen = {"best": best_record(records, objective.metric, objective.mode, objective.phase)}
    if mae and chosen["best"] not in mae:
        chosen["MAE"] = best_record(mae, objective.metric, objective.mode, objective.phase)
    try:
        probes, imgs = {}, None
        for label, record in chosen.items():
            if record is None:
                continue
            with tempfile.TemporaryDirectory(prefix="objmae-report-") as scratch:
                model, cfg = objmae_from_checkpoint(local_checkpoint(record.checkpoint_dir(), scratch))
            batch, _ = figures.validation_batch(cfg, num_images)
            if "object_patches" not in batch:
                raise ConfigError(f"pretrain.data.kind {cfg.pretrain.data.kind!r} has no object masks")
            imgs = batch["image"]
            masks = figures.object_probe_masks(batch, cfg.masking.min_ratio)
            name = f"{label} ({record.params.get('masking.selection', base_selection)}, trial {record.trial_id})"
            probes[name] = (figures.reconstruct(model, imgs, masks),
                            figures.rollout_map(model, imgs, masks.src_idx, masks.src_valid))
    except ConfigError as err:
        numbers["skipped"]["object probe"] = str(err)
        return
    figures.plot_object_probe(imgs, probes, out / "object_probe.png")
    made["Fig. 2 / 7: one whole object hidden and rebuilt from the rest of the image (MSE on the object vs "
         "predicting zeros), and each encoder's attention rollout over the rest"] = "object_probe.png"
    numbers["object_probe"] = {name: {"mse": rec.error.tolist(), "zero_baseline_mse": rec.zero_error.tolist()}
                               for name, (rec, _) in probes.items()}


# ---- the page ---------------------------------------------------------------------------------------
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
    dims = ", ".join(short_name(d) for d in tables.paper_table(spec).dims) or "none"
    objectives = ", ".join(o.label for o in spec.objectives)
    parts = [f"<!DOCTYPE html><html><head><meta charset=utf-8><title>ObjMAE sweep {html.escape(spec.study)}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>ObjMAE sweep: {html.escape(spec.study)}</h1>",
             f"<p>{len(records)} trials ({', '.join(f'{n} {s}' for s, n in counts.items() if n)}); "
             f"searched: {html.escape(dims)}; objectives: {html.escape(objectives)}; "
             f"repeats per configuration: {spec.repeats}.</p>", tables_html]
    best = numbers.get("best_trial")
    if best:
        parts.append(f"<p>Best trial by {html.escape(spec.objectives[0].label)}: <code>{html.escape(best['trial_id'])}"
                     f"</code> {html.escape(json.dumps(best['params']))}</p>")
    for caption, name in made.items():
        parts.append(f"<figure><img alt=\"{html.escape(name)}\" src=\"{_embedded(out / name)}\">"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    for what, reason in numbers.get("skipped", {}).items():
        parts.append(f"<p class=note>{html.escape(what)} skipped: {html.escape(reason)}</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(run_dir: str | Path, out: str | Path | None = None, *, num_images: int = 4,
                 with_figures: bool = True) -> Path | str:
    """Paper table (Markdown + CSV), figures and index.html of the run in run_dir (local or remote), into out
    (default run_dir/report); return the report directory (a Path, or the URI for a remote run)."""
    run_dir = require_run(str(run_dir))
    if out is None and is_remote(run_dir):
        with tempfile.TemporaryDirectory(prefix="objmae-report-") as scratch:
            _write_report(run_dir, Path(scratch), num_images, with_figures)
            upload(scratch, join(run_dir, REPORT_DIR))
        return join(run_dir, REPORT_DIR)
    out = Path(out) if out is not None else Path(run_dir) / REPORT_DIR
    _write_report(run_dir, out, num_images, with_figures)
    return out


def _write_report(run_dir: str, out: Path, num_images: int, with_figures: bool) -> None:
    spec = load_run_spec(run_dir)
    records = records_from_dir(run_dir)
    if not records:
        raise ConfigError(f"{run_dir}: no trials found (no trial directory with params.json)")
    out.mkdir(parents=True, exist_ok=True)
    table = tables.paper_table(spec)
    rows = tables.pivot(records, table, spec)
    (out / f"{table.name}.md").write_text(tables.markdown(table, rows))
    (out / f"{table.name}.csv").write_text(tables.csv_text(table, rows))
    made, numbers = make_figures(run_dir, spec, records, out, num_images=num_images) if with_figures else ({}, {})
    (out / "summary.json").write_text(json.dumps({"table": table.name, **numbers}, indent=2, default=str))
    (out / "index.html").write_text(html_page(spec, records, tables.html_table(table, rows), made, numbers, out))
