"""Stage 5: weight each perturbation by how close it stays to the unmasked input.

RoPE-LIME measures closeness in the surrogate's own representation. For every kept feature the
scorer captures the post-rotary key vectors of its tokens, ``[n_tokens, n_heads, head_dim]``, and
:func:`polar_pool` turns them into a :class:`PolarSpan`: each rotary pair of dimensions is read as a
complex number ``z = x_a + i·x_b`` and pooled over the tokens into a mean magnitude and a circular
mean phase. A perturbation's distance to the reference is the Relaxed Word Mover's Distance
(:func:`rwmd`) between the reference's spans and its own, with :func:`polar_distance` as ground cost.

Rotary embedding turns pair ``i`` of a token at position ``p`` by the angle ``p·θ_i`` and leaves
its magnitude alone. :func:`polar_distance` between two spans therefore does not change when both
move by the same offset. The kernel, though, compares each span of the unmasked reference with
the spans of a perturbed prompt, where deleting a feature moves every later span by the deleted
tokens and turns its phases by ``shift·θ_i``: the distance grows with how much text was removed
before each kept feature, as well as with how the kept text's (contextual) keys change. Magnitudes
are not moved by the rotation, so they carry only the content part.

Kernels are frozen pydantic models with a ``kind`` discriminator (see :data:`KernelConfig`); any
object with the :class:`Kernel` members can be used in their place.

Shapes: N perturbations (row 0 is the unmasked reference), M features, P = n_heads · head_dim / 2
rotary pairs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol, TypeAlias, overload, runtime_checkable

import numpy as np
from pydantic import Field, field_validator

from ._strategy import ConfigModel, build_strategy
from .errors import InputError
from .scoring.base import RotaryPairing

__all__ = [
    "CosineKernel",
    "Kernel",
    "KernelConfig",
    "LocalityResult",
    "NoKernel",
    "PolarSpan",
    "RWMDKernel",
    "make_kernel",
    "polar_cost_matrix",
    "polar_distance",
    "polar_pool",
    "rwmd",
]

#: Upper bound on the elements of one broadcast block in :func:`polar_cost_matrix` (32 MiB of float64).
_BLOCK_ELEMENTS = 1 << 22


# -- span embeddings -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PolarSpan:
    """A feature's tokens pooled in polar form, one entry per rotary pair (head-major order).

    ``magnitude``: ``[P]`` float64, mean over tokens of ``|z|``.
    ``phase``: ``[P]`` float64 radians in ``(−π, π]``, circular mean over tokens of ``arg z``.
    """

    magnitude: np.ndarray
    phase: np.ndarray

    @property
    def n_pairs(self) -> int:
        return int(self.magnitude.shape[0])


def polar_pool(vectors: np.ndarray, pairing: RotaryPairing = "half") -> PolarSpan:
    """Pool one feature's post-rotary vectors ``[n_tokens, n_heads, head_dim]`` into a :class:`PolarSpan`.

    ``pairing`` is the model's rotary layout: ``"half"`` pairs dimension ``i`` with
    ``i + head_dim/2`` (Llama, Qwen, Gemma ``rotate_half``), ``"interleaved"`` pairs ``2k`` with
    ``2k + 1`` (GPT-J, RoFormer). For each pair ``z = x_a + i·x_b``; the magnitude is the mean of
    ``|z|`` over tokens and the phase is the circular mean ``atan2(mean sin φ, mean cos φ)`` of
    ``φ = arg z`` (each token counts once, whatever its magnitude; ``arg 0`` is taken as 0).
    Computed in float64. Usable as the scorer's ``SpanPooler``.
    """
    x = np.asarray(vectors)
    if x.ndim != 3:
        raise InputError(f"span vectors must be [n_tokens, n_heads, head_dim], got shape {x.shape}")
    n_tok, n_heads, dim = x.shape
    if n_tok < 1 or n_heads < 1:
        raise InputError(f"span vectors must hold at least one token and one head, got shape {x.shape}")
    if dim < 2 or dim % 2:
        raise InputError(f"head_dim must be even and at least 2 to form rotary pairs, got {dim}")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise InputError(f"span vectors must be real numbers, got dtype {x.dtype}")
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        raise InputError("span vectors contain NaN or infinite values")
    if pairing == "half":
        a, b = x[..., : dim // 2], x[..., dim // 2 :]
    elif pairing == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]
    else:
        raise InputError(f"unknown rotary pairing {pairing!r}; expected 'half' or 'interleaved'")
    magnitude = np.hypot(a, b).mean(axis=0)
    angle = np.arctan2(b, a)
    phase = np.arctan2(np.sin(angle).mean(axis=0), np.cos(angle).mean(axis=0))
    return PolarSpan(magnitude=magnitude.reshape(-1), phase=_wrap(phase).reshape(-1))


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles mapped to ``(−π, π]``."""
    return np.pi - np.mod(np.pi - angle, 2.0 * np.pi)


