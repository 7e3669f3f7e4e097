"""Stage 6: fit a weighted linear model of the surrogate's target on the keep-masks.

The coefficient of feature ``i`` is its attribution: how much keeping it moves the target.
Solvers are frozen pydantic models with a ``kind`` discriminator (see :data:`SolverConfig`); any
object with a :class:`Solver` ``fit`` method can be used in their place.

Shapes: N samples, M features.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol, TypeAlias, overload, runtime_checkable

import numpy as np
import scipy.linalg
from pydantic import Field, field_validator

from ._strategy import ConfigModel, build_strategy
from .errors import InputError

__all__ = [
    "WLS",
    "LinearFit",
    "Solver",
    "SolverConfig",
    "UnderdeterminedFitWarning",
    "fit_answer_spans",
    "make_solver",
    "normalize_attributions",
    "quiet_underdetermined",
]


@dataclass(frozen=True)
class LinearFit:
    """A fitted linear model ``y ≈ Z @ coef + intercept``.

    ``coef``: ``[M]`` float64. ``r2``: weighted coefficient of determination on the samples used.
    ``n_samples``: samples with positive weight (the only ones that enter the fit). ``rank``: how
    many independent feature effects those samples identify (the rank of the centred, weighted
    design; ``None`` when a solver does not say). Below M, other coefficients fit the samples as
    well as ``coef``: :attr:`identified` is ``False``.
    """

    coef: np.ndarray
    intercept: float
    r2: float
    n_samples: int
    rank: int | None = None

    @property
    def identified(self) -> bool:
        """``False`` when the samples leave some feature effects undetermined (``rank < M``)."""
        return self.rank is None or self.rank >= self.coef.shape[0]

    def predict(self, z: np.ndarray) -> np.ndarray:
        """``[N]`` predictions for ``[N, M]`` inputs."""
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != self.coef.shape[0]:
            raise InputError(f"expected inputs of shape [N, {self.coef.shape[0]}], got {z.shape}")
        return np.asarray(z @ self.coef + self.intercept)


class UnderdeterminedFitWarning(UserWarning):
    """The perturbations identify fewer feature effects than there are features (too few samples,
    or a feature kept or masked in every one), and no ridge penalty picks among the fits: the
    coefficients are the minimum-norm solution, one of many that fit the samples equally well."""


_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("quiet_underdetermined", default=False)


@contextlib.contextmanager
def quiet_underdetermined() -> Iterator[None]:
    """Within this block (this task and the tasks and threads it starts) :class:`WLS` does not
    warn about underdetermined fits; :attr:`LinearFit.rank` still records them. Unlike
    :func:`warnings.catch_warnings` it changes nothing for other tasks running meanwhile."""
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


@runtime_checkable
class Solver(Protocol):
    """Fits ``y`` on ``Z`` with per-sample weights ``w``."""

    def fit(self, Z: np.ndarray, y: np.ndarray, w: np.ndarray) -> LinearFit:
        """``Z``: ``[N, M]``, ``y``: ``[N]``, ``w``: ``[N]`` non-negative sample weights."""
        ...


_SolverBase = ConfigModel


def _check_inputs(Z: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z = np.asarray(Z, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise InputError(f"Z must be a non-empty [N, M] matrix, got shape {z.shape}")
    n = z.shape[0]
    yv = np.asarray(y, dtype=np.float64)
    wv = np.asarray(w, dtype=np.float64)
    if yv.shape != (n,):
        raise InputError(f"y must have shape [{n}] to match Z, got {yv.shape}")
    if wv.shape != (n,):
        raise InputError(f"w must have shape [{n}] to match Z, got {wv.shape}")
    if bad := int((~np.isfinite(z)).sum()):
        raise InputError(f"Z contains {bad} NaN or infinite values")
    if bad := int((~np.isfinite(yv)).sum()):
        raise InputError(f"y contains {bad} NaN or infinite values out of {n}")
    if bad := int((~np.isfinite(wv)).sum()):
        raise InputError(f"w contains {bad} NaN or infinite values out of {n}")
    if bad := int((wv < 0).sum()):
        raise InputError(f"w contains {bad} negative weights; sample weights must be >= 0")
    if not (wv > 0).any():
        raise InputError("every sample weight is 0: nothing to fit")
    if n > 1 and int((wv > 0).sum()) < 2:
        raise InputError(
            f"only 1 of {n} samples has a positive weight, so no feature's effect can be fitted "
            "(a locality kernel bandwidth too small for these distances gives every perturbation "
            "weight 0)"
        )
    return z, yv, wv


class WLS(_SolverBase):
    """Weighted least squares with an intercept and optional ridge penalty.

    Minimises ``Σ_n w_n (y_n − z_n·β − b)² + ridge · ‖β‖²``. The intercept ``b`` is not penalised:
    ``Z`` and ``y`` are centred by their weighted means, the penalty enters as ``√ridge · I`` rows
    appended to the ``√w``-scaled system, and :func:`scipy.linalg.lstsq` solves it. ``ridge`` is in
    the units of the weighted sum (as scikit-learn's ``Ridge(alpha)`` with ``sample_weight``).
    Samples with weight 0 are dropped. When the samples identify fewer than M effects
    (``LinearFit.rank < M``: fewer informative samples than features, or a feature that is never
    or always kept) and there is no ridge, ``lstsq`` returns the minimum-norm ``β`` and an
    :class:`UnderdeterminedFitWarning` says so; with a ridge the penalty picks the fit, silently.
    """

    kind: Literal["wls"] = "wls"
    ridge: float = 0.0

    @field_validator("ridge", mode="before")
    @classmethod
    def _check_ridge(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"must be a number >= 0, got {value!r}")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"must be finite and >= 0, got {value!r}")
        return float(value)

    def fit(self, Z: np.ndarray, y: np.ndarray, w: np.ndarray) -> LinearFit:
        """Fit ``Z`` ``[N, M]`` to ``y`` ``[N]`` with weights ``w`` ``[N]`` (finite, >= 0).

        ``r2`` is the weighted R² (1.0 when ``y`` is constant over the used samples, which the
        intercept fits exactly). Raises :class:`~attribsdk.errors.InputError` for bad shapes,
        non-finite values, negative weights, or fewer than two samples with a positive weight.
        """
        z, yv, wv = _check_inputs(Z, y, w)
        used = wv > 0
        z, yv, wv = z[used], yv[used], wv[used]
        m = z.shape[1]
        total = wv.sum()
        z_mean = wv @ z / total
        y_mean = float(wv @ yv / total)
        root = np.sqrt(wv)
        a = (z - z_mean) * root[:, None]
        b = (yv - y_mean) * root
        # One cutoff for "zero" singular values, for the rank and for the solve: a feature kept in
        # every sample centres to ~1e-16 rather than 0, and lstsq's own (smaller) cutoff would
        # divide by it and hand that feature a large coefficient.
        cutoff = np.finfo(np.float64).eps * max(a.shape)
        if self.ridge > 0:
            rank = int(np.linalg.matrix_rank(a))  # the data's own: the penalty rows make it M
            a = np.vstack([a, math.sqrt(self.ridge) * np.eye(m)])
            b = np.concatenate([b, np.zeros(m)])
            solution = scipy.linalg.lstsq(a, b, cond=cutoff, check_finite=False)[0]
        else:
            # lstsq's rank counts singular values above the same cutoff as matrix_rank's default
            solution, _, rank, _ = scipy.linalg.lstsq(a, b, cond=cutoff, check_finite=False)
            if rank < m and not _QUIET.get():
                warnings.warn(
                    f"{len(yv)} weighted samples identify {rank} of {m} feature effects: the "
                    "attributions are the minimum-norm fit, one of many that fit equally well (draw "
                    "more samples, or set a ridge penalty)",
                    UnderdeterminedFitWarning,
                    stacklevel=2,
                )
        coef = np.asarray(solution, dtype=np.float64)
        rank = int(rank)
        intercept = y_mean - float(z_mean @ coef)
        residual = yv - z @ coef - intercept
        ss_res = float(wv @ residual**2)
        ss_tot = float(wv @ (yv - y_mean) ** 2)
        r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 and np.ptp(yv) > 0 else 1.0
        return LinearFit(coef=coef, intercept=intercept, r2=r2, n_samples=int(used.sum()), rank=rank)


def normalize_attributions(coef: np.ndarray) -> np.ndarray:
    """Attribution shares ``a_i = |β_i| / Σ_j |β_j|`` (``[M]`` float64, summing to 1).

    All-zero coefficients carry no attribution: the result is all zeros (not NaN).
    """
    c = np.asarray(coef, dtype=np.float64)
    if c.ndim != 1:
        raise InputError(f"coef must be 1-D, got shape {c.shape}")
    if not np.isfinite(c).all():
        raise InputError("coef contains NaN or infinite values")
    magnitude = np.abs(c)
    total = magnitude.sum()
    return magnitude / total if total > 0 else np.zeros_like(magnitude)


def fit_answer_spans(
    masks: np.ndarray,
    answer_logprobs: np.ndarray,
    weights: np.ndarray,
    token_spans: list[tuple[int, int]],
    solver: Solver,
) -> list[LinearFit | None]:
    """One weighted fit per span of the answer, all on the same perturbations.

    ContextCite's observation: the surrogate scores every answer token under every perturbation,
    so one set of N scored prompts explains any span of the answer. For span ``(t0, t1)`` (answer
    tokens ``t0 <= t < t1``) the regressed value of sample n is the mean change of those tokens'
    log-probabilities against the reference (row 0)::

        y_n = mean_t (log p_n(a_t) - log p_0(a_t))      (nats per token; 0 for the reference)

    i.e. minus their ΔNLL, so a positive coefficient means keeping the feature keeps that part of
    the answer likely (it supports it), as for the whole-answer fit.

    Args:
        masks: ``[N, M]`` keep-masks (row 0 the reference).
        answer_logprobs: ``[N, T]`` log-probabilities of the answer tokens (nats).
        weights: ``[N]`` sample weights (the locality kernel's).
        token_spans: half-open token ranges, each within ``[0, T]``.
        solver: the solver of the whole-answer fit.

    Returns one :class:`LinearFit` per span, ``None`` for an empty span.
    """
    lp = np.asarray(answer_logprobs, dtype=np.float64)
    z = np.asarray(masks, dtype=np.float64)
    if lp.ndim != 2 or lp.shape[0] != z.shape[0]:
        raise InputError(f"answer_logprobs must be [N, T] with N = {z.shape[0]}, got shape {lp.shape}")
    delta = lp - lp[0]
    fits: list[LinearFit | None] = []
    with quiet_underdetermined():  # one design for every span: the whole-answer fit has warned
        for t0, t1 in token_spans:
            if not 0 <= t0 <= t1 <= lp.shape[1]:
                raise InputError(f"token span ({t0}, {t1}) is outside the answer's {lp.shape[1]} tokens")
            fits.append(solver.fit(z, delta[:, t0:t1].mean(axis=1), weights) if t1 > t0 else None)
    return fits


# -- configuration -------------------------------------------------------------------------------

#: Any shipped solver configuration, discriminated by ``kind`` (JSON round-trip safe).
SolverConfig: TypeAlias = Annotated[WLS, Field(discriminator="kind")]

_SOLVERS: dict[str, type[WLS]] = {"wls": WLS}


@overload
def make_solver(spec: str | Mapping[str, Any] | WLS) -> WLS: ...
@overload
def make_solver(spec: Solver) -> Solver: ...
def make_solver(spec: str | Mapping[str, Any] | Solver) -> Solver:
    """A solver from a name (``"wls"``), a dict with a ``kind`` key (``{"kind": "wls",
    "ridge": 1.0}``), or a :class:`Solver` (returned unchanged).

    Raises :class:`~attribsdk.errors.ConfigError` for unknown names and invalid settings.
    """
    result: Solver = build_strategy(spec, _SOLVERS, Solver, "solver")
    return result
