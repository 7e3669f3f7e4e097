from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import BaseModel, TypeAdapter

import attribsdk.locality as locality
from attribsdk.errors import ConfigError, InputError
from attribsdk.locality import (
    CosineKernel,
    Kernel,
    KernelConfig,
    LocalityResult,
    NoKernel,
    PolarSpan,
    RWMDKernel,
    make_kernel,
    polar_cost_matrix,
    polar_distance,
    polar_pool,
    rwmd,
)
from attribsdk.scoring.base import RotaryPairing, SpanPooler

PAIRINGS: list[RotaryPairing] = ["half", "interleaved"]


def apply_rope(x: np.ndarray, positions: np.ndarray, pairing: RotaryPairing, base: float = 1e5) -> np.ndarray:
    """Rotate unrotated vectors ``[T, H, D]`` as a rotary layer does at ``positions`` ``[T]``."""
    dim = x.shape[-1]
    theta = base ** (-2.0 * np.arange(dim // 2) / dim)  # [D/2]
    angle = positions[:, None, None] * theta[None, None, :]  # [T, 1, D/2]
    cos, sin = np.cos(angle), np.sin(angle)
    out = np.empty_like(x)
    if pairing == "half":
        a, b = x[..., : dim // 2], x[..., dim // 2 :]
        out[..., : dim // 2] = a * cos - b * sin
        out[..., dim // 2 :] = a * sin + b * cos
    else:
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
    return out


def random_span(rng: np.random.Generator, pairs: int = 6, scale: float = 1.0) -> PolarSpan:
    return PolarSpan(magnitude=rng.random(pairs) * scale, phase=rng.uniform(-np.pi, np.pi, pairs))


# -- polar_pool ----------------------------------------------------------------------------------


def test_polar_pool_single_token_values_and_pairing() -> None:
    v = np.array([[[3.0, 1.0, 4.0, 0.0]]], dtype=np.float32)  # 1 token, 1 head, D = 4
    half = polar_pool(v, "half")  # pairs (0, 2) and (1, 3): 3+4i, 1+0i
    np.testing.assert_allclose(half.magnitude, [5.0, 1.0])
    np.testing.assert_allclose(half.phase, [math.atan2(4, 3), 0.0])
    inter = polar_pool(v, "interleaved")  # pairs (0, 1) and (2, 3): 3+1i, 4+0i
    np.testing.assert_allclose(inter.magnitude, [math.hypot(3, 1), 4.0])
    np.testing.assert_allclose(inter.phase, [math.atan2(1, 3), 0.0])
    assert half.magnitude.dtype == np.float64 and half.phase.dtype == np.float64


def test_polar_pool_flattens_heads_and_averages_tokens() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(5, 3, 8)).astype(np.float32)
    span = polar_pool(v, "half")
    assert span.magnitude.shape == span.phase.shape == (3 * 4,)
    assert span.n_pairs == 12
    z = v[..., :4].astype(np.float64) + 1j * v[..., 4:].astype(np.float64)  # [5, 3, 4]
    np.testing.assert_allclose(span.magnitude, np.abs(z).mean(axis=0).reshape(-1))
    angle = np.angle(z)
    expected = np.arctan2(np.sin(angle).mean(0), np.cos(angle).mean(0)).reshape(-1)
    np.testing.assert_allclose(span.phase, expected)


def test_polar_pool_circular_mean_across_the_branch_cut() -> None:
    # Phases pi - 0.1 and -pi + 0.1 average to pi on the circle (an arithmetic mean would give 0).
    angles = np.array([np.pi - 0.1, -np.pi + 0.1])
    v = np.stack([np.cos(angles), np.sin(angles)], axis=-1)[:, None, :]  # [2, 1, 2]
    span = polar_pool(v, "interleaved")
    assert span.phase[0] == pytest.approx(np.pi)
    assert -np.pi < span.phase[0] <= np.pi


def test_polar_pool_is_a_span_pooler() -> None:
    pooler: SpanPooler = polar_pool
    assert isinstance(pooler(np.ones((1, 1, 2), dtype=np.float32), "half"), PolarSpan)


@pytest.mark.parametrize(
    ("vectors", "pairing", "match"),
    [
        (np.ones((2, 4)), "half", "n_tokens, n_heads, head_dim"),
        (np.ones((0, 1, 4)), "half", "at least one token"),
        (np.ones((2, 1, 3)), "half", "even"),
        (np.full((2, 1, 4), np.nan), "half", "NaN"),
        (np.ones((2, 1, 4)), "diagonal", "rotary pairing"),
        (np.ones((2, 1, 4), dtype=bool), "half", "real numbers"),
    ],
)
def test_polar_pool_bad_input(vectors: np.ndarray, pairing: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        polar_pool(vectors, pairing)  # type: ignore[arg-type]


# -- polar_distance ------------------------------------------------------------------------------


@pytest.mark.parametrize("pairing", PAIRINGS)
@pytest.mark.parametrize("shift", [1, 7, 250, 3000])
def test_polar_distance_invariant_under_common_rope_shift(pairing: RotaryPairing, shift: int) -> None:
    rng = np.random.default_rng(42)
    heads, dim = 2, 16
    x1 = rng.normal(size=(3, heads, dim))  # a 3-token span ...
    x2 = rng.normal(size=(4, heads, dim))  # ... and a 4-token span after a 5-token gap
    p1, p2 = np.arange(10, 13, dtype=np.float64), np.arange(18, 22, dtype=np.float64)
    span1 = polar_pool(apply_rope(x1, p1, pairing), pairing)
    span2 = polar_pool(apply_rope(x2, p2, pairing), pairing)
    moved1 = polar_pool(apply_rope(x1, p1 + shift, pairing), pairing)
    moved2 = polar_pool(apply_rope(x2, p2 + shift, pairing), pairing)
    before, after = polar_distance(span1, span2), polar_distance(moved1, moved2)
    assert before > 0.1  # not a trivial zero
    assert after == pytest.approx(before, abs=1e-9)
    # The phases themselves did move: only the common shift cancels.
    assert np.abs(moved1.phase - span1.phase).max() > 1e-3


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_polar_distance_sees_relative_shift(pairing: RotaryPairing) -> None:
    rng = np.random.default_rng(1)
    x1, x2 = rng.normal(size=(3, 2, 16)), rng.normal(size=(4, 2, 16))
    p1, p2 = np.arange(10, 13, dtype=np.float64), np.arange(18, 22, dtype=np.float64)
    span1 = polar_pool(apply_rope(x1, p1, pairing), pairing)
    span2 = polar_pool(apply_rope(x2, p2, pairing), pairing)
    closer = polar_pool(apply_rope(x2, p2 - 3, pairing), pairing)  # a feature between them deleted
    assert abs(polar_distance(span1, closer) - polar_distance(span1, span2)) > 1e-3


def test_polar_distance_hand_computed() -> None:
    a = PolarSpan(magnitude=np.array([1.0, 2.0]), phase=np.array([3.0, 0.5]))
    b = PolarSpan(magnitude=np.array([1.5, 2.0]), phase=np.array([-3.0, 0.25]))
    # phase differences wrap: 3 - (-3) = 6 -> 6 - 2*pi; 0.5 - 0.25 = 0.25
    phase_sq = (6 - 2 * np.pi) ** 2 + 0.25**2
    assert polar_distance(a, b) == pytest.approx(math.sqrt(0.25 + phase_sq))
    assert polar_distance(a, b, beta=0.0) == pytest.approx(0.5)
    assert polar_distance(a, b, beta=4.0) == pytest.approx(math.sqrt(0.25 + 4 * phase_sq))


def test_polar_distance_nonnegative_symmetric_and_zero_on_self() -> None:
    rng = np.random.default_rng(3)
    spans = [random_span(rng) for _ in range(8)]
    for a in spans:
        assert polar_distance(a, a) == 0.0
        for b in spans:
            assert polar_distance(a, b) >= 0
            assert polar_distance(a, b) == pytest.approx(polar_distance(b, a), abs=1e-12)


def test_polar_distance_errors() -> None:
    a = PolarSpan(np.zeros(3), np.zeros(3))
    with pytest.raises(InputError, match="3 vs 4"):
        polar_distance(a, PolarSpan(np.zeros(4), np.zeros(4)))
    with pytest.raises(InputError, match="beta"):
        polar_distance(a, a, beta=-1.0)
    with pytest.raises(InputError, match="PolarSpan"):
        polar_distance(a, np.zeros(3))  # type: ignore[arg-type]


def test_polar_cost_matrix_matches_pairwise(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    a = [random_span(rng, 10) for _ in range(7)]
    b = [random_span(rng, 10) for _ in range(5)]

    def reference(x: PolarSpan, y: PolarSpan, beta: float) -> float:
        # written independently: the phase difference wrapped through the unit circle
        wrapped = np.angle(np.exp(1j * (x.phase - y.phase)))
        return float(np.sqrt(np.sum((x.magnitude - y.magnitude) ** 2) + beta * np.sum(wrapped**2)))

    expected = np.array([[reference(x, y, 0.7) for y in b] for x in a])
    np.testing.assert_allclose(polar_cost_matrix(a, b, 0.7), expected, rtol=1e-12)
    assert polar_distance(a[0], b[0], 0.7) == pytest.approx(expected[0, 0], rel=1e-12)
    monkeypatch.setattr(locality, "_BLOCK_ELEMENTS", 20)  # force one row per block
    np.testing.assert_allclose(polar_cost_matrix(a, b, 0.7), expected, rtol=1e-12)
    assert polar_cost_matrix([], b).shape == (0, 5)
    assert polar_cost_matrix(a, []).shape == (7, 0)


# -- rwmd ----------------------------------------------------------------------------------------


def test_rwmd_hand_computed() -> None:
    cost = np.array([[1.0, 3.0], [2.0, 0.5], [4.0, 5.0]])
    # rows: min 1, 0.5, 4 -> mean 11/6; columns: min 1, 0.5 -> mean 0.75
    assert rwmd(cost) == pytest.approx(11 / 6)
    assert rwmd(cost.T) == pytest.approx(11 / 6)


def test_rwmd_zero_for_reference_against_itself() -> None:
    rng = np.random.default_rng(5)
    spans = [random_span(rng) for _ in range(6)]
    assert rwmd(polar_cost_matrix(spans, spans)) == 0.0


def test_rwmd_empty_side_is_infinite_and_bad_input_raises() -> None:
    assert rwmd(np.zeros((0, 3))) == math.inf
    assert rwmd(np.zeros((2, 0))) == math.inf
    with pytest.raises(InputError):
        rwmd(np.zeros(3))
    with pytest.raises(InputError, match="NaN"):
        rwmd(np.array([[np.nan]]))


# -- kernels -------------------------------------------------------------------------------------


def spans_for(
    masks: np.ndarray, base: list[PolarSpan], noise: list[float], seed: int = 0
) -> list[list[PolarSpan | None]]:
    """Spans for each row: the reference spans plus row-specific noise, None where masked."""
    rng = np.random.default_rng(seed)
    out: list[list[PolarSpan | None]] = []
    for row, eps in zip(masks, noise, strict=True):
        out.append(
            [
                PolarSpan(s.magnitude + eps * rng.random(s.n_pairs), s.phase + eps * rng.random(s.n_pairs))
                if keep
                else None
                for s, keep in zip(base, row, strict=True)
            ]
        )
    return out


def test_rwmd_kernel_weights() -> None:
    rng = np.random.default_rng(6)
    base = [random_span(rng) for _ in range(4)]
    masks = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1], [1, 0, 0, 1], [0, 0, 0, 1]], dtype=bool)
    spans = spans_for(masks, base, [0.0, 0.0, 0.05, 0.2, 0.6])
    result = RWMDKernel().weights(masks, spans)
    assert isinstance(result, LocalityResult)
    d, w = result.distances, result.weights
    assert d.shape == w.shape == (5,)
    assert d[0] == 0.0 and w[0] == 1.0
    assert d[1] == 0.0 and w[1] == 1.0  # identical to the reference
    assert (d >= 0).all()
    assert ((w > 0) & (w <= 1)).all()
    assert d[2] < d[3] < d[4]
    assert w[2] > w[3] > w[4]
    assert result.sigma == pytest.approx(float(np.median(d[2:])))
    np.testing.assert_allclose(w, np.exp(-(d**2) / result.sigma**2))


def test_rwmd_kernel_distance_is_rwmd_against_reference() -> None:
    rng = np.random.default_rng(7)
    base = [random_span(rng) for _ in range(3)]
    masks = np.array([[1, 1, 1], [1, 0, 1]], dtype=bool)
    spans = spans_for(masks, base, [0.0, 0.3])
    ref = [s for s in spans[0] if s is not None]
    row = [s for s in spans[1] if s is not None]
    result = RWMDKernel(beta=0.5).weights(masks, spans)
    assert result.distances[1] == pytest.approx(rwmd(polar_cost_matrix(ref, row, 0.5)))


def test_rwmd_kernel_replaces_infinite_distance_by_largest_finite() -> None:
    rng = np.random.default_rng(8)
    base = [random_span(rng) for _ in range(3)]
    masks = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0]], dtype=bool)
    spans = spans_for(masks, base, [0.0, 0.1, 0.4, 0.0])
    result = RWMDKernel(sigma=2.0).weights(masks, spans)
    assert np.isfinite(result.distances).all()
    assert result.distances[3] == pytest.approx(result.distances[1:3].max())
    assert result.sigma == 2.0


