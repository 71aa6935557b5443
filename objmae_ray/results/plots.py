"""The one trade-off plot: top-1 against a speed measure, one point per configuration, the Pareto front joined."""
from __future__ import annotations

from pathlib import Path

from objmae_ray.results.stats import pareto_front

FLOP_SPEEDUP = "pre-training speed-up (FLOP ratio vs ViT step)"
MEASURED_THROUGHPUT = "measured pre-train throughput (images/s, last pre-train epoch)"


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
