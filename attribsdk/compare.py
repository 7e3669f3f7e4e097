"""The cost comparison: what RoPE-LIME saves against the closed-loop methods, on your data.

:func:`acompare` (:func:`compare` from synchronous code) explains the same N labelled examples with
each method -- by default RoPE-LIME (Sparse-K), RoPE-LIME (LOO) and gSMILE -- and reports side by
side, per method: closed calls, HTTP attempts, cache hits, input/output tokens, dollars and avoided
dollars, wall time, surrogate sequences, and quality against the gold labels (mean IoU, F1, AUROC
of the attributions, :func:`~attribsdk.eval.metrics.plausibility`).

* Examples are chosen as the benchmark does (:func:`~attribsdk.eval.bench.select_examples`:
  round-robin over the buckets of M, file order within a bucket), or passed in.
* Methods run one after another (so their wall times do not interfere); each method's examples
  run concurrently (``concurrency``), and closed calls inside an explanation run concurrently too.
* Each method has its own :class:`~attribsdk.explainer.Explainer`, ledger and response cache
  (``<out>/cache/<method>``): the counts of one method never include another's calls, a first run
  measures a cold cache, and a re-run costs nothing (its savings show as cache hits and avoided
  dollars). The surrogate is loaded once and shared.
* Offline (``closed="local:..."``) the calls cost $0; ``price_as="openai:gpt-4o-mini"`` prices
  every call as if that model had been used (its ``genai-prices`` input/output prices applied to
  the local model's token counts), and the report says so in ``pricing_note``. With a real model
  string (``"openai:gpt-4o-mini"``, ``"anthropic:claude-..."``) the calls and dollars are real.

Outputs in ``out_dir``: ``compare.json`` (configuration, per-method summary, per-example rows),
``compare.png`` (cost vs quality) and ``compare.html`` (both on one self-contained page);
:func:`format_table` renders the summary as text.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
from pydantic import BaseModel, Field, field_validator

from ._strategy import ConfigModel
from ._sync import run_sync
from .adapters.base import GenerationParams, Usage
from .adapters.local import LocalClosedModel
from .cost import Price, Pricing
from .errors import AttribError, ConfigError
from .eval.bench import json_safe, select_examples
from .eval.datasets import LabeledExample, load_dataset
from .eval.metrics import plausibility
from .explanation import Explanation
from .methods import make_method
from .prompt import Example
from .views.progress import progress_bar

if TYPE_CHECKING:
    from .scoring.base import Scorer

__all__ = [
    "DEFAULT_METHODS",
    "CompareConfig",
    "CompareReport",
    "MethodSummary",
    "acompare",
    "compare",
    "format_table",
    "price_of",
]

#: The methods compared by default.
DEFAULT_METHODS: tuple[str, ...] = ("rope-lime", "rope-lime-loo", "gsmile")
JSON_FILE = "compare.json"
PLOT_FILE = "compare.png"
HTML_FILE = "compare.html"


class CompareConfig(ConfigModel):
    """What to compare. ``price_as`` (a model string) prices the calls of ``closed`` as if that
    model had answered them; ``None`` uses ``closed``'s own price (local models: $0). Every
    method name is checked here, before anything runs or is paid for (:class:`ConfigError`)."""

    dataset: str = "hotpotqa-paper"
    data_path: str | None = None
    split: Literal["tune", "report", "all"] = "report"
    n_examples: int = Field(default=5, ge=1)
    methods: tuple[str, ...] = DEFAULT_METHODS
    closed: str = "local:smollm2"
    surrogate: str = "smollm2"
    price_as: str | None = None
    seed: int = 0
    concurrency: int = Field(default=2, ge=1)
    max_tokens: int = Field(default=64, ge=1)
    device: str = "auto"
    dtype: str = "auto"

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError(f"give one or more distinct method names, got {list(value)}")
        for name in value:
            make_method(name)  # ConfigError for an unknown name
        return value


class MethodSummary(BaseModel):
    """One method's totals over the examples. Calls, tokens, dollars and time cover every example;
    the quality metrics are means over the ``n_quality`` examples that *every* compared method
    finished, so methods are compared on the same examples (``None`` when there is none or every
    value was undefined)."""

    method: str
    n_examples: int
    n_ok: int
    n_failed: int
    closed_calls: int
    failed_calls: int
    http_attempts: int
    cache_hits: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    avoided_usd: float | None
    wall_seconds: float
    surrogate_sequences: int
    iou: float | None
    f1: float | None
    auroc: float | None
    n_quality: int = 0
    #: Per explanation, means over the same ``n_quality`` examples as the quality metrics (``None``
    #: when there is none): closed calls (cache hits included), dollars paid or served from the
    #: cache (``None`` too when a price is unknown) and seconds. A method that fails early on hard
    #: examples does not look cheaper for it; the totals above still count every example.
    mean_calls: float | None = None
    mean_usd: float | None = None
    mean_seconds: float | None = None


class CompareReport(BaseModel):
    """The comparison's result (what ``compare.json`` holds)."""

    config: CompareConfig
    closed: str
    pricing_note: str
    price_source: str
    examples: list[str]
    methods: list[MethodSummary]
    rows: list[dict[str, Any]]