def test_rwmd_kernel_from_distances_matches_weights_and_refits_subsets() -> None:
    rng = np.random.default_rng(6)
    base = [random_span(rng) for _ in range(4)]
    masks = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1], [1, 0, 0, 1], [0, 0, 0, 1]], dtype=bool)
    spans = spans_for(masks, base, [0.0, 0.0, 0.05, 0.2, 0.6])
    full = RWMDKernel().weights(masks, spans)
    again = RWMDKernel().from_distances(full.distances)
    np.testing.assert_array_equal(again.weights, full.weights)
    assert again.sigma == full.sigma
    # A subset of rows gets its own bandwidth: the median of its positive distances.
    sub = RWMDKernel().from_distances(full.distances[:4])
    assert sub.sigma == pytest.approx(float(np.median(full.distances[2:4])))
    np.testing.assert_allclose(sub.weights, np.exp(-(full.distances[:4] ** 2) / sub.sigma**2))
    # An infinite distance becomes the largest finite one; the input is not modified.
    raw = np.array([0.0, 0.2, np.inf, 0.4])
    fixed = RWMDKernel(sigma=2.0).from_distances(raw)
    assert fixed.distances[2] == 0.4 and np.isinf(raw[2]) and fixed.sigma == 2.0


def test_rwmd_kernel_skips_none_spans_of_kept_features() -> None:
    # A kept feature that maps to no token (None) is ignored, not an error.
    rng = np.random.default_rng(9)
    base = [random_span(rng) for _ in range(3)]
    masks = np.ones((2, 3), dtype=bool)
    spans = spans_for(masks, base, [0.0, 0.0])
    spans[0][2] = None
    spans[1][2] = None
    assert RWMDKernel().weights(masks, spans).distances[1] == 0.0