def _check_beta(beta: float) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.integer, np.floating)):
        raise InputError(f"beta must be a number, got {type(beta).__name__}")
    if not (math.isfinite(beta) and beta >= 0):
        raise InputError(f"beta must be finite and >= 0, got {beta}")
    return float(beta)


def polar_distance(a: PolarSpan, b: PolarSpan, beta: float = 1.0) -> float:
    """Polar L2 distance between two spans.

    ``d² = Σ_k (r_a,k − r_b,k)² + β · Σ_k wrap(φ_a,k − φ_b,k)²`` with ``wrap`` to ``(−π, π]``:
    magnitudes are compared in the vectors' units, phases in radians along the circle, ``β``
    trades one against the other. Symmetric, zero for equal spans, invariant under adding the same
    angle to every phase of both spans (hence under a common rotary position shift).
    """
    return float(polar_cost_matrix([a], [b], beta)[0, 0])


def _stack(spans: Sequence[PolarSpan], side: str) -> tuple[np.ndarray, np.ndarray]:
    for s in spans:
        if not isinstance(s, PolarSpan):
            raise InputError(f"{side}: expected PolarSpan entries, got {type(s).__name__}")
    if not spans:
        return np.zeros((0, 0)), np.zeros((0, 0))
    sizes = {s.magnitude.shape for s in spans} | {s.phase.shape for s in spans}
    if len(sizes) != 1 or len(next(iter(sizes))) != 1:
        raise InputError(f"{side}: spans must all be 1-D with the same number of pairs, got {sorted(sizes)}")
    return np.stack([s.magnitude for s in spans]), np.stack([s.phase for s in spans])