def price_of(model: str) -> Price:
    """The per-million-token input/output :class:`Price` of ``model`` in ``genai-prices``, at its
    base tier (measured on a call of 1 000 tokens: a million input tokens in one call would fall in
    a long-context tier where a model has one).

    Raises :class:`~attribsdk.errors.ConfigError` when the price is unknown.
    """
    pricing = Pricing()
    inp = pricing.cost(model, Usage(input_tokens=1_000))
    out = pricing.cost(model, Usage(output_tokens=1_000))
    if inp is None or out is None:
        raise ConfigError(f"no known price for {model!r}; give a model genai-prices knows")
    return Price(input_mtok=inp * 1_000, output_mtok=out * 1_000)


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


async def acompare(
    config: CompareConfig,
    out_dir: str | os.PathLike[str],
    *,
    examples: Sequence[LabeledExample] | None = None,
    surrogate: str | Scorer | None = None,
    pricing: Pricing | None = None,
    closed_options: dict[str, Any] | None = None,
    write: bool = True,
    progress: bool | None = None,
) -> CompareReport:
    """Run the comparison (see the module docstring) and write ``compare.json``/``.png``/``.html``.

    ``examples`` replaces the dataset selection; ``surrogate`` replaces ``config.surrogate`` (e.g.
    a loaded :class:`~attribsdk.scoring.base.Scorer`); ``pricing`` adds price overrides;
    ``closed_options`` go to the closed model's factory (``base_url=``, ``api_key_env=``…).
    ``progress`` shows one bar of finished explanations (methods × examples) on stderr
    (``None``: when stderr is a terminal).
    """
    from .explainer import Explainer, placement_applies

    out = Path(out_dir)
    if examples is None:
        examples = select_examples(
            load_dataset(config.dataset, config.data_path, split=config.split), max_examples=config.n_examples
        )
    examples = list(examples)
    if not examples:
        raise ConfigError("no examples to compare")

    overrides = dict(pricing.overrides) if pricing is not None else {}
    aliases = dict(pricing.aliases) if pricing is not None else {}
    if config.price_as is not None:
        p = price_of(config.price_as)  # refuses an unknown model before anything runs
        aliases[config.closed] = config.price_as
        overrides.pop(config.closed, None)
        note = (
            f"calls ran on {config.closed}; dollars are priced AS IF {config.price_as} had answered "
            f"(${p.input_mtok:g} / ${p.output_mtok:g} per million input / output tokens at its base "
            "tier, applied call by call to the local model's token counts)"
        )
    else:
        note = f"dollars are {config.closed}'s own prices"
    prices = Pricing(overrides=overrides, aliases=aliases)

    store = None
    surrogate_spec: str | Scorer = surrogate if surrogate is not None else config.surrogate
    # Loads a model by name (so device/dtype apply, and a store shares it between methods)? A ready
    # scorer (a Ray pool) was placed when it was built.
    loads_by_name = placement_applies(config.closed, surrogate_spec)
    if loads_by_name:
        from .scoring.models import ModelStore

        store = ModelStore()
    params = GenerationParams(max_tokens=config.max_tokens, temperature=0.0)
    summaries: list[MethodSummary] = []
    rows: list[dict[str, Any]] = []
    bar = progress_bar(len(config.methods) * len(examples), progress, description="comparing", stderr=True)
    try:
        for name in config.methods:
            ex = Explainer(
                closed=config.closed,
                surrogate=surrogate_spec,
                method=name,
                device=config.device if loads_by_name else "auto",
                dtype=config.dtype if loads_by_name else "auto",
                seed=config.seed,
                params=params,
                store=store,
                cache=str(out / "cache" / name),
                pricing=prices,
                closed_options=closed_options,
            )
            async with ex:
                if isinstance(surrogate_spec, str):
                    await ex.scorer()  # load before the clock starts: every method gets it loaded
                stack = await ex.closed_model()
                if isinstance(stack.adapter, LocalClosedModel):
                    await stack.adapter.load()  # a local closed model too (else the first method pays)
                t0 = time.perf_counter()
                results = await ex.explain_many(
                    [Example(prompt=e.prompt, id=e.id) for e in examples],
                    concurrency=config.concurrency,
                    progress=False,
                    on_result=lambda _i, _r: bar(1),
                )
                wall = time.perf_counter() - t0
                cost = ex.cost_report()
            summaries.append(_summarise(name, examples, results, cost, wall, rows))
    finally:
        bar(0, close=True)
        if store is not None:
            await anyio.to_thread.run_sync(store.close)

    _pair_quality(summaries, rows)
    report = CompareReport(
        config=config,
        closed=config.closed,
        pricing_note=note,
        price_source=prices.source,
        examples=[e.id for e in examples],
        methods=summaries,
        rows=rows,
    )
    if write:
        _write_outputs(report, out)
    return report


