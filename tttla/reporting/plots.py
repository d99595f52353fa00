"""The report's figures, drawn with matplotlib's Agg canvas (no pyplot, no display, no global
backend switch) and returned as PNG bytes without metadata (so no URL hides in the page)."""

from __future__ import annotations

import io
import random

__all__ = ["error_strip_png", "throughput_png", "FLOOR"]

#: errors of exactly 0 are drawn here, at the bottom of the log scale
FLOOR = 1e-18


def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def error_strip_png(panels: dict[str, dict[str, list[tuple[float, bool]]]], bounds: dict[str, float],
                    title: str = "") -> bytes:
    """One panel per dtype: per form a box of the per-case worst errors and the cases as dots.

    ``panels``: dtype → form → [(error, passed), …]; ``bounds``: dtype → tolerance bound.
    """
    fig, axes = _figure(4.2 * len(panels) + 0.6, 3.6, ncols=len(panels))
    rng = random.Random(0)
    for ax, (dtype, forms) in zip(axes, panels.items()):
        names = list(forms)
        for i, name in enumerate(names):
            points = forms[name]
            ys = [min(max(e, FLOOR), 1.0) for e, _ in points]
            if ys:
                ax.boxplot([ys], positions=[i], widths=0.5, showfliers=False, medianprops={"color": "black"})
            xs = [i + rng.uniform(-0.18, 0.18) for _ in ys]
            colors = ["#1f77b4" if ok else "#d62728" for _, ok in points]
            ax.scatter(xs, ys, s=14, c=colors, alpha=0.8, zorder=3)
        if dtype in bounds:
            ax.axhline(bounds[dtype], ls="--", color="gray", lw=1, label=f"bound {bounds[dtype]:.0e}")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)), names)
        ax.set_title(f"forms in {dtype}", fontsize=10)
        ax.set_ylabel("worst error per case")
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    return _png(fig)


def throughput_png(series: dict[str, list[tuple[int, float, float, float]]], title: str = "") -> bytes:
    """Head-tokens/s against T, one line per form and pass (forward solid, forward+backward dashed)
    through the medians, with a bar from the slowest to the fastest timed call at each T.

    ``series``: label → [(T, median rate, slowest rate, fastest rate), …]."""
    fig, (ax,) = _figure(6.4, 4.0)
    for label, points in series.items():
        ts, rates, lows, highs = zip(*sorted(points), strict=True)
        style = "--" if "backward" in label else "-"
        marker = "s" if label.startswith("oracle") else "o"
        ax.errorbar(ts, rates, yerr=[[r - lo for r, lo in zip(rates, lows, strict=True)],
                                     [hi - r for r, hi in zip(rates, highs, strict=True)]],
                    fmt=style, marker=marker, capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("head-tokens / s (B·H·T per call)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=11)
    return _png(fig)
