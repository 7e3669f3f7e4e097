"""Faithfulness metrics: pure parts on hand-computed cases, the rest with a tiny real surrogate."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from attribsdk.errors import ConfigError, InputError
from attribsdk.eval.faithfulness import (
    DEFAULT_PI_GRID,
    FaithfulnessConfig,
    abpc,
    bernoulli_masks,
    curve_auc,
    deletion_counts,
    deletion_curves,
    deletion_masks,
    deletion_order,
    evaluate_faithfulness,
    lds,
    lds_from_scores,
    normalize_importance,
    pi_soft,
    score_masks,
    soft_nc_ns,
    solve_alpha,
    tie_priorities,
    topk_logprob_drop,
)
from attribsdk.prompt import build_prompt
from attribsdk.scoring.base import ScoreResult, ScoringRequest
from tests.tiny_models import tiny_local_model

# -- pure parts ------------------------------------------------------------------------------------


def test_deletion_order_morf_lerf_and_ties() -> None:
    s = [0.2, 0.9, 0.2, 0.5]
    assert deletion_order(s, most_relevant_first=True).tolist() == [1, 3, 0, 2]
    assert deletion_order(s, most_relevant_first=False).tolist() == [0, 2, 3, 1]
    # an explicit tie priority decides between the two 0.2s, the same way in both orders
    ties = [3, 2, 1, 0]
    assert deletion_order(s, most_relevant_first=True, ties=ties).tolist() == [1, 3, 2, 0]
    assert deletion_order(s, most_relevant_first=False, ties=ties).tolist() == [2, 0, 3, 1]
    with pytest.raises(InputError, match="one priority per feature"):
        deletion_order(s, most_relevant_first=True, ties=[0, 1])


def test_tie_priorities_are_seeded_permutations_that_do_not_favour_the_first_feature() -> None:
    assert sorted(tie_priorities(5, 7).tolist()) == list(range(7))
    np.testing.assert_array_equal(tie_priorities(5, 7), tie_priorities(5, 7))
    firsts = [int(np.argmin(tie_priorities(seed, 4))) for seed in range(200)]
    counts = np.bincount(firsts, minlength=4)
    assert counts.min() > 25  # each of 4 features comes first about 50 times in 200 seeds


def test_deletion_counts_every_k_or_gilot_fractions() -> None:
    assert deletion_counts(3) == ([0, 1, 2, 3], [0.0, 1 / 3, 2 / 3, 1.0])
    gilot = [i / 10 for i in range(11)]
    counts, x = deletion_counts(4, gilot)
    assert counts == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4] and x == gilot  # k = floor(f·M)
    with pytest.raises(InputError):
        deletion_counts(4, [0.5, 0.2])
    with pytest.raises(InputError):
        deletion_counts(0)


def test_deletion_masks_delete_prefixes_of_the_order() -> None:
    masks = deletion_masks([2, 0, 1], [0, 1, 3], 3)
    assert masks.tolist() == [[True, True, True], [True, True, False], [False, False, False]]


def test_curve_auc_and_abpc_of_known_curves() -> None:
    x = [0.0, 0.5, 1.0]
    assert curve_auc(x, [1.0, 1.0, 1.0]) == 1.0
    assert curve_auc(x, [1.0, 0.0, 0.0]) == pytest.approx(0.25)  # triangle
    assert curve_auc([0, 1, 3], [0, 1, 3]) == pytest.approx(4.5)  # ∫ x dx over [0, 3]
    # LeRF stays at 1 until the end, MoRF falls at once: area between = 0.75 - 0.25
    assert abpc(x, morf=[1.0, 0.0, 0.0], lerf=[1.0, 1.0, 0.0]) == pytest.approx(0.5)
    with pytest.raises(InputError):
        curve_auc([1.0, 0.0], [0.0, 1.0])


def test_normalize_importance() -> None:
    assert normalize_importance([2.0, 4.0, 3.0]).tolist() == [0.0, 1.0, 0.5]
    assert normalize_importance([-1.0, 1.0]).tolist() == [0.0, 1.0]
    assert normalize_importance([0.3, 0.3]).tolist() == [0.5, 0.5]
    with pytest.raises(InputError):
        normalize_importance([float("nan"), 1.0])


def test_solve_alpha_is_exact_for_known_vectors() -> None:
    # mean(0.5^α) = 0.25  <=>  α = 2
    sol = solve_alpha([0.5, 0.5, 0.5], 0.25)
    assert sol.alpha == pytest.approx(2.0, abs=1e-9) and sol.reachable
    np.testing.assert_allclose(sol.probs, [0.25, 0.25, 0.25], atol=1e-12)
    # mean(r^1) for r = (0.25, 0.5, 1) is 7/12  <=>  α = 1
    sol = solve_alpha([0.25, 0.5, 1.0], 7 / 12)
    assert sol.alpha == pytest.approx(1.0, abs=1e-9) and sol.achieved == pytest.approx(7 / 12, abs=1e-12)
    # mean((0.2, 0.8)^α) = 0.4 has no closed form: check the defining equation
    sol = solve_alpha([0.2, 0.8], 0.4)
    assert np.mean(np.array([0.2, 0.8]) ** sol.alpha) == pytest.approx(0.4, abs=1e-10)


def test_solve_alpha_clamps_unreachable_targets() -> None:
    # r = (0, 1): the mean is 1/2 for every α > 0
    low = solve_alpha([0.0, 1.0], 0.2)
    assert not low.reachable and low.achieved == pytest.approx(0.5)
    # r = (0, 0.5, 1): reachable interval is (1/3, 2/3)
    high = solve_alpha([0.0, 0.5, 1.0], 0.9)
    assert not high.reachable and high.achieved == pytest.approx(2 / 3, abs=1e-9)
    mid = solve_alpha([0.0, 0.5, 1.0], 0.5)
    assert mid.reachable and mid.achieved == pytest.approx(0.5, abs=1e-10)
    with pytest.raises(InputError):
        solve_alpha([0.5], 1.0)
    with pytest.raises(InputError):
        solve_alpha([1.5], 0.5)


def test_bernoulli_masks_threshold_common_uniforms() -> None:
    u = np.array([[0.1, 0.6, 0.95], [0.5, 0.2, 0.0]])
    assert bernoulli_masks([0.5, 0.5, 1.0], u).tolist() == [[True, False, True], [False, True, True]]
    with pytest.raises(InputError):
        bernoulli_masks([0.5, 2.0, 1.0], u)


def test_lds_from_scores_is_a_rank_correlation() -> None:
    masks = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=bool)
    scores = [1.0, 2.0, 3.0]
    predicted = masks @ np.array(scores)  # 1, 2, 3, 3
    assert lds_from_scores(masks, scores, predicted) == pytest.approx(1.0)
    assert lds_from_scores(masks, scores, -predicted) == pytest.approx(-1.0)
    assert math.isnan(lds_from_scores(masks, scores, [1.0, 1.0, 1.0, 1.0]))


def test_config_errors_are_typed() -> None:
    with pytest.raises(ConfigError, match="unknown faithfulness metrics"):
        FaithfulnessConfig(metrics=("nope",))
    with pytest.raises(ConfigError):
        FaithfulnessConfig(soft_draws=0)
    assert len(DEFAULT_PI_GRID) == 19 and DEFAULT_PI_GRID[0] == 0.05 and DEFAULT_PI_GRID[-1] == 0.95


# -- with a tiny real surrogate --------------------------------------------------------------------

ANSWER = "Paris is the capital of France."
FILLER = " ".join(["The quick brown fox jumps over the lazy dog while the birds sing in the trees."] * 6)


class CountingScorer:
    """The tiny LocalModel, counting the requests it serves (a spy, not a stand-in)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.requests: list[ScoringRequest] = []

    @property
    def name(self) -> str:
        return str(self.inner.name)

    def score(self, request: ScoringRequest) -> ScoreResult:
        self.requests.append(request)
        result: ScoreResult = self.inner.score(request)
        return result