def polar_cost_matrix(a: Sequence[PolarSpan], b: Sequence[PolarSpan], beta: float = 1.0) -> np.ndarray:
    """``[len(a), len(b)]`` float64 matrix of :func:`polar_distance` between every pair of spans."""
    beta = _check_beta(beta)
    ra, pa = _stack(a, "a")
    rb, pb = _stack(b, "b")
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    if ra.shape[1] != rb.shape[1]:
        raise InputError(f"spans differ in size: {ra.shape[1]} vs {rb.shape[1]} rotary pairs")
    out = np.empty((len(a), len(b)))
    step = max(1, _BLOCK_ELEMENTS // (len(b) * ra.shape[1]))
    for lo in range(0, len(a), step):
        hi = lo + step
        dr = ra[lo:hi, None, :] - rb[None, :, :]
        dphi = _wrap(pa[lo:hi, None, :] - pb[None, :, :])
        out[lo:hi] = np.sqrt(np.einsum("ijk,ijk->ij", dr, dr) + beta * np.einsum("ijk,ijk->ij", dphi, dphi))
    return out


def rwmd(cost: np.ndarray) -> float:
    """Relaxed Word Mover's Distance with uniform weights (Kusner et al., 2015).

    ``cost`` is ``[Ka, Kb]`` ground distances. Each relaxation drops one side's constraint, so
    every item moves to its nearest counterpart: ``max(mean_i min_j C_ij, mean_j min_i C_ij)``,
    a lower bound of the exact WMD. Returns ``inf`` when either side is empty (nothing to match).
    """
    c = np.asarray(cost, dtype=np.float64)
    if c.ndim != 2:
        raise InputError(f"cost must be a 2-D matrix, got shape {c.shape}")
    if 0 in c.shape:
        return math.inf
    if np.isnan(c).any():
        raise InputError("cost matrix contains NaN")
    return float(max(c.min(axis=1).mean(), c.min(axis=0).mean()))


# -- kernels -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalityResult:
    """A kernel's output: ``distances`` ``[N]`` and ``weights`` ``[N]`` float64 (row 0: 0 and 1),
    and the bandwidth ``sigma`` the weights used."""

    distances: np.ndarray
    weights: np.ndarray
    sigma: float


@runtime_checkable
class Kernel(Protocol):
    """Turns perturbations (and their span embeddings) into regression weights."""

    @property
    def needs_spans(self) -> bool:
        """Whether :meth:`weights` needs span embeddings (the scorer must capture them)."""
        ...

    def weights(
        self, masks: np.ndarray, spans: Sequence[Sequence[PolarSpan | None]] | None
    ) -> LocalityResult:
        """``masks``: ``[N, M]`` bool, row 0 the reference; ``spans``: ``[N][M]`` pooled spans of
        the kept features (``None`` for masked ones), or ``None`` when not captured."""
        ...


_KernelBase = ConfigModel


def _check_masks(masks: np.ndarray) -> np.ndarray:
    m = np.asarray(masks)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise InputError(f"masks must be a non-empty [N, M] matrix, got shape {m.shape}")
    if m.dtype != np.bool_:
        if not np.isin(m, (0, 1)).all():
            raise InputError("masks must be boolean (or 0/1)")
        m = m.astype(bool)
    return m


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"must be a positive number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"must be a positive finite number, got {value!r}")
    return float(value)


class RWMDKernel(_KernelBase):
    """RoPE-LIME's kernel: RWMD between the reference's spans and each perturbation's spans.

    Row ``n``'s distance is :func:`rwmd` of the :func:`polar_distance` matrix between the spans of
    row 0 (the unmasked input) and the spans of the features row ``n`` keeps (``None`` entries
    are skipped). A row that keeps no span has no defined distance (``inf``); it gets the largest
    finite distance among rows ``≥ 1`` (1.0 if there is none), i.e. it is treated as the farthest
    sample. ``sigma="median"`` uses the median of the positive distances of rows ``≥ 1`` (1.0 when
    there is none). Weights are ``exp(−d²/σ²)``; row 0 has distance 0 and weight 1.

    Spans must be :class:`PolarSpan` (capture with ``CaptureSpec(pool=polar_pool)``).
    """

    kind: Literal["rwmd"] = "rwmd"
    beta: float = 1.0
    sigma: float | Literal["median"] = "median"

    @field_validator("beta", mode="before")
    @classmethod
    def _validate_beta(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"must be a number >= 0, got {value!r}")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"must be finite and >= 0, got {value!r}")
        return float(value)

    @field_validator("sigma", mode="before")
    @classmethod
    def _check_sigma(cls, value: Any) -> Any:
        return value if isinstance(value, str) and value == "median" else _positive_number(value)

    @property
    def needs_spans(self) -> bool:
        return True

    def weights(
        self, masks: np.ndarray, spans: Sequence[Sequence[PolarSpan | None]] | None
    ) -> LocalityResult:
        keep = _check_masks(masks)
        n, m = keep.shape
        if spans is None:
            raise InputError("RWMDKernel needs span embeddings: score with CaptureSpec(pool=polar_pool)")
        if len(spans) != n or any(len(row) != m for row in spans):
            raise InputError(f"spans must be [N][M] = [{n}][{m}] to match the masks")
        for row in spans:
            for s in row:
                if s is not None and not isinstance(s, PolarSpan):
                    raise InputError(
                        f"RWMDKernel needs PolarSpan entries, got {type(s).__name__}; "
                        "score with CaptureSpec(pool=polar_pool)"
                    )

        def kept(i: int) -> list[PolarSpan]:
            return [s for s, k in zip(spans[i], keep[i], strict=True) if k and s is not None]

        reference = kept(0)
        if not reference:
            raise InputError("the reference row (row 0) has no span embeddings to compare with")
        distances = np.zeros(n)
        for i in range(1, n):
            distances[i] = rwmd(polar_cost_matrix(reference, kept(i), self.beta))
        return self.from_distances(distances)

    def from_distances(self, distances: np.ndarray) -> LocalityResult:
        """Weights for per-row distances already computed (row 0 first, at distance 0): an infinite
        distance becomes the largest finite one, then the bandwidth and ``exp(−d²/σ²)`` as in
        :meth:`weights`. Refitting a subset of an explanation's rows uses it on their stored
        distances."""
        distances = np.array(distances, dtype=np.float64)
        rest = distances[1:]
        finite = rest[np.isfinite(rest)]
        rest[~np.isfinite(rest)] = finite.max() if finite.size else 1.0
        if self.sigma == "median":
            positive = rest[rest > 0]
            sigma = float(np.median(positive)) if positive.size else 1.0
        else:
            sigma = float(self.sigma)
        return LocalityResult(distances=distances, weights=np.exp(-((distances / sigma) ** 2)), sigma=sigma)


