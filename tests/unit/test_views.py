"""Views of an Explanation: self-contained HTML, the rich terminal view, PNG plots, progress bars.

The explanations come from real runs of the Explainer on the tiny in-process surrogate.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attribsdk import Explainer, Explanation
from attribsdk.adapters.wrappers import TestModel
from attribsdk.cost import Budget, Price, Pricing
from attribsdk.views.html import feature_color, input_segments, to_html, to_html_many
from attribsdk.views.progress import progress_bar, progress_enabled
from tests.tiny_models import tiny_local_model

HOSTILE = '<script>alert("x")</script> & <img src=x onerror=alert(1)> [bold red]not markup[/]'
CONTEXT = [
    "The capital of France is Paris. Paris is a large city on the Seine. " + HOSTILE,
    "Berlin is the capital of Germany. The cat sat on the mat in the sun.",
]
QUESTION = "What is the capital of <France>?"


PRICING = Pricing(overrides={"test:model": Price(input_mtok=2.0, output_mtok=8.0)})


@pytest.fixture(scope="module")
def expl() -> Explanation:
    closed = TestModel("<b>Paris</b> is the capital & largest city.", name="test:model")
    with Explainer(closed=closed, surrogate=tiny_local_model(seed=3), cache=False, pricing=PRICING) as ex:
        res = ex.explain_sync(QUESTION, CONTEXT, features="sentences", system="Be brief & exact.")
    assert len(closed.calls) == 1
    return res


@pytest.fixture(scope="module")
def words_expl() -> Explanation:
    """A word-level explanation: many features, some coefficients of each sign."""
    tiny = tiny_local_model(seed=3)
    with Explainer(closed=TestModel("Paris."), surrogate=tiny, cache=False, pricing=PRICING) as ex:
        return ex.explain_sync("What is the capital of France?", CONTEXT[0], features="words")


class _Spans(HTMLParser):
    """Collects every ``span.feat`` (attributes and text) and every tag name."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[dict[str, Any]] = []
        self.tags: list[str] = []
        self._open: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "span" and "feat" in (a.get("class") or "").split():
            self._open = {**a, "text": ""}

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open["text"] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._open is not None:
            self.spans.append(self._open)
            self._open = None


def _parse(page: str) -> _Spans:
    p = _Spans()
    p.feed(page)
    p.close()
    return p


def _alpha(style: str) -> float:
    m = re.search(r"rgba\(\d+,\d+,\d+,([0-9.]+)\)", style)
    return float(m.group(1)) if m else 0.0


# -- HTML ---------------------------------------------------------------------------------------


def test_every_feature_is_highlighted_exactly_once(expl: Explanation) -> None:
    page = to_html(expl)
    spans = _parse(page).spans
    m = len(expl.features)
    assert m >= 5
    assert [int(s["data-index"]) for s in spans] == list(range(m))  # once each, in input order
    ranks = {r.feature.index: r.rank for r in expl.ranked()}
    for s, f in zip(spans, expl.features, strict=True):
        assert s["text"] == f.text  # the exact feature text, unescaped by the parser
        assert int(s["data-rank"]) == ranks[f.index]
        assert float(s["data-attr"]) == pytest.approx(expl.attributions[f.index], rel=1e-5, abs=1e-12)
        assert float(s["data-coef"]) == pytest.approx(expl.coefficients[f.index], rel=1e-5, abs=1e-12)
    # the fixed text around the features is there too: template, question and system prompt
    assert "Question: What is the capital of &lt;France&gt;?" in page
    assert "Be brief &amp; exact." in page


def test_hostile_text_is_escaped_and_page_is_self_contained(expl: Explanation) -> None:
    page = to_html(expl)
    parsed = _parse(page)
    assert "script" not in parsed.tags and "img" not in parsed.tags and "b" not in parsed.tags
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&lt;b&gt;Paris&lt;/b&gt; is the capital &amp; largest city." in page
    # nothing is fetched: no scripts, links, imports or remote URLs
    for needle in ("<script", "<link", "@import", "http://", "https://", "src="):
        assert needle not in page.replace("&lt;script", "").replace("src=x", "")
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page


