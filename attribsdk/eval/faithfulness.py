"""Faithfulness metrics: does deleting the features an attribution ranks high change the answer?

Every metric re-scores the fixed answer with a surrogate :class:`~attribsdk.scoring.base.Scorer`
under masked versions of the prompt (masked features are deleted from the text, as
:meth:`Prompt.render <attribsdk.prompt.Prompt.render>` does) and sends all of its prompts in **one**
:class:`~attribsdk.scoring.base.ScoringRequest` (duplicate masks are scored once).
:func:`evaluate_faithfulness` computes several metrics with a single request.

Answer measures (per prompt, from the surrogate's teacher-forced log-probabilities of the answer's
T tokens, in nats): ``"logprob"`` = Σ_t log p(a_t | ·); ``"mean_logprob"`` = that sum / T;
``"prob"`` = exp(mean_logprob), the per-token geometric-mean probability in (0, 1]; ``"kl"`` =
mean over answer positions of KL(p_full ‖ p_masked) over the whole vocabulary (a divergence, used
by the soft metrics only).

Definitions (``s`` = the attribution scores being evaluated, M features):

**Deletion curves, MoRF / LeRF / ABPC** (GiLOT's protocol; Li et al., ICML 2024, code
``holyseven/GiLOT``). Features are deleted cumulatively in order of ``s``: most relevant first
(MoRF: descending ``s``) or least relevant first (LeRF: ascending ``s``); equal scores go in one
seeded random order (:func:`tie_priorities`), the same in both curves, so an attribution that ties
everything scores ABPC 0 and earns nothing from where the evidence sits in the prompt. The answer
measure is taken after deleting ``k`` features, for ``k = 0..M`` (default) or for ``k = floor(f·M)``
at fractions ``f`` (GiLOT uses f = 0, 0.1, …, 1). The curves are plotted against the deleted
fraction x = k/M (or f). ``AUC`` is the trapezoidal area over x ∈ [0, 1]; ``ABPC = AUC(LeRF) −
AUC(MoRF)`` (higher is better: deleting the top features hurts the answer more than deleting the
bottom ones). Averaging ``LeRF − MoRF`` over GiLOT's 11 steps instead gives this number divided by
1.1 exactly (both curves coincide at x = 0 and x = 1).

**Soft-NC / Soft-NS** (Zhao & Aletras, "Incorporating Attribution Importance for Improving
Faithfulness Metrics", ACL 2023). Importance ``a`` = min-max normalised ``s`` (all 0.5 when ``s`` is
constant). Each feature is kept independently with probability ``1 − a_i`` (Soft-NC: important
features are erased more often) or ``a_i`` (Soft-NS), over ``n_draws`` Bernoulli draws. With the
divergence ``d(x') = max(0, p(x) − p(x'))`` for the ``"prob"`` measure (``d = KL`` for ``"kl"``),
and ``d_∅`` the divergence of the prompt with every feature deleted::

    Soft-NC = mean_draws d(x'_NC) / d_∅
    Soft-NS = 1 − mean_draws d(x'_NS) / d_∅

which is the paper's ``Soft-C / (1 − S(x, ŷ, 0))`` and ``(Soft-S − S(x, ŷ, 0)) / (1 − S(x, ŷ, 0))``
with ``Soft-S = 1 − d``, ``S(x, ŷ, 0) = 1 − d_∅``. Both are ``nan`` when ``d_∅ = 0``. Values are not
clipped (Soft-NS < 0 when the soft-kept input is further from the answer than the empty input).

**π-Soft-NC / π-Soft-NS** (Huang & Chan, Grad-ELLM, arXiv 2601.03089): Soft-NC / Soft-NS compared
at the same *expected retaining probability* π. The keep-probabilities ``r`` above (``1 − a`` for
NC, ``a`` for NS) go through the α transform ``r_i ↦ r_i^α``, α > 0 solved by bisection (on log α)
so that ``mean_i r_i^α = π``; the metric is evaluated for π ∈ {0.05, 0.10, …, 0.95} and summarised
by its AUC over π (trapezoid, divided by the π range, so it is on the metric's scale). The mean is
strictly decreasing in α and reaches every π in the open interval (#{r_i = 1}/M, #{r_i > 0}/M);
outside it α is clamped to the bound and the achieved mean is reported (``achieved_*``).

**Top-k log-probability drop** (ContextCite; Cohen-Wang et al., 2024): ``logprob(full) −
logprob(top-k features by s deleted)``, in nats, for each k (``nan`` for k > M).

**LDS** (ContextCite's linear datamodeling score): ``n_masks`` random masks keep each feature
independently with probability ``keep_prob``; LDS is the Spearman correlation between the
attribution-predicted effect ``Σ_{i kept} s_i`` and the actual answer ``logprob`` under each mask.

The Bernoulli metrics use common random numbers: one ``[n_draws, M]`` block of uniforms per call
(seeded by ``seed``), thresholded at every keep-probability vector, so two attributions of the same
example are compared on the same noise.

Deviations from the cited papers: perturbation is deletion of whole features from the text, not
zeroing of embedding dimensions (Zhao & Aletras) or token ids (GiLOT); the answer measure is the
surrogate's probability of the fixed answer, not a sentence similarity of regenerated text (GiLOT)
or a class probability; the soft metrics use the per-token geometric-mean probability of the whole
fixed answer (or the KL of its token distributions) where the papers use one predicted class;
ContextCite's LDS regresses the logit-scaled response probability, here the summed log-probability
(``lds_measure``); the exact α transform of Grad-ELLM could not be read (only the abstract was
available), so the power transform above is this module's reading of "controlling the expected
retaining probability". With min-max importances (one feature at 0, one at 1) π is reachable only
within (1/M, 1 − 1/M): for M ≤ 3 part of the π grid is clamped (see ``pi_max_gap``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import Field, field_validator
from scipy.stats import spearmanr

from .._strategy import ConfigModel
from ..errors import ConfigError, InputError, ScoringError
from ..prompt import Prompt
from ..sampling import distinct_rows
from ..scoring.base import Scorer, ScoringRequest

__all__ = [
    "DEFAULT_PI_GRID",
    "FAITHFULNESS_METRICS",
    "AlphaSolution",
    "DeletionCurves",
    "FaithfulnessConfig",
    "LDSResult",
    "MaskScores",
    "Measure",
    "PiSoftScores",
    "SoftScores",
    "abpc",
    "bernoulli_masks",
    "curve_auc",
    "deletion_counts",
    "deletion_curves",
    "deletion_masks",
    "deletion_order",
    "evaluate_faithfulness",
    "lds",
    "lds_from_scores",
    "normalize_importance",
    "pi_soft",
    "score_masks",
    "soft_nc_ns",
    "solve_alpha",
    "tie_priorities",
    "topk_logprob_drop",
]

#: How the fixed answer is measured under a prompt (see the module docstring).
Measure = Literal["prob", "mean_logprob", "logprob"]
SoftMeasure = Literal["prob", "kl"]

#: π ∈ {0.05, 0.10, …, 0.95}, the grid of Grad-ELLM's π-Soft-NC / π-Soft-NS.
DEFAULT_PI_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))

#: Metric groups :func:`evaluate_faithfulness` knows.
FAITHFULNESS_METRICS: tuple[str, ...] = ("abpc", "soft", "pi_soft", "topk", "lds")

_LOG_ALPHA_BOUNDS = (-40.0, 40.0)  # α ∈ [e^-40, e^40]


# -- scoring masks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskScores:
    """The surrogate's scores of one answer under a set of keep-masks (row 0: nothing deleted).

    ``masks`` is ``[K, M]`` bool with unique rows; ``logprob``/``mean_logprob`` are ``[K]`` sums /
    per-token means of the answer's log-probabilities (nats); ``kl`` is ``[K]`` mean per-token
    KL(full ‖ masked) in nats.
    """

    masks: np.ndarray
    logprob: np.ndarray
    mean_logprob: np.ndarray
    kl: np.ndarray
    n_answer_tokens: int
    n_sequences: int = 0
    index: dict[bytes, int] = field(default_factory=dict, repr=False)

    def rows(self, masks: np.ndarray) -> np.ndarray:
        """Row indices of ``masks`` (``[N, M]`` bool), each of which must have been scored."""
        try:
            keys = (np.asarray(m, dtype=bool).tobytes() for m in masks)
            return np.fromiter((self.index[k] for k in keys), dtype=np.int64)
        except KeyError as exc:
            raise InputError("a mask was not scored") from exc

    def measure(self, masks: np.ndarray, measure: Measure) -> np.ndarray:
        """The answer ``measure`` under each of ``masks``: ``[N]``."""
        idx = self.rows(masks)
        if measure == "logprob":
            return np.asarray(self.logprob[idx], dtype=np.float64)
        if measure == "mean_logprob":
            return np.asarray(self.mean_logprob[idx], dtype=np.float64)
        if measure == "prob":
            return np.asarray(np.exp(self.mean_logprob[idx]), dtype=np.float64)
        raise ConfigError(f"unknown measure {measure!r}; use 'prob', 'mean_logprob' or 'logprob'")

    def divergence(self, masks: np.ndarray, measure: SoftMeasure) -> np.ndarray:
        """Soft-metric divergence from the full input under each of ``masks``: ``[N]``, ≥ 0."""
        idx = self.rows(masks)
        if measure == "kl":
            return np.asarray(np.maximum(self.kl[idx], 0.0), dtype=np.float64)
        if measure == "prob":
            p = np.exp(self.mean_logprob)
            return np.asarray(np.maximum(p[0] - p[idx], 0.0), dtype=np.float64)
        raise ConfigError(f"unknown soft-metric measure {measure!r}; use 'prob' or 'kl'")


def score_masks(scorer: Scorer, prompt: Prompt, answer: str, masks: np.ndarray) -> MaskScores:
    """Score ``answer`` under ``prompt`` rendered with each keep-mask, in one ScoringRequest.

    ``masks`` is ``[N, M]`` (bool or 0/1). The unmasked prompt is always scored (as the
    request's reference, row 0) and duplicate masks once. Raises :class:`InputError` for a mask of
    the wrong width and :class:`ScoringError` when the scorer's result has the wrong shape.
    """
    m = prompt.n_features
    arr = np.asarray(masks)
    if arr.ndim != 2 or arr.shape[1] != m:
        raise InputError(f"masks must be [N, {m}] for a prompt with {m} features, got shape {arr.shape}")
    stack, _ = distinct_rows(np.vstack([np.ones((1, m), dtype=bool), arr.astype(bool)]))
    index = {row.tobytes(): i for i, row in enumerate(stack)}
    request = ScoringRequest(prompts=[prompt.render(row) for row in stack], answer=answer, target="kl")
    result = scorer.score(request)
    lp = np.asarray(result.answer_logprobs, dtype=np.float64)
    kl = np.asarray(result.targets, dtype=np.float64)
    if lp.ndim != 2 or lp.shape[0] != len(stack) or lp.shape[1] == 0 or kl.shape != (len(stack),):
        raise ScoringError(
            f"{scorer.name}: expected answer_logprobs [{len(stack)}, T>0] and targets [{len(stack)}], "
            f"got {lp.shape} and {kl.shape}"
        )
    return MaskScores(
        masks=stack,
        logprob=lp.sum(axis=1),
        mean_logprob=lp.mean(axis=1),
        kl=kl,
        n_answer_tokens=int(lp.shape[1]),
        n_sequences=int(result.n_sequences or len(stack)),
        index=index,
    )


# -- pure helpers ----------------------------------------------------------------------------------


def _scores(scores: Sequence[float] | np.ndarray, m: int | None = None) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise InputError("attribution scores must be a non-empty 1-D sequence")
    if not np.all(np.isfinite(s)):
        raise InputError("attribution scores must be finite")
    if m is not None and s.size != m:
        raise InputError(f"{s.size} attribution scores for a prompt with {m} features")
    return s


def deletion_order(
    scores: Sequence[float] | np.ndarray,
    *,
    most_relevant_first: bool,
    ties: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """Feature indices in deletion order: descending ``scores`` (MoRF) or ascending (LeRF).

    Equal scores are deleted by ascending ``ties`` priority (``None``: the lower index first), the
    same rule in both orders, so an attribution that ties everything has equal MoRF and LeRF curves
    (ABPC 0). The metrics below pass a seeded random permutation: with the index as tie-break, a
    constant attribution would delete the first features first and earn credit whenever the
    evidence comes early in the prompt (as HotpotQA's supporting facts often do).
    """
    s = _scores(scores)
    priority = np.arange(s.size) if ties is None else np.asarray(ties)
    if priority.shape != s.shape:
        raise InputError(f"ties must give one priority per feature ({s.size}), got shape {priority.shape}")
    keys = (priority, -s if most_relevant_first else s)
    return np.lexsort(keys).astype(np.int64)


def tie_priorities(seed: int, m: int) -> np.ndarray:
    """The seeded random permutation of ``m`` features that deletion metrics break ties with."""
    return np.random.default_rng(np.random.SeedSequence([seed, 1])).permutation(m)


def deletion_counts(m: int, fractions: Sequence[float] | None = None) -> tuple[list[int], list[float]]:
    """``(counts, x)`` of a deletion curve over ``m`` features: every ``k = 0..m`` with
    ``x = k/m`` (``fractions=None``), or ``k = floor(f·m)`` with ``x = f`` for GiLOT-style fractions
    (which must be increasing and within [0, 1])."""
    if m < 1:
        raise InputError(f"a deletion curve needs at least one feature, got {m}")
    if fractions is None:
        return list(range(m + 1)), [k / m for k in range(m + 1)]
    f = [float(v) for v in fractions]
    if len(f) < 2 or any(not 0.0 <= v <= 1.0 for v in f) or any(b <= a for a, b in itertools.pairwise(f)):
        raise InputError("fractions must be at least two increasing values within [0, 1]")
    return [math.floor(v * m + 1e-9) for v in f], f


def deletion_masks(order: Sequence[int] | np.ndarray, counts: Sequence[int], m: int) -> np.ndarray:
    """``[len(counts), m]`` keep-masks; row j deletes the first ``counts[j]`` features of ``order``."""
    out = np.ones((len(counts), m), dtype=bool)
    ordered = np.asarray(order, dtype=np.int64)
    for j, k in enumerate(counts):
        if not 0 <= k <= m:
            raise InputError(f"deletion count {k} outside [0, {m}]")
        out[j, ordered[:k]] = False
    return out


def curve_auc(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Trapezoidal area under ``y(x)``; ``x`` must be non-decreasing."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.shape != ya.shape or xa.ndim != 1 or xa.size < 2:
        raise InputError("curve_auc needs x and y of the same length ≥ 2")
    if np.any(np.diff(xa) < 0):
        raise InputError("curve_auc needs non-decreasing x")
    return float(np.sum(np.diff(xa) * (ya[1:] + ya[:-1]) / 2.0))


def abpc(
    x: Sequence[float] | np.ndarray, morf: Sequence[float] | np.ndarray, lerf: Sequence[float] | np.ndarray
) -> float:
    """Area between the LeRF and MoRF curves: ``AUC(lerf) − AUC(morf)``."""
    return curve_auc(x, lerf) - curve_auc(x, morf)


def normalize_importance(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Min-max normalise ``scores`` to [0, 1]; a constant vector maps to 0.5 everywhere."""
    s = _scores(scores)
    lo, hi = float(s.min()), float(s.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi), abs(lo)):
        return np.full(s.size, 0.5)
    return (s - lo) / (hi - lo)


def bernoulli_masks(keep_probs: Sequence[float] | np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Keep-masks ``uniforms < keep_probs`` (``uniforms`` is ``[n_draws, M]`` in [0, 1))."""
    q = np.asarray(keep_probs, dtype=np.float64)
    u = np.asarray(uniforms, dtype=np.float64)
    if u.ndim != 2 or u.shape[1] != q.size:
        raise InputError(f"uniforms must be [n_draws, {q.size}], got {u.shape}")
    if np.any((q < 0) | (q > 1)):
        raise InputError("keep-probabilities must lie in [0, 1]")
    return u < q[None, :]


@dataclass(frozen=True)
class AlphaSolution:
    """Result of :func:`solve_alpha`: ``probs = base ** alpha`` has mean ``achieved``;
    ``reachable`` is false when the target lay outside the attainable interval (α clamped)."""

    alpha: float
    achieved: float
    reachable: bool
    probs: np.ndarray


def solve_alpha(
    base: Sequence[float] | np.ndarray, target: float, *, tol: float = 1e-12, max_iter: int = 200
) -> AlphaSolution:
    """Find α > 0 with ``mean(base ** alpha) = target`` by bisection on ``log α``.

    ``base`` holds keep-probabilities in [0, 1]. ``mean(base**α)`` is non-increasing in α, with
    infimum ``#{base = 1}/M`` (α → ∞) and supremum ``#{base > 0}/M`` (α → 0); a target outside that
    open interval, or a base whose mean cannot move (every entry 0 or 1), gives the nearest bound
    (α ∈ [e^-40, e^40]) with ``reachable=False``.
    """
    r = np.asarray(base, dtype=np.float64)
    if r.ndim != 1 or r.size == 0 or np.any((r < 0) | (r > 1)) or not np.all(np.isfinite(r)):
        raise InputError("base keep-probabilities must be a non-empty 1-D vector within [0, 1]")
    if not 0.0 < target < 1.0:
        raise InputError(f"target mean keep-probability must lie in (0, 1), got {target}")

    def mean_at(log_alpha: float) -> float:
        return float(np.mean(r ** math.exp(log_alpha)))

    lo, hi = _LOG_ALPHA_BOUNDS  # mean_at(lo) is the largest mean, mean_at(hi) the smallest
    top, bottom = mean_at(lo), mean_at(hi)
    if target >= top or target <= bottom:
        la = lo if target >= top else hi
        achieved = mean_at(la)
        return AlphaSolution(math.exp(la), achieved, abs(achieved - target) <= 1e-9, r ** math.exp(la))
    for _ in range(max_iter):
        mid = (lo + hi) / 2.0
        if mean_at(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < tol:
            break
    la = (lo + hi) / 2.0
    alpha = math.exp(la)
    probs = r**alpha
    return AlphaSolution(alpha, float(probs.mean()), True, probs)


def lds_from_scores(
    masks: np.ndarray, scores: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray
) -> float:
    """Spearman correlation between ``masks @ scores`` (predicted effect of the kept features) and
    ``actual``; ``nan`` when either side is constant."""
    mk = np.asarray(masks, dtype=np.float64)
    s = _scores(scores, mk.shape[1] if mk.ndim == 2 else None)
    a = np.asarray(actual, dtype=np.float64)
    if mk.ndim != 2 or a.shape != (mk.shape[0],):
        raise InputError("lds needs masks [N, M] and one actual value per mask")
    pred = mk @ s
    if np.ptp(pred) == 0 or np.ptp(a) == 0:
        return float("nan")
    rho = spearmanr(pred, a).statistic
    return float(rho)


# -- metric plans (masks first, then results from the scores) -------------------------------------


class _Plan(Protocol):
    masks: np.ndarray

    def finish(self, ms: MaskScores) -> Any: ...


@dataclass(frozen=True)
class DeletionCurves:
    """MoRF and LeRF deletion curves of one attribution; ``x`` is the deleted fraction."""

    x: tuple[float, ...]
    counts: tuple[int, ...]
    morf: tuple[float, ...]
    lerf: tuple[float, ...]
    measure: str

    @property
    def auc_morf(self) -> float:
        return curve_auc(self.x, self.morf)

    @property
    def auc_lerf(self) -> float:
        return curve_auc(self.x, self.lerf)

    @property
    def abpc(self) -> float:
        """``AUC(LeRF) − AUC(MoRF)``: larger means the top-ranked features matter more."""
        return abpc(self.x, self.morf, self.lerf)


@dataclass
class _DeletionPlan:
    scores: np.ndarray
    measure: Measure
    fractions: Sequence[float] | None
    ties: np.ndarray
    masks: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        m = self.scores.size
        self.counts, self.x = deletion_counts(m, self.fractions)
        morf = deletion_order(self.scores, most_relevant_first=True, ties=self.ties)
        lerf = deletion_order(self.scores, most_relevant_first=False, ties=self.ties)
        self.morf_masks = deletion_masks(morf, self.counts, m)
        self.lerf_masks = deletion_masks(lerf, self.counts, m)
        self.masks = np.vstack([self.morf_masks, self.lerf_masks])

    def finish(self, ms: MaskScores) -> DeletionCurves:
        return DeletionCurves(
            x=tuple(self.x),
            counts=tuple(self.counts),
            measure=self.measure,
            morf=tuple(float(v) for v in ms.measure(self.morf_masks, self.measure)),
            lerf=tuple(float(v) for v in ms.measure(self.lerf_masks, self.measure)),
        )


@dataclass(frozen=True)
class SoftScores:
    """Soft-NC and Soft-NS of one attribution (see the module docstring)."""

    soft_nc: float
    soft_ns: float
    d_empty: float
    n_draws: int
    measure: str


def _soft_values(d_nc: np.ndarray, d_ns: np.ndarray, d_empty: float) -> tuple[float, float]:
    if not d_empty > 0:
        return float("nan"), float("nan")
    return float(d_nc.mean() / d_empty), float(1.0 - d_ns.mean() / d_empty)


@dataclass
class _SoftPlan:
    scores: np.ndarray
    uniforms: np.ndarray
    measure: SoftMeasure
    masks: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        a = normalize_importance(self.scores)
        self.nc_masks = bernoulli_masks(1.0 - a, self.uniforms)
        self.ns_masks = bernoulli_masks(a, self.uniforms)
        self.empty = np.zeros((1, a.size), dtype=bool)
        self.masks = np.vstack([self.nc_masks, self.ns_masks, self.empty])

    def finish(self, ms: MaskScores) -> SoftScores:
        d0 = float(ms.divergence(self.empty, self.measure)[0])
        nc, ns = _soft_values(
            ms.divergence(self.nc_masks, self.measure), ms.divergence(self.ns_masks, self.measure), d0
        )
        return SoftScores(
            soft_nc=nc, soft_ns=ns, d_empty=d0, n_draws=len(self.uniforms), measure=self.measure
        )


@dataclass(frozen=True)
class PiSoftScores:
    """π-Soft-NC and π-Soft-NS at each π, their AUCs over π, and the α solutions."""

    pis: tuple[float, ...]
    nc: tuple[float, ...]
    ns: tuple[float, ...]
    alpha_nc: tuple[float, ...]
    alpha_ns: tuple[float, ...]
    achieved_nc: tuple[float, ...]
    achieved_ns: tuple[float, ...]
    d_empty: float
    n_draws: int
    measure: str

    @property
    def auc_nc(self) -> float:
        """AUC of π-Soft-NC over π, divided by the π range (``nan`` if any value is)."""
        return _normalised_auc(self.pis, self.nc)

    @property
    def auc_ns(self) -> float:
        return _normalised_auc(self.pis, self.ns)

    @property
    def max_pi_gap(self) -> float:
        """Largest |achieved − target| mean keep-probability (0 when every π was reachable)."""
        gaps = [abs(a - p) for a, p in zip(self.achieved_nc, self.pis, strict=True)]
        gaps += [abs(a - p) for a, p in zip(self.achieved_ns, self.pis, strict=True)]
        return max(gaps)


def _normalised_auc(x: Sequence[float], y: Sequence[float]) -> float:
    if any(math.isnan(v) for v in y):
        return float("nan")
    if len(x) == 1:
        return float(y[0])
    return curve_auc(x, y) / (x[-1] - x[0])


@dataclass
class _PiSoftPlan:
    scores: np.ndarray
    uniforms: np.ndarray
    pis: Sequence[float]
    measure: SoftMeasure
    masks: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        a = normalize_importance(self.scores)
        self.nc = [solve_alpha(1.0 - a, p) for p in self.pis]
        self.ns = [solve_alpha(a, p) for p in self.pis]
        self.nc_masks = [bernoulli_masks(sol.probs, self.uniforms) for sol in self.nc]
        self.ns_masks = [bernoulli_masks(sol.probs, self.uniforms) for sol in self.ns]
        self.empty = np.zeros((1, a.size), dtype=bool)
        self.masks = np.vstack([*self.nc_masks, *self.ns_masks, self.empty])

    def finish(self, ms: MaskScores) -> PiSoftScores:
        d0 = float(ms.divergence(self.empty, self.measure)[0])
        nc_vals: list[float] = []
        ns_vals: list[float] = []
        for nc_m, ns_m in zip(self.nc_masks, self.ns_masks, strict=True):
            nc, ns = _soft_values(ms.divergence(nc_m, self.measure), ms.divergence(ns_m, self.measure), d0)
            nc_vals.append(nc)
            ns_vals.append(ns)
        return PiSoftScores(
            pis=tuple(float(p) for p in self.pis),
            nc=tuple(nc_vals),
            ns=tuple(ns_vals),
            alpha_nc=tuple(s.alpha for s in self.nc),
            alpha_ns=tuple(s.alpha for s in self.ns),
            achieved_nc=tuple(s.achieved for s in self.nc),
            achieved_ns=tuple(s.achieved for s in self.ns),
            d_empty=d0,
            n_draws=len(self.uniforms),
            measure=self.measure,
        )


@dataclass
class _TopKPlan:
    scores: np.ndarray
    ks: Sequence[int]
    measure: Measure
    ties: np.ndarray
    masks: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        m = self.scores.size
        self.valid = [k for k in self.ks if k <= m]
        order = deletion_order(self.scores, most_relevant_first=True, ties=self.ties)
        self.masks = deletion_masks(order, [0, *self.valid], m)

    def finish(self, ms: MaskScores) -> dict[int, float]:
        values = ms.measure(self.masks, self.measure)
        drops = {k: float(values[0] - values[j + 1]) for j, k in enumerate(self.valid)}
        return {k: drops.get(k, float("nan")) for k in self.ks}


@dataclass(frozen=True)
class LDSResult:
    """ContextCite's LDS: Spearman ρ between predicted and actual answer scores over random masks."""

    lds: float
    n_masks: int
    keep_prob: float
    measure: str


@dataclass
class _LDSPlan:
    scores: np.ndarray
    uniforms: np.ndarray
    keep_prob: float
    measure: Measure
    masks: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.masks = bernoulli_masks(np.full(self.scores.size, self.keep_prob), self.uniforms)

    def finish(self, ms: MaskScores) -> LDSResult:
        actual = ms.measure(self.masks, self.measure)
        return LDSResult(
            lds=lds_from_scores(self.masks, self.scores, actual),
            n_masks=len(self.masks),
            keep_prob=self.keep_prob,
            measure=self.measure,
        )


def _run(scorer: Scorer, prompt: Prompt, answer: str, plans: Sequence[_Plan]) -> list[Any]:
    ms = score_masks(scorer, prompt, answer, np.vstack([p.masks for p in plans]))
    return [p.finish(ms) for p in plans]


def _check_draws(n: int, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"{name} must be a positive integer, got {n!r}")
    return n


def _uniforms(seed: int, n: int, m: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, m))


# -- public metric functions -----------------------------------------------------------------------


def deletion_curves(
    scorer: Scorer,
    prompt: Prompt,
    answer: str,
    scores: Sequence[float] | np.ndarray,
    *,
    measure: Measure = "prob",
    fractions: Sequence[float] | None = None,
    seed: int = 0,
) -> DeletionCurves:
    """MoRF and LeRF deletion curves (and their ABPC) of ``scores`` for ``answer`` under ``prompt``
    (tied scores are deleted in the order of :func:`tie_priorities` of ``seed``)."""
    s = _scores(scores, prompt.n_features)
    plan = _DeletionPlan(s, measure, fractions, tie_priorities(seed, s.size))
    result: DeletionCurves = _run(scorer, prompt, answer, [plan])[0]
    return result


def soft_nc_ns(
    scorer: Scorer,
    prompt: Prompt,
    answer: str,
    scores: Sequence[float] | np.ndarray,
    *,
    n_draws: int = 20,
    seed: int = 0,
    measure: SoftMeasure = "prob",
) -> SoftScores:
    """Soft-NC and Soft-NS (Zhao & Aletras, 2023) of ``scores`` with ``n_draws`` Bernoulli draws."""
    s = _scores(scores, prompt.n_features)
    u = _uniforms(seed, _check_draws(n_draws, "n_draws"), s.size)
    result: SoftScores = _run(scorer, prompt, answer, [_SoftPlan(s, u, measure)])[0]
    return result


def pi_soft(
    scorer: Scorer,
    prompt: Prompt,
    answer: str,
    scores: Sequence[float] | np.ndarray,
    *,
    pis: Sequence[float] = DEFAULT_PI_GRID,
    n_draws: int = 10,
    seed: int = 0,
    measure: SoftMeasure = "prob",
) -> PiSoftScores:
    """π-Soft-NC and π-Soft-NS (Grad-ELLM's protocol) at each π of ``pis`` and their AUCs."""
    s = _scores(scores, prompt.n_features)
    grid = _check_pis(pis)
    u = _uniforms(seed, _check_draws(n_draws, "n_draws"), s.size)
    result: PiSoftScores = _run(scorer, prompt, answer, [_PiSoftPlan(s, u, grid, measure)])[0]
    return result


def topk_logprob_drop(
    scorer: Scorer,
    prompt: Prompt,
    answer: str,
    scores: Sequence[float] | np.ndarray,
    *,
    ks: Sequence[int] = (1, 3, 5),
    measure: Measure = "logprob",
    seed: int = 0,
) -> dict[int, float]:
    """``measure(full) − measure(top-k deleted)`` for each k (ContextCite); ``nan`` for k > M.
    Tied scores at the cut-off are taken in the order of :func:`tie_priorities` of ``seed``."""
    s = _scores(scores, prompt.n_features)
    plan = _TopKPlan(s, _check_ks(ks), measure, tie_priorities(seed, s.size))
    result: dict[int, float] = _run(scorer, prompt, answer, [plan])[0]
    return result


def lds(
    scorer: Scorer,
    prompt: Prompt,
    answer: str,
    scores: Sequence[float] | np.ndarray,
    *,
    n_masks: int = 32,
    keep_prob: float = 0.5,
    seed: int = 0,
    measure: Measure = "logprob",
) -> LDSResult:
    """ContextCite's linear datamodeling score of ``scores`` over ``n_masks`` random masks."""
    s = _scores(scores, prompt.n_features)
    if not 0.0 < keep_prob < 1.0:
        raise ConfigError(f"keep_prob must lie in (0, 1), got {keep_prob}")
    u = _uniforms(seed, _check_draws(n_masks, "n_masks"), s.size)
    result: LDSResult = _run(scorer, prompt, answer, [_LDSPlan(s, u, keep_prob, measure)])[0]
    return result


def _check_pis(pis: Sequence[float]) -> tuple[float, ...]:
    grid = tuple(float(p) for p in pis)
    if not grid or any(not 0.0 < p < 1.0 for p in grid) or any(b <= a for a, b in itertools.pairwise(grid)):
        raise ConfigError("pis must be increasing values within (0, 1)")
    return grid


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    out = tuple(ks)
    if not out or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in out):
        raise ConfigError(f"ks must be positive integers, got {ks!r}")
    return out


