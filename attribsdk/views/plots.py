"""Every PNG plot of the package, drawn with matplotlib's Agg canvas (no display, no pyplot state).

* :func:`plot_attributions` — one explanation's signed attributions as a sorted bar chart.
* :func:`plot_cost_quality` — the cost comparison: closed calls and dollars per explanation
  against mean AUROC (``compare.png``; :func:`attribsdk.compare.plot_report`).
* :func:`plot_metric_vs_m` — a benchmark metric against the bucket of M, one line per method
  (``plots/*.png``; :func:`attribsdk.eval.report.write_report`).

Each draws into a new :class:`~matplotlib.figure.Figure` (or the given ``ax``), writes ``path``
when given, and returns the figure.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .html import NEGATIVE_RGB, POSITIVE_RGB

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..compare import CompareReport
    from ..explanation import Explanation

__all__ = ["plot_attributions", "plot_cost_quality", "plot_metric_vs_m"]

PathLike = str | os.PathLike[str]


F = TypeVar("F", bound=Callable[..., Any])


def _plain_text(fn: F) -> F:
    """Draw ``fn``'s figure with mathtext off: feature text, method names and labels are user
    text, where ``$...$`` (prices, Windows paths) must print as written, not parse as TeX."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return fn(*args, **kwargs)

    return cast(F, wrapper)


def _figure(figsize: tuple[float, float], dpi: int = 110) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: PathLike | None) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)


def _label(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@_plain_text
def plot_attributions(
    explanation: Explanation,
    path: PathLike | None = None,
    *,
    ax: Axes | None = None,
    top: int | None = 20,
    label_width: int = 40,
) -> Figure:
    """Horizontal bars of the ``top`` features by attribution, largest on top.

    Each bar is the feature's attribution (share of the total absolute effect) signed by its
    coefficient: blue to the right supports the answer, red to the left works against it. Labels
    are ``#rank feature text`` shortened to ``label_width`` characters.
    """
    ranked = explanation.ranked()[: top if top is not None else None]
    if ax is None:
        fig = _figure((8.0, 0.9 + 0.32 * max(len(ranked), 1)))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.get_figure()  # type: ignore[assignment]
    values = [
        math.copysign(r.attribution, r.coefficient) if math.isfinite(r.attribution) else 0.0 for r in ranked
    ]
    pos = tuple(c / 255 for c in POSITIVE_RGB)
    neg = tuple(c / 255 for c in NEGATIVE_RGB)
    colours = [pos if v >= 0 else neg for v in values]
    ys = list(range(len(ranked)))[::-1]
    ax.barh(ys, values, color=colours, height=0.7)
    ax.set_yticks(ys, [f"#{r.rank} {_label(r.feature.text, label_width)}" for r in ranked], fontsize=8)
    ax.axvline(0.0, color="#555555", linewidth=0.8)
    bound = max((abs(v) for v in values), default=1.0) or 1.0
    ax.set_xlim(-1.1 * bound, 1.1 * bound)
    ax.set_xlabel("attribution × sign(coefficient)   (← against the answer · supports it →)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(
        f"{explanation.method}: {len(explanation.features)} features"
        + (f", top {len(ranked)}" if len(ranked) < len(explanation.features) else ""),
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, path)
    return fig


@_plain_text
def plot_cost_quality(report: CompareReport, path: PathLike | None = None) -> Figure:
    """Cost vs quality: closed calls (left) and dollars (right) per explanation against AUROC, all
    means over the examples every method finished (``MethodSummary.mean_calls``, ``mean_usd``)."""
    fig = _figure((10.0, 4.0))
    axes = fig.subplots(1, 2)
    for s in report.methods:
        y = s.auroc if s.auroc is not None else float("nan")
        if s.mean_calls is not None:
            axes[0].scatter([s.mean_calls], [y], s=60)
            axes[0].annotate(s.method, (s.mean_calls, y), textcoords="offset points", xytext=(5, 5))
        if s.mean_usd is not None:
            axes[1].scatter([s.mean_usd], [y], s=60)
            axes[1].annotate(s.method, (s.mean_usd, y), textcoords="offset points", xytext=(5, 5))
    n_common = report.methods[0].n_quality if report.methods else 0
    axes[0].set_xlabel("closed calls per explanation")
    axes[1].set_xlabel("$ per explanation (paid + served from cache)")
    for ax in axes:
        ax.set_ylabel("mean AUROC vs gold")
        ax.grid(alpha=0.3)
    label = report.config.price_as or report.closed
    fig.suptitle(
        f"{n_common} of {len(report.examples)} examples of {report.config.dataset} (those every method "
        f"finished); priced as {label}",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, path)
    return fig


@_plain_text
def plot_metric_vs_m(
    buckets: Sequence[str],
    series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    path: PathLike | None = None,
    *,
    references: Sequence[tuple[float, float, str]] = (),
    metric: str = "metric",
    title: str = "",
) -> Figure:
    """A metric against the bucket of M: per method ``series[method] = (x, mean, sem)`` drawn as
    points with error bars (``x`` is the bucket's position, offset per method), ``references``
    as black crosses ``(x, value, citation)``; ``buckets`` label the x axis."""
    fig = _figure((7.0, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    # tab10 repeats after 10 series: switch to tab20 and vary the marker so every method stays apart
    colours = _colormap("tab10" if len(series) <= 10 else "tab20")
    markers = "os^Dv<>pP*h"
    for i, (method, (xs, ys, es)) in enumerate(series.items()):
        style = {"marker": markers[i % len(markers)], "color": colours(i % colours.N)}
        ax.errorbar(xs, ys, yerr=es, capsize=3, label=method, **style)
    for i, (x, value, citation) in enumerate(references):
        ax.scatter(
            [x],
            [value],
            marker="x",
            color="black",
            zorder=5,
            label=f"reference ({citation})" if i == 0 else None,
        )
    ax.set_xticks(range(len(buckets)), list(buckets))
    ax.set_xlabel("number of features M")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save(fig, path)
    return fig


def _colormap(name: str) -> Any:
    """A qualitative matplotlib colormap by name (``cmap(i)`` is the i-th colour, ``cmap.N`` colours)."""
    import matplotlib

    return matplotlib.colormaps[name]
