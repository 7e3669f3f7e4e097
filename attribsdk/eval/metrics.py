"""Plausibility metrics against gold feature labels, and their aggregation over examples.

Pure functions on plain sequences. Per example: IoU and F1 of the top-|gold| features and AUROC
(:func:`plausibility` gives all three). Over examples: mean ± std and median [IQR]
(:func:`summarize`, :func:`aggregate`), as in the RoPE-LIME paper's tables. Faithfulness metrics,
which need a model, live in :mod:`attribsdk.eval.faithfulness`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import hypergeom, rankdata

from ..errors import InputError

#: Per-feature scores: any 1-D sequence of numbers or a numpy array.
Scores = Sequence[float] | np.ndarray

__all__ = [
    "PLAUSIBILITY_METRICS",
    "Scores",
    "Summary",
    "aggregate",
    "auroc",
    "f1_at_k",
    "iou_at_k",
    "mean_std",
    "median_iqr",
    "plausibility",
    "summarize",
    "top_k",
]


def _check(scores: Scores, gold: Sequence[int]) -> tuple[np.ndarray, set[int]]:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise InputError("scores must be a non-empty 1-D sequence")
    if not np.isfinite(s).all():
        bad = [int(i) for i in np.flatnonzero(~np.isfinite(s))[:5]]
        raise InputError(f"scores must be finite; features {bad} are not (nan or inf)")
    g = {int(i) for i in gold}
    if any(i < 0 or i >= s.size for i in g):
        raise InputError(f"gold indices {sorted(g)} out of range for {s.size} features")
    return s, g


def top_k(scores: Scores, k: int) -> list[int]:
    """Indices of the ``k`` largest scores (ties broken by lower index)."""
    s = np.asarray(scores, dtype=np.float64)
    order = sorted(range(s.size), key=lambda i: (-s[i], i))
    return order[:k]


def _hits_at_k(s: np.ndarray, g: set[int]) -> tuple[int, np.ndarray, np.ndarray]:
    """Gold hits among the top-|gold| features when tied scores at the cut-off are picked at random.

    Returns ``(hits above the cut-off, x, P(x))``: ``x`` more gold features come from the block of
    features tied at the cut-off score, with the hypergeometric probabilities ``P(x)`` of drawing
    the remaining places uniformly from that block.
    """
    k = len(g)
    cut = np.sort(s)[::-1][k - 1]
    above = np.flatnonzero(s > cut)
    block = np.flatnonzero(s == cut)
    need = k - above.size
    hits_above = sum(1 for i in above if int(i) in g)
    gold_in_block = sum(1 for i in block if int(i) in g)
    x = np.arange(0, need + 1)
    p = hypergeom.pmf(x, block.size, gold_in_block, need)
    return hits_above, x, p


def iou_at_k(scores: Scores, gold: Sequence[int]) -> float:
    """IoU between the top-|gold| features and the gold set.

    Features tied at the cut-off score are picked uniformly at random, and the IoU is its exact
    expectation over that choice, so the value never depends on the order of the features (all
    scores equal gives the chance level)."""
    s, g = _check(scores, gold)
    if not g:
        raise InputError("gold set is empty")
    k = len(g)
    hits_above, x, p = _hits_at_k(s, g)
    hits = hits_above + x
    return float(np.sum(p * hits / (2 * k - hits)))


def f1_at_k(scores: Scores, gold: Sequence[int]) -> float:
    """F1 between the top-|gold| features and the gold set (equals precision@|gold| here).

    Ties at the cut-off score are resolved in expectation, as in :func:`iou_at_k`."""
    s, g = _check(scores, gold)
    if not g:
        raise InputError("gold set is empty")
    hits_above, x, p = _hits_at_k(s, g)
    # |predicted| = |gold| = k, so precision = recall = F1 = hits / k.
    return float(np.sum(p * (hits_above + x)) / len(g))


def auroc(scores: Scores, gold: Sequence[int]) -> float:
    """Probability that a gold feature outscores a non-gold one (ties count ½).

    ``nan`` when every feature is gold or none is.
    """
    s, g = _check(scores, gold)
    pos = np.array([i in g for i in range(s.size)])
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# -- plausibility, all at once -------------------------------------------------------------------

#: Names of the gold-label metrics computed by :func:`plausibility`.
PLAUSIBILITY_METRICS: tuple[str, ...] = ("iou", "f1", "auroc")


def plausibility(scores: Scores, gold: Sequence[int]) -> dict[str, float]:
    """IoU and F1 of the top-|gold| features and AUROC, as one dict.

    Unlike the single functions, an empty gold set gives ``nan`` for every metric instead of an
    error (AUROC is ``nan`` too when every feature is gold), so one odd example never stops a
    benchmark; aggregation skips ``nan``. Malformed or non-finite scores and out-of-range
    indices still raise :class:`~attribsdk.errors.InputError`. None of the three depends on the
    order of the features: ties count ½ in AUROC and are resolved in expectation in IoU and F1.
    """
    s, g = _check(scores, gold)
    if not g:
        return {name: float("nan") for name in PLAUSIBILITY_METRICS}
    return {"iou": iou_at_k(s, sorted(g)), "f1": f1_at_k(s, sorted(g)), "auroc": auroc(s, sorted(g))}


# -- aggregation -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Summary statistics of one metric over examples; ``nan`` values are left out and counted.

    ``std`` is the sample standard deviation (``ddof=1``; ``nan`` for fewer than two values);
    ``q1``/``q3`` are the 25th/75th percentiles (linear interpolation, numpy's default); ``sem`` is
    the standard error of the mean, ``std / sqrt(n)``.
    """

    n: int
    n_missing: int
    mean: float
    std: float
    median: float
    q1: float
    q3: float

    @property
    def iqr(self) -> float:
        """Interquartile range ``q3 - q1``."""
        return self.q3 - self.q1

    @property
    def sem(self) -> float:
        return self.std / math.sqrt(self.n) if self.n >= 2 else float("nan")

    def mean_std(self, digits: int = 3) -> str:
        """``"0.512 ± 0.101"``; the mean alone for one value; ``"n/a"`` for none."""
        if self.n == 0:
            return "n/a"
        if self.n == 1:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"

    def median_iqr(self, digits: int = 3) -> str:
        """``"0.500 [0.400, 0.600]"``: the median and the quartiles q1, q3; ``"n/a"`` for none."""
        if self.n == 0:
            return "n/a"
        return f"{self.median:.{digits}f} [{self.q1:.{digits}f}, {self.q3:.{digits}f}]"

    def to_dict(self) -> dict[str, float | int]:
        return {
            "n": self.n,
            "n_missing": self.n_missing,
            "mean": self.mean,
            "std": self.std,
            "sem": self.sem,
            "median": self.median,
            "q1": self.q1,
            "q3": self.q3,
        }


