"""Results of a sweep in the paper's form: one row per configuration (mean ± spread over repeats),
ranked by the first objective, as Markdown + CSV, and a plot of top-1 against speed-up with the
Pareto front marked.

Per trial, from its reports (one per epoch, objmae_ray.trial's metrics):
  speed-up   `speedup_est` (FLOP ratio vs a supervised ViT step of the same preset)
  recon loss `recon_loss` of the last pre-train epoch
  top-1/5    last report of each transfer phase (`phase_index` >= 1); the final phase's are the
             "top-1"/"top-5" columns, earlier phases get their own columns (Table 5's form)
Spread is the sample standard deviation over the configuration's repeats (0 for one run).
Trial records come from a Tune ResultGrid (`records_from_results`) or, without Ray, from the
trial directories' `result.json` / `params.json` (`records_from_dir`; JSON only, nothing unpickled).
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from objmae_ray.config import SweepSpec
from objmae_ray.spec import ALIASES, TRIAL_INDEX, trial_config_from

RESULTS_MD, RESULTS_CSV, PARETO_PNG = "results.md", "results.csv", "pareto.png"
_SHORT = {path: alias for alias, path in ALIASES.items()}


@dataclass
class TrialRecord:
    """One Tune trial: its searched values, repeat index, reports in order, and where it lives."""

    trial_id: str
    params: dict[str, Any]  # dotted TrialConfig path -> value (the searched dimensions)
    repeat: int
    history: list[dict]
    path: str = ""
    error: bool = False
    final_point: tuple[int, int] | None = None  # (phase_index, epoch) of the trial's last report when complete

    @property
    def last(self) -> dict:
        return self.history[-1] if self.history else {}

    @property
    def status(self) -> str:
        if self.error:
            return "error"
        if not self.history:
            return "pending"
        if self.final_point is None:  # config unknown: trust the trial's own flag
            return "done" if self.last.get("done") is True else "stopped"
        reached = (int(self.last.get("phase_index", -1)), int(self.last.get("epoch", -1)))
        return "done" if reached == self.final_point else "stopped"  # Tune sets `done` on stopped trials too

    def phase_finals(self) -> dict[int, dict]:
        """phase_index -> last report of that phase."""
        finals: dict[int, dict] = {}
        for report in self.history:
            finals[int(report.get("phase_index", 0))] = report
        return finals


def _params(config: dict) -> dict[str, Any]:
    return {k: v for k, v in sorted(config.items()) if "." in k}


def _final_point(config: dict) -> tuple[int, int] | None:
    """(phase_index, epoch) of a complete trial's last report, from its Tune config."""
    try:
        cfg = trial_config_from(config)
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    last = cfg.transfer[-1] if cfg.transfer else cfg.pretrain
    return len(cfg.transfer), last.epochs - 1


def records_from_results(results) -> list[TrialRecord]:
    """TrialRecords of a tune.ResultGrid."""
    records = []
    for result in results:
        frame = result.metrics_dataframe
        history = frame.to_dict("records") if frame is not None else []
        config = result.config or {}
        records.append(TrialRecord(str((result.metrics or {}).get("trial_id", Path(result.path).name)),
                                   _params(config), int(config.get(TRIAL_INDEX, 0)), history,
                                   path=str(result.path), error=result.error is not None,
                                   final_point=_final_point(config)))
    return records


def records_from_dir(run_dir: str | Path) -> list[TrialRecord]:
    """TrialRecords from a local experiment directory (each trial dir's params.json and result.json)."""
    records = []
    for trial_dir in sorted(p for p in Path(run_dir).iterdir() if (p / "params.json").is_file()):
        config = json.loads((trial_dir / "params.json").read_text())
        history = []
        result_file = trial_dir / "result.json"
        if result_file.is_file():
            history = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        trial_id = history[-1].get("trial_id", trial_dir.name) if history else trial_dir.name
        records.append(TrialRecord(str(trial_id), _params(config), int(config.get(TRIAL_INDEX, 0)), history,
                                   path=str(trial_dir), error=_errored(trial_dir),
                                   final_point=_final_point(config)))
    return records