@pytest.fixture(scope="module")
def tiny() -> Any:
    return tiny_local_model(seed=0)


@pytest.fixture(scope="module")
def planted() -> Any:
    """Four documents; the second is ~100 tokens of filler, so deleting it moves the surrogate's
    answer distribution most (the planted dependency, checked in the test)."""
    return build_prompt(
        "What is the capital of France?", ["Paris.", FILLER, "Berlin.", "The cat."], features="documents"
    )


def test_score_masks_dedupes_and_scores_the_full_prompt_first(tiny: Any, planted: Any) -> None:
    spy = CountingScorer(tiny)
    masks = np.array([[1, 0, 1, 1], [1, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=bool)
    ms = score_masks(spy, planted, ANSWER, masks)
    assert len(spy.requests) == 1 and len(spy.requests[0].prompts) == 3  # full + 2 distinct
    assert ms.masks[0].all() and ms.kl[0] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(ms.measure(masks, "logprob")[:2], ms.logprob[ms.rows(masks[:1])].repeat(2))
    assert ms.measure(masks[2:3], "prob")[0] == pytest.approx(math.exp(ms.mean_logprob[0]))
    with pytest.raises(InputError):
        score_masks(spy, planted, ANSWER, np.ones((1, 3), dtype=bool))


def test_planted_dependency_is_ranked_right_by_the_soft_metrics(tiny: Any, planted: Any) -> None:
    m = planted.n_features
    loo = score_masks(tiny, planted, ANSWER, ~np.eye(m, dtype=bool))
    kl = loo.kl[loo.rows(~np.eye(m, dtype=bool))]
    assert int(np.argmax(kl)) == 1  # the planted feature really dominates
    good, bad = kl, -kl  # an attribution that points at it, and its reversal
    s_good = soft_nc_ns(tiny, planted, ANSWER, good, n_draws=16, measure="kl")
    s_bad = soft_nc_ns(tiny, planted, ANSWER, bad, n_draws=16, measure="kl")
    assert s_good.soft_nc > s_bad.soft_nc and s_good.soft_ns > s_bad.soft_ns
    # common random numbers: NS of the reversed attribution keeps exactly NC's masks
    assert s_bad.soft_ns == pytest.approx(1.0 - s_good.soft_nc, abs=1e-9)
    p_good = pi_soft(tiny, planted, ANSWER, good, pis=(0.25, 0.5, 0.75), n_draws=6, measure="kl")
    p_bad = pi_soft(tiny, planted, ANSWER, bad, pis=(0.25, 0.5, 0.75), n_draws=6, measure="kl")
    assert p_good.auc_nc > p_bad.auc_nc and p_good.auc_ns > p_bad.auc_ns
    assert p_good.max_pi_gap < 1e-6  # every π reachable with 4 distinct importances


def test_deletion_curves_and_topk_agree_with_direct_scoring(tiny: Any, planted: Any) -> None:
    scores = np.array([0.1, 0.7, 0.3, 0.2])
    curves = deletion_curves(tiny, planted, ANSWER, scores, measure="mean_logprob")
    order = [1, 2, 3, 0]
    morf_masks = deletion_masks(order, range(5), 4)
    direct = score_masks(tiny, planted, ANSWER, morf_masks)
    np.testing.assert_allclose(curves.morf, direct.measure(morf_masks, "mean_logprob"), atol=1e-6)
    assert curves.morf[0] == curves.lerf[0] and curves.morf[-1] == curves.lerf[-1]
    reverse = deletion_curves(tiny, planted, ANSWER, -scores, measure="mean_logprob")
    assert reverse.abpc == pytest.approx(-curves.abpc, abs=1e-6)  # no ties: MoRF and LeRF swap
    drops = topk_logprob_drop(tiny, planted, ANSWER, scores, ks=(1, 2, 9))
    expected = direct.logprob[0] - direct.measure(deletion_masks(order, [1, 2], 4), "logprob")
    assert [drops[1], drops[2]] == pytest.approx(expected.tolist(), abs=1e-5) and math.isnan(drops[9])


def test_a_constant_attribution_earns_nothing_from_feature_order(tiny: Any, planted: Any) -> None:
    """All scores tied: MoRF and LeRF delete in the same order (ABPC exactly 0), and the top-k
    deletes the seeded tie order's first features, not the prompt's first ones."""
    flat = np.zeros(planted.n_features)
    for seed in (0, 1, 2):
        curves = deletion_curves(tiny, planted, ANSWER, flat, seed=seed)
        assert curves.morf == curves.lerf and curves.abpc == 0.0
        order = deletion_order(flat, most_relevant_first=True, ties=tie_priorities(seed, planted.n_features))
        masks = deletion_masks(order, [0, 1, 2], planted.n_features)
        direct = score_masks(tiny, planted, ANSWER, masks).measure(masks, "logprob")
        drops = topk_logprob_drop(tiny, planted, ANSWER, flat, ks=(1, 2), seed=seed)
        assert [drops[1], drops[2]] == pytest.approx((direct[0] - direct[1:]).tolist(), abs=1e-5)
    assert len({int(np.argmin(tie_priorities(seed, planted.n_features))) for seed in (0, 1, 2)}) > 1


def test_lds_is_seeded_and_antisymmetric(tiny: Any, planted: Any) -> None:
    scores = [0.4, -0.2, 0.1, 0.3]
    a = lds(tiny, planted, ANSWER, scores, n_masks=10, seed=3)
    b = lds(tiny, planted, ANSWER, scores, n_masks=10, seed=3)
    neg = lds(tiny, planted, ANSWER, [-v for v in scores], n_masks=10, seed=3)
    assert a == b and a.n_masks == 10 and -1.0 <= a.lds <= 1.0
    assert neg.lds == pytest.approx(-a.lds)


def test_evaluate_faithfulness_uses_one_request(tiny: Any, planted: Any) -> None:
    spy = CountingScorer(tiny)
    cfg = FaithfulnessConfig(soft_draws=4, pi_draws=2, pis=(0.3, 0.6), lds_masks=6, topk=(1, 2))
    out = evaluate_faithfulness(spy, planted, ANSWER, [0.1, 0.7, 0.3, 0.2], cfg, seed=1)
    assert len(spy.requests) == 1
    assert set(out) == {
        "abpc",
        "auc_morf",
        "auc_lerf",
        "soft_nc",
        "soft_ns",
        "pi_soft_nc_auc",
        "pi_soft_ns_auc",
        "pi_max_gap",
        "topk_drop@1",
        "topk_drop@2",
        "lds",
    }
    assert out["abpc"] == pytest.approx(out["auc_lerf"] - out["auc_morf"])
    again = evaluate_faithfulness(tiny, planted, ANSWER, [0.1, 0.7, 0.3, 0.2], cfg, seed=1)
    assert again == pytest.approx(out, nan_ok=True)
    only = evaluate_faithfulness(
        tiny, planted, ANSWER, [0.1, 0.7, 0.3, 0.2], FaithfulnessConfig(metrics=("topk",), topk=(1,))
    )
    assert set(only) == {"topk_drop@1"}
    with pytest.raises(InputError, match="3 attribution scores"):
        evaluate_faithfulness(tiny, planted, ANSWER, [0.1, 0.2, 0.3], cfg)