# -- several metrics at once -----------------------------------------------------------------------


class FaithfulnessConfig(ConfigModel):
    """Which faithfulness metrics :func:`evaluate_faithfulness` computes, and how.

    ``metrics`` is a subset of :data:`FAITHFULNESS_METRICS`. Defaults: deletion curves over every
    ``k = 0..M`` with the ``"prob"`` measure; 20 draws for Soft-NC/NS; 10 draws per π over
    :data:`DEFAULT_PI_GRID`; top-k for k = 1, 3, 5 on ``"logprob"``; 32 LDS masks keeping each
    feature with probability 0.5.
    """

    metrics: tuple[str, ...] = FAITHFULNESS_METRICS
    measure: Measure = "prob"
    fractions: tuple[float, ...] | None = None
    soft_measure: SoftMeasure = "prob"
    soft_draws: int = Field(default=20, ge=1)
    pi_draws: int = Field(default=10, ge=1)
    pis: tuple[float, ...] = DEFAULT_PI_GRID
    topk: tuple[int, ...] = (1, 3, 5)
    topk_measure: Measure = "logprob"
    lds_masks: int = Field(default=32, ge=2)
    lds_keep_prob: float = Field(default=0.5, gt=0.0, lt=1.0)
    lds_measure: Measure = "logprob"

    @field_validator("metrics")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [m for m in value if m not in FAITHFULNESS_METRICS]
        if unknown or not value:
            known = ", ".join(FAITHFULNESS_METRICS)
            raise ValueError(f"unknown faithfulness metrics {unknown}; known: {known}")
        return value


