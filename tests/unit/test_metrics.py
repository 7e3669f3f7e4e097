"""Plausibility metrics and their aggregation, on hand-computed cases."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from attribsdk.errors import InputError
from attribsdk.eval.metrics import (
    aggregate,
    auroc,
    f1_at_k,
    iou_at_k,
    mean_std,
    median_iqr,
    plausibility,
    summarize,
    top_k,
)

# -- per example -----------------------------------------------------------------------------------


def test_top_k_breaks_ties_by_lower_index() -> None:
    assert top_k([0.1, 0.5, 0.5, 0.2], 2) == [1, 2]
    assert top_k(np.array([3.0, 1.0, 3.0]), 1) == [0]


def test_iou_and_f1_of_top_gold_count() -> None:
    scores = [0.9, 0.1, 0.8, 0.3, 0.0]  # top-2 = {0, 2}
    assert iou_at_k(scores, [0, 2]) == 1.0 and f1_at_k(scores, [0, 2]) == 1.0
    # gold {0, 3}: top-2 {0, 2} shares one -> IoU 1/3, F1 = 2·½·½/(½+½) = ½
    assert iou_at_k(scores, [0, 3]) == pytest.approx(1 / 3)
    assert f1_at_k(scores, [0, 3]) == pytest.approx(0.5)
    assert iou_at_k(scores, [1, 4]) == 0.0 and f1_at_k(scores, [1, 4]) == 0.0


def test_iou_and_f1_resolve_ties_at_the_cut_off_in_expectation() -> None:
    # gold {0, 1}; feature 0 is above the cut-off, features 1 and 2 tie for the one place left:
    # half the time the pick is 1 (2 hits: IoU 1, F1 1), half the time 2 (1 hit: IoU 1/3, F1 1/2)
    scores = [2.0, 1.0, 1.0, 0.0]
    assert iou_at_k(scores, [0, 1]) == pytest.approx((1 + 1 / 3) / 2)
    assert f1_at_k(scores, [0, 1]) == pytest.approx((1 + 1 / 2) / 2)
    # the same scores in another feature order give the same values
    assert iou_at_k([2.0, 1.0, 1.0, 0.0], [0, 2]) == iou_at_k(scores, [0, 1])
    # all scores equal: the chance level, E[hits]/k = |gold|/M for F1
    assert f1_at_k([0.0] * 5, [0, 1]) == pytest.approx(2 / 5)
    # one gold of four, all tied: a hit (IoU 1) with probability 1/4
    assert iou_at_k([0.0] * 4, [3]) == pytest.approx(0.25) == iou_at_k([0.0] * 4, [0])
    # ties below the cut-off change nothing
    assert iou_at_k([3.0, 2.0, 1.0, 1.0], [0, 1]) == 1.0


def test_auroc_counts_pairs_and_half_ties() -> None:
    # gold {0, 1}; negatives {2, 3}. pairs (g > n): 0.9>0.5 ✓, 0.9>0.2 ✓, 0.5=0.5 ½, 0.5>0.2 ✓ -> 3.5/4
    assert auroc([0.9, 0.5, 0.5, 0.2], [0, 1]) == pytest.approx(0.875)
    assert auroc([0.1, 0.2, 0.3], [2]) == 1.0
    assert auroc([0.3, 0.2, 0.1], [2]) == 0.0
    assert math.isnan(auroc([0.3, 0.2], [0, 1]))


def test_metrics_reject_bad_input() -> None:
    with pytest.raises(InputError):
        iou_at_k([0.1, 0.2], [5])
    with pytest.raises(InputError):
        iou_at_k([0.1, 0.2], [])
    with pytest.raises(InputError):
        auroc([], [0])
    for bad in (float("nan"), float("inf"), -float("inf")):
        for metric in (iou_at_k, f1_at_k, auroc, plausibility):
            with pytest.raises(InputError, match=r"finite; features \[1\]"):
                metric([0.1, bad, 0.5], [2])


def test_plausibility_bundles_metrics_and_tolerates_empty_gold() -> None:
    out = plausibility([0.9, 0.1, 0.8], [0, 2])
    assert out == {"iou": 1.0, "f1": 1.0, "auroc": 1.0}
    empty = plausibility([0.9, 0.1], [])
    assert set(empty) == {"iou", "f1", "auroc"} and all(math.isnan(v) for v in empty.values())
    with pytest.raises(InputError):
        plausibility([0.9, 0.1], [3])


# -- aggregation -----------------------------------------------------------------------------------


def test_summarize_known_values() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0, float("nan"), None])
    assert (s.n, s.n_missing) == (4, 2)
    assert s.mean == 2.5
    assert s.std == pytest.approx(math.sqrt(5 / 3))  # sample std of 1..4
    assert s.median == 2.5 and s.q1 == 1.75 and s.q3 == 3.25 and s.iqr == 1.5
    assert s.sem == pytest.approx(math.sqrt(5 / 3) / 2)
    assert s.mean_std(2) == "2.50 ± 1.29"
    assert s.median_iqr(2) == "2.50 [1.75, 3.25]"
    assert s.to_dict()["n"] == 4


def test_summarize_degenerate_cases() -> None:
    one = summarize([0.5])
    assert one.mean_std() == "0.500" and math.isnan(one.std) and one.median_iqr() == "0.500 [0.500, 0.500]"
    none = summarize([float("nan")])
    assert none.n == 0 and none.n_missing == 1 and none.mean_std() == "n/a" and none.median_iqr() == "n/a"
    assert mean_std([]) == "n/a" and median_iqr([1.0, 3.0]) == "2.000 [1.500, 2.500]"


def test_aggregate_groups_rows_and_reads_nested_metrics() -> None:
    rows: list[dict[str, Any]] = [
        {"method": "a", "bucket": "2-3", "metrics": {"iou": 1.0, "auroc": 0.5}},
        {"method": "a", "bucket": "2-3", "metrics": {"iou": 0.0}},
        {"method": "b", "bucket": "2-3", "iou": 0.5},
    ]
    out = aggregate(rows, by=["method", "bucket"], metrics=["iou", "auroc"])
    assert list(out) == [("a", "2-3"), ("b", "2-3")]
    assert out[("a", "2-3")]["iou"].mean == 0.5
    assert out[("a", "2-3")]["auroc"].n == 1 and out[("a", "2-3")]["auroc"].n_missing == 1
    assert out[("b", "2-3")]["iou"].mean == 0.5
    with pytest.raises(InputError):
        aggregate(rows, by=["nope"], metrics=["iou"])