def summarize(values: Iterable[float | None]) -> Summary:
    """Mean ± std and median [IQR] of ``values``, leaving out ``None`` and ``nan``."""
    raw = [float("nan") if v is None else float(v) for v in values]
    kept = np.asarray([v for v in raw if not math.isnan(v)], dtype=np.float64)
    missing = len(raw) - kept.size
    if kept.size == 0:
        nan = float("nan")
        return Summary(n=0, n_missing=missing, mean=nan, std=nan, median=nan, q1=nan, q3=nan)
    q1, med, q3 = (float(v) for v in np.percentile(kept, [25.0, 50.0, 75.0]))
    std = float(kept.std(ddof=1)) if kept.size >= 2 else float("nan")
    return Summary(
        n=int(kept.size), n_missing=missing, mean=float(kept.mean()), std=std, median=med, q1=q1, q3=q3
    )


def mean_std(values: Iterable[float | None], digits: int = 3) -> str:
    """``summarize(values).mean_std(digits)``."""
    return summarize(values).mean_std(digits)


def median_iqr(values: Iterable[float | None], digits: int = 3) -> str:
    """``summarize(values).median_iqr(digits)``."""
    return summarize(values).median_iqr(digits)


def aggregate(
    rows: Iterable[Mapping[str, Any]], by: Sequence[str], metrics: Sequence[str]
) -> dict[tuple[Any, ...], dict[str, Summary]]:
    """Group ``rows`` by the values of the keys ``by`` and summarise each metric per group.

    A metric is read from ``row[metric]`` or, when absent, from ``row["metrics"][metric]``; a
    missing metric counts as ``nan``. Groups keep first-seen order.
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        try:
            key = tuple(row[k] for k in by)
        except KeyError as exc:
            raise InputError(f"row has no grouping key {exc.args[0]!r}") from exc
        groups.setdefault(key, []).append(row)
    return {
        key: {name: summarize(_metric_value(r, name) for r in members) for name in metrics}
        for key, members in groups.items()
    }


def _metric_value(row: Mapping[str, Any], name: str) -> float | None:
    if name in row:
        value = row[name]
    else:
        nested = row.get("metrics")
        value = nested.get(name) if isinstance(nested, Mapping) else None
    return None if value is None else float(value)