class CosineKernel(_KernelBase):
    """LIME's text kernel on the masks alone: ``d`` = cosine distance between the 0/1 mask row and
    the all-ones row (``1 − sqrt(kept/M)``; 1 for the all-masked row), ``w = exp(−d²/width²)``.

    LIME's ``LimeTextExplainer`` computes ``sqrt(exp(−(100·d)²/25²))``, which is this kernel with
    ``width = 0.25·√2``.
    """

    kind: Literal["cosine"] = "cosine"
    width: float = 0.25

    @field_validator("width", mode="before")
    @classmethod
    def _check_width(cls, value: Any) -> Any:
        return _positive_number(value)

    @property
    def needs_spans(self) -> bool:
        return False

    def weights(
        self, masks: np.ndarray, spans: Sequence[Sequence[PolarSpan | None]] | None = None
    ) -> LocalityResult:
        keep = _check_masks(masks)
        fraction = keep.sum(axis=1) / keep.shape[1]
        distances = 1.0 - np.sqrt(fraction)
        return LocalityResult(
            distances=distances, weights=np.exp(-((distances / self.width) ** 2)), sigma=self.width
        )


class NoKernel(_KernelBase):
    """Every sample weighs 1 (distances reported as 0; ``sigma`` 1.0, unused)."""

    kind: Literal["none"] = "none"

    @property
    def needs_spans(self) -> bool:
        return False

    def weights(
        self, masks: np.ndarray, spans: Sequence[Sequence[PolarSpan | None]] | None = None
    ) -> LocalityResult:
        n = _check_masks(masks).shape[0]
        return LocalityResult(distances=np.zeros(n), weights=np.ones(n), sigma=1.0)


# -- configuration -------------------------------------------------------------------------------

#: Any shipped kernel configuration, discriminated by ``kind`` (JSON round-trip safe).
KernelConfig: TypeAlias = Annotated[RWMDKernel | CosineKernel | NoKernel, Field(discriminator="kind")]

_KERNELS: dict[str, type[RWMDKernel | CosineKernel | NoKernel]] = {
    "rwmd": RWMDKernel,
    "cosine": CosineKernel,
    "none": NoKernel,
}


@overload
def make_kernel(
    spec: str | Mapping[str, Any] | RWMDKernel | CosineKernel | NoKernel,
) -> RWMDKernel | CosineKernel | NoKernel: ...
@overload
def make_kernel(spec: Kernel) -> Kernel: ...
def make_kernel(spec: str | Mapping[str, Any] | Kernel) -> Kernel:
    """A kernel from a name (``"rwmd"``, ``"cosine"``, ``"none"``), a dict with a ``kind`` key
    (``{"kind": "rwmd", "beta": 0.5}``), or a :class:`Kernel` (returned unchanged).

    Raises :class:`~attribsdk.errors.ConfigError` for unknown names and invalid settings.
    """
    result: Kernel = build_strategy(spec, _KERNELS, Kernel, "kernel")
    return result