def test_rwmd_kernel_no_positive_distances_falls_back_to_sigma_one() -> None:
    rng = np.random.default_rng(10)
    base = [random_span(rng) for _ in range(2)]
    masks = np.ones((3, 2), dtype=bool)
    result = RWMDKernel().weights(masks, spans_for(masks, base, [0.0, 0.0, 0.0]))
    assert result.sigma == 1.0
    np.testing.assert_array_equal(result.weights, 1.0)


def test_rwmd_kernel_input_errors() -> None:
    rng = np.random.default_rng(11)
    base = [random_span(rng) for _ in range(2)]
    masks = np.ones((2, 2), dtype=bool)
    spans = spans_for(masks, base, [0.0, 0.1])
    with pytest.raises(InputError, match="CaptureSpec"):
        RWMDKernel().weights(masks, None)
    with pytest.raises(InputError, match=r"\[2\]\[2\]"):
        RWMDKernel().weights(masks, spans[:1])
    raw: list[list[object]] = [[np.ones((1, 1, 2))] * 2] * 2
    with pytest.raises(InputError, match="PolarSpan"):
        RWMDKernel().weights(masks, raw)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="reference row"):
        RWMDKernel().weights(masks, [[None, None], spans[1]])
    with pytest.raises(InputError, match="boolean"):
        RWMDKernel().weights(np.full((2, 2), 0.5), spans)