def test_signed_colours_follow_coefficients_and_attribution(words_expl: Explanation) -> None:
    e = words_expl
    spans = _parse(to_html(e)).spans
    signs = {float(np.sign(c)) for c in e.coefficients}
    assert {1.0, -1.0} <= signs  # the fixture exercises both colours
    for s in spans:
        i = int(s["data-index"])
        classes = s["class"].split()
        coef = e.coefficients[i]
        assert ("pos" in classes) == (coef > 0) and ("neg" in classes) == (coef < 0)
        rgb = "37,99,235" if coef > 0 else "220,38,38"
        assert f"rgba({rgb}," in s["style"]
    # opacity grows with attribution: sorting by alpha gives the attribution order
    by_alpha = sorted(spans, key=lambda s: _alpha(s["style"]))
    attrs = [e.attributions[int(s["data-index"])] for s in by_alpha]
    assert attrs == sorted(attrs)
    top = max(spans, key=lambda s: e.attributions[int(s["data-index"])])
    assert top["data-rank"] == "1" and "top" in top["class"].split()
    assert feature_color(0.0, 0.0, 1.0) == ("zero", "transparent")
    assert feature_color(float("nan"), 1.0, 1.0)[0] == "zero"


def test_ranked_table_and_summary(expl: Explanation) -> None:
    page = to_html(expl)
    rows = re.findall(r'<tr class="(pos|neg|zero)" data-index="(\d+)">', page)
    assert [int(i) for _, i in rows] == [r.feature.index for r in expl.ranked()]
    assert expl.cost.cost_usd and expl.cost.cost_usd > 0  # priced by the override
    assert f"${expl.cost.cost_usd:.6f} paid" in page
    assert f"{expl.counts.surrogate_sequences} ({expl.counts.surrogate_tokens} tokens)" in page
    c = expl.counts
    assert c.closed_calls == 1 and c.cache_hits == 0
    assert f"1 ({c.http_attempts} HTTP attempts, 0 cache hits)" in page
    assert f"<dt>fit</dt><dd>R² {expl.r2:.3f}</dd>" in page
    calls_only = expl.model_copy(
        update={"cost": expl.cost.model_copy(update={"budget": Budget(max_calls=3)})}
    )
    assert "<dt>budget</dt><dd>max 3 calls</dd>" in to_html(calls_only)
    # an underdetermined fit says so, in both views
    few = expl.model_copy(update={"fit_rank": 2})
    said = f"identify only 2 of {len(expl.features)} feature effects"
    assert said in to_html(few)
    from rich.console import Console

    from attribsdk.views.terminal import render

    console = Console(record=True, width=400)
    render(few, console=console)
    assert said in console.export_text()
    short = to_html(expl, top=2)
    assert len(re.findall(r'<tr class="(?:pos|neg|zero)"', short)) == 2
    assert f"{len(expl.features) - 2} more features not shown" in short


def test_repr_html_is_a_fragment_and_save_html_writes_a_page(expl: Explanation, tmp_path: Path) -> None:
    frag = expl._repr_html_()
    assert "<html" not in frag and "<!DOCTYPE" not in frag
    assert frag.startswith("<style>") and 'class="attribsdk"' in frag
    assert len(_parse(frag).spans) == len(expl.features)
    path = expl.save_html(tmp_path / "e.html", title="My <title>")
    text = path.read_text(encoding="utf-8")
    assert "<title>My &lt;title&gt;</title>" in text and text == expl.to_html(title="My <title>")
    # a round trip through JSON keeps everything the view needs
    again = Explanation.model_validate(json.loads(expl.model_dump_json()))
    assert to_html(again) == to_html(expl)


