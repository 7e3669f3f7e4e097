"""The result of one explanation: a pydantic model that round-trips through JSON."""

from __future__ import annotations

import math
import os
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .adapters.base import Usage
from .cost import CostReport
from .features import Feature

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Counts", "Explanation", "RankedFeature", "Samples", "Timings"]

SCHEMA_VERSION = 1


class Counts(BaseModel):
    """What an explanation consumed."""

    closed_calls: int = 0  # calls that reached the closed model (cache hits excluded)
    http_attempts: int = 0  # HTTP requests made for those calls, retries included
    cache_hits: int = 0
    surrogate_sequences: int = 0  # sequences teacher-forced through the surrogate
    surrogate_tokens: int = 0  # non-padding tokens those sequences held


class Timings(BaseModel):
    """Wall-clock seconds per stage."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    features: float = 0.0
    closed: float = 0.0
    sampling: float = 0.0
    scoring: float = 0.0
    locality: float = 0.0
    regression: float = 0.0
    total: float = 0.0


class Samples(BaseModel):
    """The perturbations behind the fit (row 0 is the unmasked input).

    ``masks[n][i]`` is 1 when feature i was kept in sample n; ``targets`` are the raw target values
    (divergence from the unmasked input), ``distances``/``weights`` the locality kernel's output.
    ``answer_logprobs[n][t]`` (``[N, T]``, nats) is the surrogate's log-probability of answer token
    t under sample n, for methods that score the answer with the surrogate (``None`` otherwise):
    the per-token data that lets one set of perturbations explain any span of the answer.
    ``answers[n]`` is the closed model's answer to sample n, for the closed-loop methods (gSMILE,
    closed-model leave-one-out) that paid for one per sample (``None`` otherwise).
    """

    model_config = ConfigDict(ser_json_inf_nan="strings")

    masks: list[list[int]]
    targets: list[float]
    distances: list[float]
    weights: list[float]
    answer_logprobs: list[list[float]] | None = None
    answers: list[str] | None = None


class RankedFeature(BaseModel):
    rank: int
    feature: Feature
    attribution: float
    coefficient: float


class Explanation(BaseModel):
    """Which features of the input the answer was based on.

    ``attributions[i]`` is feature i's share of the total absolute effect (non-negative, sums to 1
    unless every coefficient is 0); ``coefficients[i]`` is the signed regression coefficient:
    positive means keeping the feature keeps the surrogate close to the answer (it supports it),
    negative means the answer is more likely without it.
    """

    # Non-finite floats (an undefined R², a -inf log-probability) round-trip as "NaN"/"Infinity"
    # strings, keeping the JSON strict.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")

    schema_version: int = SCHEMA_VERSION
    method: str
    config: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    answer: str
    answer_tokens: list[str] = Field(default_factory=list)
    features: list[Feature]
    attributions: list[float]
    coefficients: list[float]
    intercept: float = 0.0
    r2: float | None = None
    #: How many feature effects the perturbations identify (the rank of the fit's design; ``None``
    #: for methods without a regression). Below M, other attributions fit the samples equally well:
    #: the ones given are the minimum-norm fit (or the ridge penalty's choice).
    fit_rank: int | None = None
    closed_model: str | None = None
    surrogate: str | None = None
    prompt: dict[str, Any] | None = None  # the Prompt as JSON data (see attribsdk.prompt.Prompt)
    counts: Counts = Counts()
    usage: Usage = Usage()
    #: Closed-model calls of this explanation: tokens, dollars, avoided dollars, price source.
    cost: CostReport = CostReport()
    timings: Timings = Timings()
    #: What the surrogate engine reported: micro-batches, padding fraction, tokens fed
    #: (``computed_tokens``) vs taken from the reference's cache (``reused_prefix_tokens``), peak
    #: memory, device and dtype (plain JSON values only; empty for closed-loop methods).
    engine: dict[str, Any] = Field(default_factory=dict)
    samples: Samples | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @model_validator(mode="after")
    def _check_lengths(self) -> Explanation:
        m = len(self.features)
        if len(self.attributions) != m or len(self.coefficients) != m:
            raise ValueError(
                f"{m} features but {len(self.attributions)} attributions and "
                f"{len(self.coefficients)} coefficients"
            )
        return self

    # -- views ------------------------------------------------------------------------------
    @property
    def underdetermined(self) -> bool:
        """True when the perturbations identify fewer feature effects than there are features
        (:attr:`fit_rank` < M): the attributions are one of many fits that explain them equally well."""
        return self.fit_rank is not None and self.fit_rank < len(self.features)

    def fit_summary(self) -> str:
        """The fit's quality in words: ``"R² 0.953"``, with the identified effects when
        :attr:`underdetermined` (``"n/a"`` for methods without a regression)."""
        if self.r2 is None:
            return "n/a"
        text = f"R² {self.r2:.3f}"
        if self.underdetermined:
            text += (
                f"; the samples identify only {self.fit_rank} of {len(self.features)} feature effects "
                "(minimum-norm or ridge attributions)"
            )
        return text

    def ranked(self) -> list[RankedFeature]:
        """Features sorted by attribution (largest first; ties keep input order; an undefined
        (NaN) attribution last)."""

        def key(i: int) -> tuple[bool, float, int]:
            a = self.attributions[i]
            return (math.isnan(a), -a if not math.isnan(a) else 0.0, i)

        order = sorted(range(len(self.features)), key=key)
        return [
            RankedFeature(
                rank=r + 1,
                feature=self.features[i],
                attribution=self.attributions[i],
                coefficient=self.coefficients[i],
            )
            for r, i in enumerate(order)
        ]

    def top(self, k: int = 3) -> list[Feature]:
        """The ``k`` most important features."""
        return [r.feature for r in self.ranked()[:k]]

    def table(self, k: int | None = None, *, width: int = 100) -> str:
        """A plain-text ranked table (``k`` rows at most)."""
        rows = self.ranked()[: k if k is not None else None]
        text_w = max(20, width - 32)
        lines = [
            f"Answer: {self.answer.strip()}",
            f"Method: {self.method}   surrogate: {self.surrogate}   closed: {self.closed_model}",
            f"{'rank':>4}  {'attr':>6}  {'signed':>9}  feature",
        ]
        for r in rows:
            snippet = textwrap.shorten(" ".join(r.feature.text.split()), width=text_w, placeholder="…")
            coef = r.coefficient
            coef_s = f"{coef:+.2e}" if coef and (abs(coef) < 1e-3 or abs(coef) >= 1e3) else f"{coef:+.4f}"
            attr_s = f"{r.attribution:.3f}" if math.isfinite(r.attribution) else "nan"
            lines.append(f"{r.rank:>4}  {attr_s:>6}  {coef_s:>9}  {snippet}")
        c = self.counts
        lines.append(
            f"closed calls {c.closed_calls} (cache hits {c.cache_hits}), surrogate sequences "
            f"{c.surrogate_sequences} ({c.surrogate_tokens} tokens), {self.timings.total:.2f} s"
        )
        if self.cost.cost_usd:
            lines.append(f"cost ${self.cost.cost_usd:.6f} [{self.cost.price_source}]")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    # The richer views live in attribsdk.views and import rich/matplotlib only when called.
    def to_html(self, *, title: str | None = None, full_page: bool = True, top: int | None = None) -> str:
        """Self-contained HTML: the highlighted input, answer, ranked table and cost summary
        (see :func:`attribsdk.views.html.to_html`)."""
        from .views.html import to_html

        return to_html(self, title=title, full_page=full_page, top=top)

    def save_html(self, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
        """Write :meth:`to_html` (a complete page, UTF-8) to ``path``; returns the path."""
        out = Path(path)
        out.write_text(self.to_html(title=title), encoding="utf-8")
        return out

    def _repr_html_(self) -> str:
        """Jupyter's rich display: the HTML fragment."""
        return self.to_html(full_page=False)

    def __rich__(self) -> Any:
        """rich's display protocol: ``rich.print(explanation)`` shows the terminal view."""
        from .views.terminal import renderable

        return renderable(self)

    def show(self, *, top: int | None = None) -> None:
        """Print the terminal view (rich) on stdout."""
        from .views.terminal import render

        render(self, top=top)

    def plot(
        self, path: str | os.PathLike[str] | None = None, *, ax: Any = None, top: int | None = 20
    ) -> Figure:
        """Bar chart of the signed attributions (see :func:`attribsdk.views.plots.plot_attributions`);
        written as PNG to ``path`` when given. Returns the matplotlib Figure."""
        from .views.plots import plot_attributions

        return plot_attributions(self, path, ax=ax, top=top)
