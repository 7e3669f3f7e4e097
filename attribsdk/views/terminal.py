"""A terminal view of an explanation with rich: the highlighted input, a ranked table, a summary.

Colours follow the HTML view: blue background for features with a positive coefficient (they
support the answer), red for a negative one, stronger for larger attributions; the top ranks carry
a ``[n]`` marker so the view still reads without colour.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .html import BADGE_RANKS, MAX_ALPHA, MIN_ALPHA, NEGATIVE_RGB, POSITIVE_RGB, input_segments

if TYPE_CHECKING:
    from rich.console import Console, Group
    from rich.table import Table

    from ..explanation import Explanation

__all__ = ["render", "renderable"]


def _blend(rgb: tuple[int, int, int], alpha: float) -> str:
    """``rgb`` at opacity ``alpha`` over white, as a rich colour."""
    r, g, b = (round(255 + (c - 255) * alpha) for c in rgb)
    return f"rgb({r},{g},{b})"


def _style(attribution: float, coefficient: float, biggest: float) -> str:
    if (
        not (math.isfinite(attribution) and math.isfinite(coefficient))
        or coefficient == 0
        or attribution <= 0
    ):
        return "underline"
    share = min(1.0, attribution / biggest) if biggest > 0 else 0.0
    alpha = MIN_ALPHA + (MAX_ALPHA - MIN_ALPHA) * share
    base = POSITIVE_RGB if coefficient > 0 else NEGATIVE_RGB
    fg = "white" if alpha > 0.55 else "black"
    return f"{fg} on {_blend(base, alpha)}"


def _num(v: float, spec: str) -> str:
    if not math.isfinite(v):
        return "nan"
    if v and (abs(v) < 1e-3 or abs(v) >= 1e4):
        return format(v, "+.2e" if spec.startswith("+") else ".2e")
    return format(v, spec)


def _row(grid: Table, label: str, value: str) -> None:
    from rich.text import Text

    grid.add_row(label, Text(value))


def renderable(explanation: Explanation, *, top: int | None = None, show_input: bool = True) -> Group:
    """The view as a rich renderable (``top`` limits the ranked table's rows)."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    expl = explanation
    ranked = expl.ranked()
    ranks = {r.feature.index: r.rank for r in ranked}
    finite = [a for a in expl.attributions if math.isfinite(a)]
    biggest = max(finite, default=0.0)
    parts: list[object] = []

    if show_input:
        text = Text()
        for m, (role, pieces) in enumerate(input_segments(expl)):
            if m:
                text.append("\n\n")
            text.append(f"{role}\n", style="dim bold")
            for piece, idx in pieces:
                if idx is None:
                    text.append(piece)
                    continue
                text.append(piece, style=_style(expl.attributions[idx], expl.coefficients[idx], biggest))
                if ranks[idx] <= BADGE_RANKS:
                    text.append(f"[{ranks[idx]}]", style="bold magenta")
        legend = Text.assemble(
            ("  supports  ", _style(1.0, 1.0, 1.0)),
            " ",
            ("  against  ", _style(1.0, -1.0, 1.0)),
            "  stronger colour = larger attribution, [n] = rank",
            style="dim",
        )
        parts.append(
            Panel(Group(text, Text(), legend), title="Input", title_align="left", border_style="dim")
        )

    parts.append(Panel(Text(expl.answer.strip()), title="Answer", title_align="left", border_style="cyan"))

    table = Table(title="Ranked features", title_justify="left", expand=True, show_edge=False)
    table.add_column("rank", justify="right", no_wrap=True)
    table.add_column("attr", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True, width=12)
    table.add_column("signed", justify="right", no_wrap=True)
    table.add_column("feature", ratio=1, overflow="fold")
    for r in ranked[: top if top is not None else None]:
        share = r.attribution / biggest if biggest > 0 and math.isfinite(r.attribution) else 0.0
        colour = "blue" if r.coefficient > 0 else "red" if r.coefficient < 0 else "dim"
        bar = Text("█" * max(0, round(12 * share)), style=colour)
        snippet = " ".join(r.feature.text.split())
        if len(snippet) > 160:
            snippet = snippet[:159] + "…"
        table.add_row(
            str(r.rank),
            _num(r.attribution, ".3f"),
            bar,
            Text(_num(r.coefficient, "+.4f"), style=colour),
            Text(snippet),  # Text, not str: user text is never parsed as rich markup
        )
    parts.append(table)
    if top is not None and len(ranked) > top:
        parts.append(Text(f"{len(ranked) - top} more features not shown", style="dim"))

    c, cost, t = expl.counts, expl.cost, expl.timings
    usd = "unknown" if cost.cost_usd is None else f"${cost.cost_usd:.6f}"
    avoided = "unknown" if cost.avoided_usd is None else f"${cost.avoided_usd:.6f}"
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="dim")
    summary.add_column()
    _row(summary, "method", f"{expl.method}   surrogate {expl.surrogate}   closed {expl.closed_model}")
    _row(
        summary,
        "closed calls",
        f"{c.closed_calls} ({c.http_attempts} HTTP attempts, {c.cache_hits} cache hits)",
    )
    _row(summary, "tokens", f"{expl.usage.input_tokens} in / {expl.usage.output_tokens} out")
    _row(summary, "cost", f"{usd} paid, {avoided} avoided [{cost.price_source}]")
    _row(summary, "surrogate", f"{c.surrogate_sequences} sequences ({c.surrogate_tokens} tokens)")
    _row(summary, "fit", expl.fit_summary())
    _row(
        summary,
        "seconds",
        f"{t.total:.2f} (closed {t.closed:.2f}, scoring {t.scoring:.2f}, regression {t.regression:.2f})",
    )
    parts.append(Panel(summary, title="Calls, cost and time", title_align="left", border_style="dim"))
    return Group(*parts)  # type: ignore[arg-type]


def render(
    explanation: Explanation,
    console: Console | None = None,
    *,
    top: int | None = None,
    show_input: bool = True,
) -> None:
    """Print the view on ``console`` (default: a new rich Console on stdout)."""
    if console is None:
        from rich.console import Console

        console = Console()
    console.print(renderable(explanation, top=top, show_input=show_input))