def test_input_segments_rebuild_the_rendered_messages(expl: Explanation) -> None:
    from attribsdk.prompt import Prompt

    rendered = Prompt.model_validate(expl.prompt).render()
    segs = input_segments(expl)
    assert [role for role, _ in segs] == [m.role for m in rendered.messages]
    for (_, pieces), msg in zip(segs, rendered.messages, strict=True):
        assert "".join(t for t, _ in pieces) == msg.content
    # without a stored prompt the features are shown joined by spaces
    bare = expl.model_copy(update={"prompt": None})
    assert [i for _, pieces in input_segments(bare) for _, i in pieces if i is not None] == list(
        range(len(expl.features))
    )
    assert len(_parse(to_html(bare)).spans) == len(expl.features)


def test_many_explanations_on_one_page(expl: Explanation, words_expl: Explanation) -> None:
    page = to_html_many([expl, words_expl], labels=["sentences", "words"])
    spans = _parse(page).spans
    assert len(spans) == len(expl.features) + len(words_expl.features)
    assert 'href="#expl-0"' in page and 'id="expl-1"' in page
    from attribsdk.errors import InputError

    with pytest.raises(InputError):
        to_html_many([expl], labels=["a", "b"])


# -- terminal -----------------------------------------------------------------------------------


def test_terminal_view_lists_ranked_features(expl: Explanation) -> None:
    from rich.console import Console

    from attribsdk.views.terminal import render

    console = Console(record=True, width=140, color_system="truecolor")
    render(expl, console=console)
    text = console.export_text()
    ranked = expl.ranked()
    positions = [
        text.index(" ".join(r.feature.text.split())[:40], text.index("Ranked features")) for r in ranked
    ]
    assert positions == sorted(positions)  # table rows appear in rank order
    assert "Answer" in text and "<b>Paris</b> is the capital & largest city." in text
    assert "1 (" in text and "cache hits" in text and f"{expl.counts.surrogate_sequences} sequences" in text
    assert "[1]" in text  # rank badge in the highlighted input
    # user text and names are never parsed as rich markup
    assert text.count("[bold red]not markup[/]") == 2  # in the input and in the ranked table
    assert f"[{expl.cost.price_source}]" in text
    assert re.search(rf"fit +R² {expl.r2:.3f}", text)
    # the highlighted input carries the signed background colours
    styled = console.export_html(inline_styles=True)
    assert "background-color: #" in styled


def test_rich_protocol_and_top(expl: Explanation) -> None:
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(expl)  # __rich__
    full = console.export_text()
    assert "Ranked features" in full
    from attribsdk.views.terminal import render

    console = Console(record=True, width=120)
    render(expl, console=console, top=1, show_input=False)
    out = console.export_text()
    assert f"{len(expl.features) - 1} more features not shown" in out and "Input" not in out


# -- plots --------------------------------------------------------------------------------------


