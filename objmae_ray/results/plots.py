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


def drawn_texts(fig, dpi: float | None = None) -> list[tuple[str, object]]:
    """(text, window extent in pixels) of every non-empty Text a draw of fig at dpi actually renders (tick labels
    out of view and hidden texts are not drawn, so not listed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    drawn: list[tuple[str, object]] = []
    original = Text.draw

    def draw(self, renderer):
        original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append((self.get_text(), self.get_window_extent(renderer)))

    saved_dpi, canvas = fig.dpi, fig.canvas
    Text.draw = draw
    try:
        fig.dpi = dpi or saved_dpi
        FigureCanvasAgg(fig).draw()
    finally:
        Text.draw = original
        fig.dpi = saved_dpi
        fig.set_canvas(canvas)
    return drawn


def overlapping_texts(fig, dpi: float | None = None, *, margin: float = 1.0) -> list[tuple[str, str]]:
    """Pairs of texts of fig whose boxes overlap by more than `margin` pixels at the given dpi (none: readable)."""
    texts = drawn_texts(fig, dpi)
    pairs = []
    for i, (text_a, a) in enumerate(texts):
        for text_b, b in texts[i + 1:]:
            if (min(a.x1, b.x1) - max(a.x0, b.x0) > margin) and (min(a.y1, b.y1) - max(a.y0, b.y0) > margin):
                pairs.append((text_a, text_b))
    return pairs