def _errored(trial_dir: Path) -> bool:
    """Tune's error.txt stays after `--resume` finishes the trial: an error counts only if nothing was reported after it."""
    error, result = trial_dir / "error.txt", trial_dir / "result.json"
    if not error.is_file():
        return False
    return not result.is_file() or error.stat().st_mtime >= result.stat().st_mtime


# ---- table --------------------------------------------------------------------------------------
def finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def trial_row(record: TrialRecord, spec: SweepSpec) -> dict[str, float | None]:
    """The numbers of one trial (None where it never reported them)."""
    finals = record.phase_finals()
    last = record.last
    row = {"speedup": finite(last.get("speedup_est")), "recon_loss": finite(last.get("recon_loss")),
           "pretrain_time_s": finite(last.get("pretrain_time_s"))}
    transfers = spec.base.transfer
    final_index = len(transfers)
    for i, transfer in enumerate(transfers, start=1):
        report = finals.get(i, {})
        if i == final_index:
            row["top1"], row["top5"] = finite(report.get("top1")), finite(report.get("top5"))
        else:
            row[f"top1 {i}:{transfer.mode} {transfer.data.kind}"] = finite(report.get("top1"))
    for objective in spec.objectives:  # any other objective metric: its final value
        key = {"speedup_est": "speedup"}.get(objective.metric, objective.metric)
        row.setdefault(key, finite(last.get(objective.metric)))
    return row


def _describe(params: dict[str, Any]) -> str:
    """'alpha=0.1379, padding=zero' (short names for the paper's knobs, 4 significant digits)."""
    text = (f"{v:.4g}" if isinstance(v, float) else str(v) for v in params.values())
    return ", ".join(f"{_SHORT.get(k, k)}={t}" for k, t in zip(params, text)) or "base"


@dataclass
class Group:
    """One configuration and its repeats."""

    config: str
    params: dict[str, Any]
    rows: list[dict] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)

    def mean(self, key: str) -> float | None:
        values = [r[key] for r in self.rows if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    def std(self, key: str) -> float | None:
        values = [r[key] for r in self.rows if r.get(key) is not None]
        if not values:
            return None
        if len(values) == 1:
            return 0.0
        mu = sum(values) / len(values)
        return math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1))


def group_trials(records: list[TrialRecord], spec: SweepSpec) -> list[Group]:
    """Groups of repeats, ranked by the first objective (missing values last)."""
    groups: dict[str, Group] = {}
    for record in records:
        key = json.dumps(record.params, sort_keys=True, default=str)
        group = groups.setdefault(key, Group(_describe(record.params), record.params))
        group.rows.append(trial_row(record, spec))
        group.statuses.append(record.status)
    objective = spec.objectives[0]
    key = {"speedup_est": "speedup"}.get(objective.metric, objective.metric)
    sign = -1 if objective.mode == "max" else 1

    def rank(group: Group):
        value = group.mean(key)
        return (value is None, sign * value if value is not None else 0.0, group.config)

    return sorted(groups.values(), key=rank)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when maximising both coordinates."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(x2 >= x and y2 >= y and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def _columns(groups: list[Group]) -> list[str]:
    keys = ["speedup", "recon_loss", "top1", "top5"]
    extra = sorted({k for g in groups for r in g.rows for k in r if k.startswith("top1 ")})
    return keys + extra + ["pretrain_time_s"] + sorted(
        {k for g in groups for r in g.rows for k in r} - set(keys) - set(extra) - {"pretrain_time_s"})


_TITLES = {"speedup": "speed-up", "recon_loss": "recon loss", "top1": "top-1", "top5": "top-5",
           "pretrain_time_s": "pre-train s"}


