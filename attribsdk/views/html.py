"""Self-contained HTML views of explanations (no scripts, fonts or anything fetched from elsewhere).

* :func:`to_html` — one explanation: the input with every feature highlighted by its attribution
  (blue: positive coefficient, the feature supports the answer; red: negative; opacity ∝
  attribution), a legend, the answer, a ranked table and the counts / cost / timings summary.
* :func:`to_html_many` — several explanations on one page, with an index.
* :func:`compare_to_html` — the cost comparison's table and plot (``compare.html``).

Every feature is one ``<span class="feat pos|neg|zero" data-index=.. data-rank=.. data-attr=..
data-coef=..>`` so that a page can be checked (or scraped) without reading colours. All user text
(prompt, answer, feature text, model names) is escaped. The fragment (``full_page=False``) carries
its own stylesheet, scoped to ``.attribsdk``, so that it renders the same inside Jupyter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..compare import CompareReport
    from ..explanation import Explanation

__all__ = ["compare_to_html", "feature_color", "input_segments", "to_html", "to_html_many"]

#: RGB of features with a positive coefficient (support the answer) and a negative one.
POSITIVE_RGB = (37, 99, 235)
NEGATIVE_RGB = (220, 38, 38)
#: Opacity of the weakest and strongest non-zero feature.
MIN_ALPHA, MAX_ALPHA = 0.10, 0.85
#: Features whose rank is at most this carry a rank badge in the highlighted input.
BADGE_RANKS = 5

_CSS = """
.attribsdk{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:#1f2328;background:#fff;line-height:1.5;max-width:1100px;padding:4px 8px;font-size:14px}
.attribsdk h2{font-size:1.25em;margin:.4em 0 .2em}
.attribsdk h3{font-size:1.02em;margin:1.1em 0 .35em;color:#444}
.attribsdk .meta{color:#57606a;font-size:.9em}
.attribsdk .box{border:1px solid #d0d7de;border-radius:6px;padding:10px 12px;background:#fff}
.attribsdk .input{white-space:pre-wrap;word-wrap:break-word;line-height:1.85}
.attribsdk .role{display:block;font-size:.78em;text-transform:uppercase;letter-spacing:.05em;
 color:#6e7781;margin:.3em 0 .1em}
.attribsdk .feat{border-radius:3px;padding:1px 0;box-decoration-break:clone;
 -webkit-box-decoration-break:clone}
.attribsdk .feat.zero{background:transparent;border-bottom:1px dotted #afb8c1}
.attribsdk .feat.top::after{content:attr(data-rank);font-size:.68em;font-weight:600;vertical-align:super;
 color:#fff;background:#444c56;border-radius:6px;padding:0 4px;margin-left:2px}
.attribsdk .answer{background:#f6f8fa;white-space:pre-wrap}
.attribsdk .legend{display:flex;gap:14px;align-items:center;flex-wrap:wrap;font-size:.85em;color:#444}
.attribsdk .swatch{display:inline-block;width:34px;height:12px;border-radius:2px;vertical-align:middle;
 margin-right:4px}
.attribsdk table{border-collapse:collapse;width:100%;font-size:.9em}
.attribsdk th,.attribsdk td{border-bottom:1px solid #d8dee4;padding:4px 6px;text-align:left;
 vertical-align:top}
.attribsdk th{background:#f6f8fa;font-weight:600}
.attribsdk td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.attribsdk .bar{display:inline-block;height:10px;border-radius:2px;vertical-align:middle}
.attribsdk dl.summary{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:0;
 font-size:.9em}
.attribsdk dl.summary dt{color:#57606a}
.attribsdk dl.summary dd{margin:0;font-variant-numeric:tabular-nums}
.attribsdk nav ol{padding-left:1.4em}
.attribsdk section.expl{border-top:2px solid #d0d7de;margin-top:1.5em;padding-top:.5em}
"""


def _rgba(rgb: tuple[int, int, int], alpha: float) -> str:
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.3f})"


def feature_color(attribution: float, coefficient: float, max_attribution: float) -> tuple[str, str]:
    """``(css_class, css_colour)`` of one feature.

    The class is ``"pos"`` (coefficient > 0), ``"neg"`` (< 0) or ``"zero"``; the colour's opacity
    grows linearly with ``attribution / max_attribution`` from :data:`MIN_ALPHA` to
    :data:`MAX_ALPHA` (``"transparent"`` for zero or non-finite values).
    """
    if (
        not (math.isfinite(attribution) and math.isfinite(coefficient))
        or coefficient == 0
        or attribution <= 0
    ):
        return "zero", "transparent"
    share = attribution / max_attribution if max_attribution > 0 else 0.0
    alpha = MIN_ALPHA + (MAX_ALPHA - MIN_ALPHA) * min(1.0, share)
    return ("pos", _rgba(POSITIVE_RGB, alpha)) if coefficient > 0 else ("neg", _rgba(NEGATIVE_RGB, alpha))


def _ink(colour: str) -> str:
    """White text on strong backgrounds (opacity above 0.55), the default ink otherwise."""
    alpha = colour.rsplit(",", 1)[-1].rstrip(")") if colour.startswith("rgba(") else "0"
    return ";color:#fff" if float(alpha) > 0.55 else ""


def input_segments(explanation: Explanation) -> list[tuple[str, list[tuple[str, int | None]]]]:
    """The explained input as ``[(role, [(text, feature_index | None), ...]), ...]``.

    Rebuilt from ``explanation.prompt`` (the rendered chat messages, with each feature's exact
    character span); without a stored prompt, the features' texts joined by spaces.
    """
    if explanation.prompt is None:
        pieces: list[tuple[str, int | None]] = []
        for i, f in enumerate(explanation.features):
            if i:
                pieces.append((" ", None))
            pieces.append((f.text, i))
        return [("input", pieces)]
    from ..prompt import Prompt

    rendered = Prompt.model_validate(explanation.prompt).render()
    by_message: dict[int, list[tuple[int, int, int]]] = {}
    for i, span in enumerate(rendered.spans):
        if span is not None:
            by_message.setdefault(span[0], []).append((span[1], span[2], i))
    out: list[tuple[str, list[tuple[str, int | None]]]] = []
    for m_idx, msg in enumerate(rendered.messages):
        text = msg.content
        pieces = []
        pos = 0
        for start, end, i in sorted(by_message.get(m_idx, [])):
            if start > pos:
                pieces.append((text[pos:start], None))
            pieces.append((text[start:end], i))
            pos = end
        if pos < len(text):
            pieces.append((text[pos:], None))
        out.append((msg.role, pieces))
    return out


def _num(v: float, spec: str = ".4f") -> str:
    if not math.isfinite(v):
        return "nan"
    if v and (abs(v) < 1e-3 or abs(v) >= 1e4):
        return format(v, "+.2e" if spec.startswith("+") else ".2e")
    return format(v, spec)


def _usd(v: float | None) -> str:
    return "unknown" if v is None else f"${v:.6f}"


def _shorten(text: str, width: int = 240) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _highlighted_input(expl: Explanation) -> str:
    ranks = {r.feature.index: r.rank for r in expl.ranked()}
    finite = [a for a in expl.attributions if math.isfinite(a)]
    top = max(finite, default=0.0)
    blocks: list[str] = []
    for role, pieces in input_segments(expl):
        html_pieces: list[str] = []
        for text, idx in pieces:
            if idx is None:
                html_pieces.append(escape(text))
                continue
            attr, coef, rank = expl.attributions[idx], expl.coefficients[idx], ranks[idx]
            cls, colour = feature_color(attr, coef, top)
            classes = f"feat {cls}" + (" top" if rank <= BADGE_RANKS and cls != "zero" else "")
            title = f"#{rank} · attribution {_num(attr, '.3f')} · coefficient {_num(coef, '+.4f')}"
            html_pieces.append(
                f'<span class="{classes}" data-index="{idx}" data-rank="{rank}" '
                f'data-attr="{attr:.6g}" data-coef="{coef:.6g}" title="{escape(title)}" '
                f'style="background-color:{colour}{_ink(colour)}">{escape(text)}</span>'
            )
        blocks.append(f'<span class="role">{escape(role)}</span>' + "".join(html_pieces))
    return '<div class="box input">' + "\n".join(blocks) + "</div>"


def _legend() -> str:
    pos = f"linear-gradient(90deg,{_rgba(POSITIVE_RGB, MIN_ALPHA)},{_rgba(POSITIVE_RGB, MAX_ALPHA)})"
    neg = f"linear-gradient(90deg,{_rgba(NEGATIVE_RGB, MIN_ALPHA)},{_rgba(NEGATIVE_RGB, MAX_ALPHA)})"
    return (
        '<div class="legend">'
        f'<span><span class="swatch" style="background:{pos}"></span>supports the answer '
        "(positive coefficient)</span>"
        f'<span><span class="swatch" style="background:{neg}"></span>works against it '
        "(negative coefficient)</span>"
        "<span>stronger colour = larger attribution; badge = rank</span>"
        "</div>"
    )


def _ranked_table(expl: Explanation, top: int | None) -> str:
    rows = expl.ranked()[: top if top is not None else None]
    finite = [a for a in expl.attributions if math.isfinite(a)]
    biggest = max(finite, default=0.0)
    body: list[str] = []
    for r in rows:
        cls, _ = feature_color(r.attribution, r.coefficient, biggest)
        width = (
            0 if not (biggest > 0 and math.isfinite(r.attribution)) else round(80 * r.attribution / biggest)
        )
        solid = _rgba(POSITIVE_RGB if cls == "pos" else NEGATIVE_RGB, 0.8) if cls != "zero" else "#afb8c1"
        f = r.feature
        where = f"{f.slot} {f.source}" if f.slot == "context" else f.slot
        body.append(
            f'<tr class="{cls}" data-index="{f.index}">'
            f'<td class="num">{r.rank}</td>'
            f'<td class="num">{_num(r.attribution, ".3f")}</td>'
            f'<td><span class="bar" style="width:{width}px;background:{solid}"></span></td>'
            f'<td class="num">{_num(r.coefficient, "+.4f")}</td>'
            f"<td>{escape(_shorten(f.text))}</td>"
            f'<td class="meta">{escape(where)} [{f.start}:{f.end}]</td>'
            "</tr>"
        )
    more = len(expl.features) - len(rows)
    tail = f'<p class="meta">{more} more features not shown.</p>' if more > 0 else ""
    return (
        "<table><thead><tr><th>rank</th><th>attribution</th><th></th><th>coefficient</th>"
        "<th>feature</th><th>where</th></tr></thead><tbody>" + "".join(body) + "</tbody></table>" + tail
    )


def _summary(expl: Explanation) -> str:
    c, cost, t = expl.counts, expl.cost, expl.timings
    items: list[tuple[str, str]] = [
        ("method", expl.method),
        ("closed model", expl.closed_model or "none (answer given)"),
        ("surrogate", expl.surrogate or "none"),
        ("seed", str(expl.seed)),
        ("features (M)", str(len(expl.features))),
        ("fit", expl.fit_summary()),
        ("closed calls", f"{c.closed_calls} ({c.http_attempts} HTTP attempts, {c.cache_hits} cache hits)"),
        ("closed tokens", f"{expl.usage.input_tokens} in / {expl.usage.output_tokens} out"),
        ("cost", f"{_usd(cost.cost_usd)} paid, {_usd(cost.avoided_usd)} avoided by the cache"),
        ("price source", cost.price_source),
        ("surrogate sequences", f"{c.surrogate_sequences} ({c.surrogate_tokens} tokens)"),
        (
            "seconds",
            f"{t.total:.2f} total — closed {t.closed:.2f}, sampling {t.sampling:.2f}, scoring "
            f"{t.scoring:.2f}, locality {t.locality:.2f}, regression {t.regression:.2f}",
        ),
    ]
    if cost.budget is not None:
        b = cost.budget
        limits = [
            f"max ${b.max_usd}" if b.max_usd is not None else "",
            f"max {b.max_calls} calls" if b.max_calls is not None else "",
        ]
        items.append(("budget", ", ".join(x for x in limits if x) or "no limit"))
    if expl.engine.get("device"):
        items.append(("device", f"{expl.engine.get('device')} {expl.engine.get('dtype', '')}".strip()))
    return (
        '<dl class="summary">'
        + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in items)
        + "</dl>"
    )


def _body(expl: Explanation, title: str | None, top: int | None, heading: str = "h2") -> str:
    head = title if title is not None else f"What the answer was based on — {expl.method}"
    created = expl.created_at.strftime("%Y-%m-%d %H:%M:%S %Z")
    return (
        f"<{heading}>{escape(head)}</{heading}>"
        f'<div class="meta">{escape(expl.closed_model or "given answer")} · surrogate '
        f"{escape(expl.surrogate or 'none')} · {len(expl.features)} features · {escape(created)}</div>"
        "<h3>Input</h3>" + _legend() + _highlighted_input(expl) + "<h3>Answer</h3>"
        f'<div class="box answer">{escape(expl.answer.strip())}</div>'
        "<h3>Ranked features</h3>"
        + _ranked_table(expl, top)
        + "<h3>Calls, cost and time</h3>"
        + _summary(expl)
    )


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
        f'<body style="margin:0;background:#fff">{body}</body></html>\n'
    )


def to_html(
    explanation: Explanation, *, title: str | None = None, full_page: bool = True, top: int | None = None
) -> str:
    """One explanation as HTML: a complete page, or (``full_page=False``) a fragment for embedding
    (Jupyter's ``_repr_html_``) that carries its own scoped stylesheet. ``top`` limits the ranked
    table's rows (every feature is still highlighted in the input)."""
    body = f'<div class="attribsdk">{_body(explanation, title, top)}</div>'
    if not full_page:
        return f"<style>{_CSS}</style>{body}"
    return _page(title or f"attribsdk — {explanation.method}", body)


def to_html_many(
    explanations: Sequence[Explanation],
    *,
    title: str = "attribsdk explanations",
    labels: Sequence[str] | None = None,
    top: int | None = 10,
) -> str:
    """Several explanations on one self-contained page, with an index of their answers.

    ``labels`` names each explanation (default: ``#1``, ``#2``…); ``top`` limits each ranked table.
    """
    names = list(labels) if labels is not None else [f"#{i + 1}" for i in range(len(explanations))]
    if len(names) != len(explanations):
        from ..errors import InputError

        raise InputError(f"{len(explanations)} explanations but {len(names)} labels")
    index = "".join(
        f'<li><a href="#expl-{i}">{escape(n)}</a> — {escape(_shorten(e.answer, 120))} '
        f'<span class="meta">({escape(e.method)}, {e.counts.closed_calls} closed calls)</span></li>'
        for i, (n, e) in enumerate(zip(names, explanations, strict=True))
    )
    sections = "".join(
        f'<section class="expl" id="expl-{i}">{_body(e, n, top, heading="h2")}</section>'
        for i, (n, e) in enumerate(zip(names, explanations, strict=True))
    )
    calls = sum(e.counts.closed_calls for e in explanations)
    paid = [e.cost.cost_usd for e in explanations]
    total = None if any(p is None for p in paid) else sum(p or 0.0 for p in paid)
    body = (
        f'<div class="attribsdk"><h2>{escape(title)}</h2>'
        f'<div class="meta">{len(explanations)} explanations · {calls} closed calls · {_usd(total)}</div>'
        f"<nav><ol>{index}</ol></nav>{sections}</div>"
    )
    return _page(title, body)


def compare_to_html(report: CompareReport, *, plot_png: bytes | None = None, title: str | None = None) -> str:
    """The cost comparison (:class:`~attribsdk.compare.CompareReport`) as a self-contained page:
    the per-method table and, when given, the cost-vs-quality PNG embedded as a data URI."""
    import base64

    from ..compare import SUMMARY_COLUMNS, summary_cells

    head = ("method", "examples (failed)", *SUMMARY_COLUMNS)
    body = "".join(
        "<tr>"
        + f"<td>{escape(s.method)}</td>"
        + "".join(
            f'<td class="num">{escape(v)}</td>' for v in (f"{s.n_examples} ({s.n_failed})", *summary_cells(s))
        )
        + "</tr>"
        for s in report.methods
    )
    image = ""
    if plot_png is not None:
        data = base64.b64encode(plot_png).decode("ascii")
        image = (
            '<h3>Cost vs quality</h3><img alt="cost vs quality" style="max-width:100%" '
            f'src="data:image/png;base64,{data}">'
        )
    heading = title or f"Cost comparison: {len(report.examples)} examples of {report.config.dataset}"
    page = (
        f'<div class="attribsdk"><h2>{escape(heading)}</h2>'
        f'<div class="meta">closed model {escape(report.closed)}; {escape(report.pricing_note)} '
        f"[{escape(report.price_source)}]</div><h3>Per method</h3><table><thead><tr>"
        + "".join(f"<th>{escape(h)}</th>" for h in head)
        + f"</tr></thead><tbody>{body}</tbody></table>{image}</div>"
    )
    return _page(heading, page)