def test_cosine_kernel() -> None:
    masks = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
    result = CosineKernel().weights(masks, None)
    d, w = result.distances, result.weights
    np.testing.assert_allclose(d, 1 - np.sqrt([1.0, 0.75, 0.5, 0.25, 0.0]))
    assert d[4] == 1.0
    assert w[0] == 1.0
    assert ((w > 0) & (w <= 1)).all()
    assert (np.diff(w) < 0).all()  # masking more lowers the weight
    np.testing.assert_allclose(w, np.exp(-(d**2) / 0.25**2))
    wide = CosineKernel(width=1.0).weights(masks, None).weights
    assert (wide[1:] > w[1:]).all()


def test_cosine_kernel_matches_lime_text_kernel() -> None:
    # LimeTextExplainer: distances = cosine * 100; weights = sqrt(exp(-d^2 / 25^2)).
    masks = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 1]], dtype=bool)
    d = CosineKernel().weights(masks, None).distances
    lime = np.sqrt(np.exp(-((d * 100) ** 2) / 25**2))
    np.testing.assert_allclose(CosineKernel(width=0.25 * math.sqrt(2)).weights(masks, None).weights, lime)


def test_no_kernel() -> None:
    result = NoKernel().weights(np.array([[1, 1], [0, 1], [0, 0]]), None)
    np.testing.assert_array_equal(result.weights, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(result.distances, [0.0, 0.0, 0.0])


def test_needs_spans_and_protocol() -> None:
    assert RWMDKernel().needs_spans
    assert not CosineKernel().needs_spans
    assert not NoKernel().needs_spans
    for kernel in (RWMDKernel(), CosineKernel(), NoKernel()):
        assert isinstance(kernel, Kernel)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (RWMDKernel, {"beta": -1.0}, r"RWMDKernel\.beta"),
        (RWMDKernel, {"beta": float("nan")}, r"RWMDKernel\.beta"),
        (RWMDKernel, {"sigma": 0.0}, r"RWMDKernel\.sigma"),
        (RWMDKernel, {"sigma": "mean"}, r"RWMDKernel\.sigma"),
        (CosineKernel, {"width": 0}, r"CosineKernel\.width"),
        (CosineKernel, {"width": float("inf")}, r"CosineKernel\.width"),
        (NoKernel, {"width": 1.0}, r"NoKernel\.width"),
    ],
)
def test_kernel_bad_config(cls: type[BaseModel], kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize(
    "kernel", [RWMDKernel(), RWMDKernel(beta=0.3, sigma=1.5), CosineKernel(width=0.5), NoKernel()], ids=repr
)
def test_json_round_trip(kernel: BaseModel) -> None:
    adapter: TypeAdapter[RWMDKernel | CosineKernel | NoKernel] = TypeAdapter(KernelConfig)
    restored = adapter.validate_json(adapter.dump_json(kernel))  # type: ignore[arg-type]
    assert restored == kernel
    assert type(restored) is type(kernel)


def test_make_kernel() -> None:
    assert make_kernel("rwmd") == RWMDKernel()
    assert make_kernel("Cosine") == CosineKernel()
    assert make_kernel("none") == NoKernel()
    assert make_kernel({"kind": "rwmd", "beta": 0.5}) == RWMDKernel(beta=0.5)
    kernel = CosineKernel(width=0.1)
    assert make_kernel(kernel) is kernel

    class Flat:
        needs_spans = False

        def weights(self, masks: np.ndarray, spans: object) -> LocalityResult:
            n = len(masks)
            return LocalityResult(np.zeros(n), np.ones(n), 1.0)

    flat = Flat()
    assert make_kernel(flat) is flat
    with pytest.raises(ConfigError, match="known kernels: cosine, none, rwmd"):
        make_kernel("gaussian")
    with pytest.raises(ConfigError, match="'kind'"):
        make_kernel({"beta": 1.0})
    with pytest.raises(ConfigError, match=r"RWMDKernel\.beta"):
        make_kernel({"kind": "rwmd", "beta": -2})
    with pytest.raises(ConfigError, match="got float"):
        make_kernel(1.0)  # type: ignore[call-overload]