def _fmt(key: str, mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    digits = 4 if key == "recon_loss" else (1 if key in ("speedup", "pretrain_time_s") else 2)
    text = f"{mean:.{digits}f}" + ("x" if key == "speedup" else "")
    return text + (f" ± {std:.{digits}f}" if std else "")


def _on_front(groups: list[Group]) -> set[int]:
    points = [(g.mean("speedup"), g.mean("top1")) for g in groups]
    valid = [i for i, p in enumerate(points) if None not in p]
    return {valid[i] for i in pareto_front([points[i] for i in valid])}


def markdown_table(groups: list[Group], spec: SweepSpec) -> str:
    columns = _columns(groups)
    front = _on_front(groups)
    head = ["rank", "configuration", "runs"] + [_TITLES.get(c, c) for c in columns] + ["Pareto", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rank, group in enumerate(groups, start=1):
        cells = [str(rank), group.config, str(len(group.rows))]
        cells += [_fmt(c, group.mean(c), group.std(c)) for c in columns]
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(
            {s: group.statuses.count(s) for s in group.statuses}.items()))
        cells += ["*" if rank - 1 in front else "", statuses]
        lines.append("| " + " | ".join(cells) + " |")
    objectives = ", ".join(f"{o.metric} ({o.mode})" for o in spec.objectives)
    return (f"## {spec.study}: {len(groups)} configurations, ranked by {objectives}\n\n" + "\n".join(lines)
            + "\n\nmean ± sample std over repeats; speed-up = FLOP ratio vs a supervised ViT step;"
              " Pareto = not dominated in (speed-up, top-1).\n")


def csv_text(groups: list[Group]) -> str:
    columns = _columns(groups)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["rank", "configuration", "runs"] + [f"{c}_{s}" for c in columns for s in ("mean", "std")])
    for rank, group in enumerate(groups, start=1):
        values = [v for c in columns for v in (group.mean(c), group.std(c))]
        writer.writerow([rank, group.config, len(group.rows)] + ["" if v is None else f"{v:.6g}" for v in values])
    return out.getvalue()


def plot_tradeoff(points: list[tuple[float, float, str, float | None]], path: str | Path, *,
                  xlabel: str) -> list[int]:
    """PNG of top-1 (y) against a speed measure (x): points (x, y, label, y std or None), the Pareto
    front (both maximised) joined and labelled. Returns the front's indices into points."""
    from matplotlib.figure import Figure  # object API: Agg rendering, no global pyplot state

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    ax = fig.subplots()
    front = pareto_front([(p[0], p[1]) for p in points]) if points else []
    if points:
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[3] or 0.0 for p in points], fmt="o",
                    color="tab:blue", ecolor="0.6", capsize=3, label="configuration (± std over repeats)")
        line = sorted((points[i] for i in front), key=lambda p: p[0])
        ax.plot([p[0] for p in line], [p[1] for p in line], "o-", color="tab:red", label="Pareto front", zorder=3)
        for x, y, label, _ in line:
            ax.annotate(label, (x, y), fontsize=7, ha="right", xytext=(-4, 6), textcoords="offset points")
        ax.margins(x=0.1, y=0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return front


def plot_pareto(groups: list[Group], path: str | Path) -> None:
    """PNG of top-1 against speed-up (FLOP ratio), one point per configuration, the Pareto front marked."""
    points = [(g.mean("speedup"), g.mean("top1"), g.config, g.std("top1")) for g in groups]
    plot_tradeoff([p for p in points if p[0] is not None and p[1] is not None], path,
                  xlabel="pre-training speed-up (FLOP ratio vs ViT step)")


def write_report(run_path: str, spec: SweepSpec, records: list[TrialRecord]) -> str:
    """Write results.md, results.csv and pareto.png into the run directory (local path); return the table.

    For remote storage (s3://...) the files go to ./<run name>-results/ instead.
    """
    groups = group_trials(records, spec)
    table = markdown_table(groups, spec)
    out = Path(run_path) if "://" not in run_path else Path.cwd() / f"{run_path.rstrip('/').rsplit('/', 1)[-1]}-results"
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_MD).write_text(table)
    (out / RESULTS_CSV).write_text(csv_text(groups))
    plot_pareto(groups, out / PARETO_PNG)
    return table + f"\nwritten: {out / RESULTS_MD}, {out / RESULTS_CSV}, {out / PARETO_PNG}"