def _write_outputs(report: CompareReport, out: Path) -> None:
    """compare.json, compare.png and compare.html, each complete or not written: all three are
    staged first, so a failure (in the plot, say) leaves a previous run's files as they were."""
    from .views.html import compare_to_html

    out.mkdir(parents=True, exist_ok=True)
    staged = {name: out / f".partial-{name}" for name in (JSON_FILE, PLOT_FILE, HTML_FILE)}
    try:
        staged[JSON_FILE].write_text(json.dumps(json_safe(report.model_dump(mode="json")), indent=2) + "\n")
        plot_report(report, staged[PLOT_FILE])
        page = compare_to_html(report, plot_png=staged[PLOT_FILE].read_bytes())
        staged[HTML_FILE].write_text(page, encoding="utf-8")
        for name, path in staged.items():
            os.replace(path, out / name)
    finally:
        for path in staged.values():
            path.unlink(missing_ok=True)


def _summarise(
    name: str,
    examples: Sequence[LabeledExample],
    results: Sequence[Explanation | AttribError],
    cost: Any,
    wall: float,
    rows: list[dict[str, Any]],
) -> MethodSummary:
    sequences = 0
    n_ok = 0
    for ex, res in zip(examples, results, strict=True):
        row: dict[str, Any] = {"method": name, "id": ex.id, "m": ex.n_features, "gold": list(ex.gold)}
        if isinstance(res, Explanation):
            n_ok += 1
            sequences += res.counts.surrogate_sequences
            plaus = plausibility(res.attributions, ex.gold)
            row.update(
                answer=res.answer,
                attributions=res.attributions,
                metrics=plaus,
                closed_calls=res.counts.closed_calls,
                cache_hits=res.counts.cache_hits,
                cost_usd=res.cost.cost_usd,
                avoided_usd=res.cost.avoided_usd,
                seconds=res.timings.total,
                surrogate_sequences=res.counts.surrogate_sequences,
            )
        else:
            row["error"] = f"{type(res).__name__}: {res.message}"
        rows.append(row)
    return MethodSummary(
        method=name,
        n_examples=len(examples),
        n_ok=n_ok,
        n_failed=len(examples) - n_ok,
        closed_calls=cost.closed_calls,
        failed_calls=cost.failed_calls,
        http_attempts=cost.http_attempts,
        cache_hits=cost.cache_hits,
        input_tokens=cost.tokens.input_tokens,
        output_tokens=cost.tokens.output_tokens,
        cost_usd=cost.cost_usd,
        avoided_usd=cost.avoided_usd,
        wall_seconds=wall,
        surrogate_sequences=sequences,
        iou=None,  # set by _pair_quality over the examples every method finished
        f1=None,
        auroc=None,
    )