def _png(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img: np.ndarray = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(img[..., :3].std()) > 0.02  # not blank
    return img


def test_plot_attributions(words_expl: Explanation, tmp_path: Path) -> None:
    e = words_expl
    fig = e.plot(tmp_path / "attr.png", top=5)
    _png(tmp_path / "attr.png")
    from matplotlib.patches import Rectangle

    bars = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    assert len(bars) == len(fig.axes[0].patches) == 5
    ranked = e.ranked()[:5]
    widths = [b.get_width() for b in bars]  # drawn top (rank 1) first
    for w, r in zip(widths, ranked, strict=True):
        assert w == pytest.approx(np.copysign(r.attribution, r.coefficient))
    ticks = dict(
        zip(fig.axes[0].get_yticks(), [t.get_text() for t in fig.axes[0].get_yticklabels()], strict=True)
    )
    assert ticks[max(ticks)].startswith("#1 ") and ticks[min(ticks)].startswith("#5 ")  # rank 1 on top


def test_plot_prints_dollar_signs_as_written(expl: Explanation, tmp_path: Path) -> None:
    text = r"Paths: $C:\foo\bar$ and $5 or $10"
    odd = expl.model_copy(update={"features": [expl.features[0].model_copy(update={"text": text})]})
    odd = odd.model_copy(update={"attributions": [1.0], "coefficients": [0.5]})
    fig = odd.plot(tmp_path / "dollars.png")  # mathtext would raise on \foo
    _png(tmp_path / "dollars.png")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["#1 " + " ".join(text.split())]


def test_non_finite_values_round_trip_and_rank_last(expl: Explanation) -> None:
    n = len(expl.features)
    odd = expl.model_copy(update={"attributions": [float("nan")] + [1.0 / n] * (n - 1), "r2": float("nan")})
    back = Explanation.model_validate_json(odd.model_dump_json())
    assert back.r2 is not None
    assert (
        np.isnan(back.r2) and np.isnan(back.attributions[0]) and back.attributions[1:] == odd.attributions[1:]
    )
    assert odd.ranked()[-1].feature == expl.features[0]


def test_plot_attributions_into_given_axes(expl: Explanation) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    assert expl.plot(ax=ax) is fig
    assert len(ax.patches) == len(expl.features)


def test_cost_quality_and_metric_plots(tmp_path: Path) -> None:
    from attribsdk.compare import CompareConfig, CompareReport, MethodSummary, _write_outputs, plot_report
    from attribsdk.views.plots import plot_metric_vs_m

    def summary(name: str, calls: int, auroc: float) -> MethodSummary:
        return MethodSummary(
            method=name, n_examples=2, n_ok=2, n_failed=0, closed_calls=calls, failed_calls=0,
            http_attempts=calls, cache_hits=0, input_tokens=100 * calls, output_tokens=10 * calls,
            cost_usd=0.001 * calls, avoided_usd=0.0, wall_seconds=1.0, surrogate_sequences=10,
            iou=0.5, f1=0.5, auroc=auroc,
        )  # fmt: skip

    report = CompareReport(
        config=CompareConfig(n_examples=2),
        closed="local:smollm2",
        pricing_note="",
        price_source="test",
        examples=["a", "b"],
        methods=[summary("rope-lime", 2, 0.8), summary("gsmile", 130, 0.6)],
        rows=[],
    )
    plot_report(report, tmp_path / "compare.png")
    _png(tmp_path / "compare.png")
    # the three outputs are written together or not at all: a failing plot keeps the last run's
    out = tmp_path / "out"
    _write_outputs(report, out)
    assert sorted(p.name for p in out.iterdir()) == ["compare.html", "compare.json", "compare.png"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    broken = report.model_copy(update={"methods": [*report.methods, "not a summary"]})
    with pytest.raises(AttributeError):
        _write_outputs(broken, out)  # type: ignore[arg-type]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no partial files either
    from attribsdk.views.html import compare_to_html

    page = compare_to_html(report, plot_png=(tmp_path / "compare.png").read_bytes())
    assert page.count("<tr><td>") == 2 and "<td>gsmile</td>" in page and '<td class="num">130</td>' in page
    assert 'src="data:image/png;base64,iVBORw0KGgo' in page  # the plot travels inside the page
    assert "http://" not in page and "https://" not in page
    fig = plot_metric_vs_m(
        ["2-3", "4-5"],
        {"rope-lime": ([0.0, 1.0], [0.7, 0.6], [0.05, 0.0])},
        tmp_path / "sub" / "metric.png",
        references=[(1.0, 0.65, "paper")],
        metric="auroc",
    )
    _png(tmp_path / "sub" / "metric.png")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["2-3", "4-5"]


def test_compare_quality_is_over_the_examples_every_method_finished() -> None:
    """gSMILE failing on the hard example must not raise its AUROC above RoPE-LIME's."""
    from attribsdk.compare import CompareConfig, CompareReport, MethodSummary, _pair_quality, format_table

    def summary(name: str, failed: int) -> MethodSummary:
        return MethodSummary(
            method=name, n_examples=2, n_ok=2 - failed, n_failed=failed, closed_calls=2, failed_calls=0,
            http_attempts=2, cache_hits=0, input_tokens=1, output_tokens=1, cost_usd=0.0,
            avoided_usd=0.0, wall_seconds=1.0, surrogate_sequences=0, iou=None, f1=None, auroc=None,
        )  # fmt: skip

    def row(method: str, example: str, auroc: float, calls: int, usd: float) -> dict[str, Any]:
        return {
            "method": method, "id": example, "metrics": {"iou": auroc, "f1": auroc, "auroc": auroc},
            "closed_calls": calls, "cache_hits": 1, "cost_usd": usd, "avoided_usd": 0.5, "seconds": calls,
        }  # fmt: skip

    rows = [row("rope-lime", "easy", 0.9, 1, 1.0), row("rope-lime", "hard", 0.3, 9, 9.0)]
    rows.append(row("gsmile", "easy", 0.8, 20, 20.0))
    rows.append({"method": "gsmile", "id": "hard", "error": "BudgetExceeded: ..."})
    summaries = [summary("rope-lime", 0), summary("gsmile", 1)]
    _pair_quality(summaries, rows)
    assert [(s.auroc, s.n_quality) for s in summaries] == [(0.9, 1), (0.8, 1)]  # not 0.6 vs 0.8
    # costs per explanation on the same example: RoPE-LIME's hard example is not counted against it
    assert [(s.mean_calls, s.mean_usd, s.mean_seconds) for s in summaries] == [(2, 1.5, 1), (21, 20.5, 20)]
    report = CompareReport(
        config=CompareConfig(n_examples=2), closed="local:smollm2", pricing_note="", price_source="t",
        examples=["easy", "hard"], methods=summaries, rows=rows,
    )  # fmt: skip
    assert "1 explanations failed (gsmile 1;" in format_table(report)
    assert "over the 1 examples every method finished" in format_table(report)


def test_explanation_module_does_not_import_plotting_or_rich() -> None:
    import subprocess
    import sys

    code = (
        "import sys, attribsdk.explanation; "
        "print(sorted(m for m in ('matplotlib', 'rich') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- progress -----------------------------------------------------------------------------------


def test_progress_auto_is_off_without_a_terminal_and_bars_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert progress_enabled(None) is False  # pytest captures stderr: not a terminal
    assert progress_enabled(True) is True and progress_enabled(False) is False
    bar = progress_bar(3, True, description="testing", stderr=True)
    bar(2)
    bar(1, close=True)
    err = capsys.readouterr().err
    assert "testing" in err and "3/3" in err
    off = progress_bar(3, None, description="silent", stderr=True)
    off(3, close=True)
    assert "silent" not in capsys.readouterr().err


def test_explain_many_progress_bar_counts_examples(capsys: pytest.CaptureFixture[str]) -> None:
    examples = [
        {"question": "What is the capital of France?", "context": CONTEXT[1], "answer": "Berlin."},
        {"question": "Where did the cat sit?", "context": CONTEXT[1], "answer": "On the mat."},
    ]
    with Explainer(
        closed=TestModel("x"), surrogate=tiny_local_model(seed=3), cache=False, pricing=PRICING
    ) as ex:
        results = ex.explain_many_sync(examples, progress=True, concurrency=2)
    assert all(isinstance(r, Explanation) for r in results)
    err = capsys.readouterr().err
    assert "explaining" in err and "2/2" in err


def test_closed_loop_explanation_counts_its_closed_calls_on_a_bar(capsys: pytest.CaptureFixture[str]) -> None:
    closed = TestModel("Paris.", name="test:model")
    tiny = tiny_local_model(seed=3)
    with Explainer(closed=closed, surrogate=tiny, method="closed-loo", cache=False, pricing=PRICING) as ex:
        res = ex.explain_sync("What is the capital of France?", CONTEXT[1], progress=True)
    m = len(res.features)
    assert len(closed.calls) == 1 + m  # the answer, then one call per deleted feature
    err = capsys.readouterr().err
    assert f"closed-loo: {m} features, closed calls" in err and f"{m}/?" in err