def evaluate_faithfulness(
    scorer: Scorer,
    prompt: Prompt,
    answer: str,
    scores: Sequence[float] | np.ndarray,
    config: FaithfulnessConfig | None = None,
    *,
    seed: int = 0,
) -> dict[str, float]:
    """Every metric of ``config`` with **one** ScoringRequest; flat ``{name: value}``.

    Names: ``abpc``, ``auc_morf``, ``auc_lerf`` ("abpc"); ``soft_nc``, ``soft_ns`` ("soft");
    ``pi_soft_nc_auc``, ``pi_soft_ns_auc``, ``pi_max_gap`` ("pi_soft"); ``topk_drop@k`` ("topk");
    ``lds`` ("lds"). The Bernoulli metrics draw their uniforms from ``seed`` (one stream each);
    the deletion metrics ("abpc", "topk") break ties with :func:`tie_priorities` of ``seed``.
    """
    cfg = config or FaithfulnessConfig()
    s = _scores(scores, prompt.n_features)
    m = s.size
    seeds = np.random.SeedSequence(seed).spawn(3)
    plans: dict[str, _Plan] = {}
    ties = tie_priorities(seed, m)
    if "abpc" in cfg.metrics:
        plans["abpc"] = _DeletionPlan(s, cfg.measure, cfg.fractions, ties)
    if "soft" in cfg.metrics:
        u = np.random.default_rng(seeds[0]).random((cfg.soft_draws, m))
        plans["soft"] = _SoftPlan(s, u, cfg.soft_measure)
    if "pi_soft" in cfg.metrics:
        u = np.random.default_rng(seeds[1]).random((cfg.pi_draws, m))
        plans["pi_soft"] = _PiSoftPlan(s, u, _check_pis(cfg.pis), cfg.soft_measure)
    if "topk" in cfg.metrics:
        plans["topk"] = _TopKPlan(s, _check_ks(cfg.topk), cfg.topk_measure, ties)
    if "lds" in cfg.metrics:
        u = np.random.default_rng(seeds[2]).random((cfg.lds_masks, m))
        plans["lds"] = _LDSPlan(s, u, cfg.lds_keep_prob, cfg.lds_measure)
    results = dict(zip(plans, _run(scorer, prompt, answer, list(plans.values())), strict=True))
    out: dict[str, float] = {}
    if "abpc" in results:
        curves: DeletionCurves = results["abpc"]
        out.update(abpc=curves.abpc, auc_morf=curves.auc_morf, auc_lerf=curves.auc_lerf)
    if "soft" in results:
        soft: SoftScores = results["soft"]
        out.update(soft_nc=soft.soft_nc, soft_ns=soft.soft_ns)
    if "pi_soft" in results:
        pis: PiSoftScores = results["pi_soft"]
        out.update(pi_soft_nc_auc=pis.auc_nc, pi_soft_ns_auc=pis.auc_ns, pi_max_gap=pis.max_pi_gap)
    if "topk" in results:
        out.update({f"topk_drop@{k}": v for k, v in results["topk"].items()})
    if "lds" in results:
        out["lds"] = results["lds"].lds
    return out
