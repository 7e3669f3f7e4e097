"""Plausibility metrics against gold feature labels. Pure functions on plain sequences."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

from ..errors import InputError

__all__ = ["auroc", "f1_at_k", "iou_at_k", "top_k"]


def _check(scores: Sequence[float], gold: Sequence[int]) -> tuple[np.ndarray, set[int]]:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise InputError("scores must be a non-empty 1-D sequence")
    g = {int(i) for i in gold}
    if any(i < 0 or i >= s.size for i in g):
        raise InputError(f"gold indices {sorted(g)} out of range for {s.size} features")
    return s, g


def top_k(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` largest scores (ties broken by lower index)."""
    s = np.asarray(scores, dtype=np.float64)
    order = sorted(range(s.size), key=lambda i: (-s[i], i))
    return order[:k]


def iou_at_k(scores: Sequence[float], gold: Sequence[int]) -> float:
    """IoU between the top-|gold| features and the gold set."""
    s, g = _check(scores, gold)
    if not g:
        raise InputError("gold set is empty")
    pred = set(top_k(s, len(g)))
    return len(pred & g) / len(pred | g)


def f1_at_k(scores: Sequence[float], gold: Sequence[int]) -> float:
    """F1 between the top-|gold| features and the gold set (equals precision@|gold| here)."""
    s, g = _check(scores, gold)
    if not g:
        raise InputError("gold set is empty")
    pred = set(top_k(s, len(g)))
    tp = len(pred & g)
    if tp == 0:
        return 0.0
    prec, rec = tp / len(pred), tp / len(g)
    return 2 * prec * rec / (prec + rec)


def auroc(scores: Sequence[float], gold: Sequence[int]) -> float:
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