def _pair_quality(summaries: list[MethodSummary], rows: Sequence[dict[str, Any]]) -> None:
    """Set each summary's quality and per-explanation cost means over the examples every method
    finished: a method that failed on the hard examples must not look better or cheaper for it."""
    finished: dict[str, set[str]] = {s.method: set() for s in summaries}
    for row in rows:
        if "metrics" in row:
            finished[row["method"]].add(row["id"])
    common = set.intersection(*finished.values()) if finished else set()
    for s in summaries:
        values: dict[str, list[float]] = {"iou": [], "f1": [], "auroc": []}
        mine = [row for row in rows if row["method"] == s.method and row["id"] in common]
        for row in mine:
            for k in values:
                values[k].append(row["metrics"][k])
        s.iou, s.f1, s.auroc = _mean(values["iou"]), _mean(values["f1"]), _mean(values["auroc"])
        s.n_quality = len(common)
        s.mean_calls = _mean([row.get("closed_calls", 0) + row.get("cache_hits", 0) for row in mine])
        s.mean_seconds = _mean([row["seconds"] for row in mine if "seconds" in row])
        dollars = [_paid_or_served(row) for row in mine]
        s.mean_usd = None if any(d is None for d in dollars) else _mean([d for d in dollars if d is not None])


def _paid_or_served(row: dict[str, Any]) -> float | None:
    """One explanation's dollars, paid or served from the cache (``None``: unknown price)."""
    paid, avoided = row.get("cost_usd"), row.get("avoided_usd", 0.0)
    return None if paid is None or avoided is None else float(paid) + float(avoided)


def compare(config: CompareConfig, out_dir: str | os.PathLike[str], **kwargs: Any) -> CompareReport:
    """Blocking :func:`acompare` (also where an event loop already runs, e.g. a notebook)."""
    return run_sync(lambda: acompare(config, out_dir, **kwargs))


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


#: Column names of :func:`summary_cells`.
SUMMARY_COLUMNS = (
    "closed calls", "HTTP attempts", "cache hits", "input tok", "output tok", "$", "avoided $",
    "wall s", "surrogate seq", "IoU", "F1", "AUROC",
)  # fmt: skip


def summary_cells(s: MethodSummary) -> tuple[str, ...]:
    """One method's summary as display strings, in :data:`SUMMARY_COLUMNS` order (``–`` = none)."""
    return (
        str(s.closed_calls),
        str(s.http_attempts),
        str(s.cache_hits),
        str(s.input_tokens),
        str(s.output_tokens),
        _fmt(s.cost_usd, ".6f"),
        _fmt(s.avoided_usd, ".6f"),
        f"{s.wall_seconds:.1f}",
        str(s.surrogate_sequences),
        _fmt(s.iou, ".3f"),
        _fmt(s.f1, ".3f"),
        _fmt(s.auroc, ".3f"),
    )


def format_table(report: CompareReport) -> str:
    """The per-method summary as a fixed-width text table, with the pricing note below it."""
    head = ("method", *SUMMARY_COLUMNS)
    body = [(s.method, *summary_cells(s)) for s in report.methods]
    widths = [max(len(r[i]) for r in (head, *body)) for i in range(len(head))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in (head, *body)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    n = len(report.examples)
    failed = sum(s.n_failed for s in report.methods)
    lines += [
        "",
        f"{n} examples, closed model {report.closed}; {report.pricing_note} [{report.price_source}]",
    ]
    if failed:
        per = ", ".join(f"{s.method} {s.n_failed}" for s in report.methods if s.n_failed)
        quality_n = report.methods[0].n_quality if report.methods else 0
        lines.append(
            f"{failed} explanations failed ({per}; see rows[].error in {JSON_FILE}); IoU/F1/AUROC and "
            f"the plot's per-explanation figures are over the {quality_n} examples every method finished"
        )
    return "\n".join(lines)


def plot_report(report: CompareReport, path: str | os.PathLike[str]) -> None:
    """Cost vs quality: closed calls (left) and dollars (right) per explanation against AUROC
    (drawn by :func:`attribsdk.views.plots.plot_cost_quality`)."""
    from .views.plots import plot_cost_quality

    plot_cost_quality(report, path)
