"""Stage 3: choose which features each perturbation keeps.

A sampler returns a boolean mask matrix ``[N, M]`` (``True`` = feature kept). Row 0 is always the
unmasked input (all ``True``): the scorer measures every other row relative to it. Samplers are
deterministic given the :class:`numpy.random.Generator` they are handed.

Shipped samplers are frozen pydantic models with a ``kind`` discriminator so a configuration can be
stored inside a result and read back (see :data:`SamplerConfig`):

* :class:`SparseK` — every perturbation touches exactly ``k`` features, ``N = ceil(c · ln k)``
  perturbations, features touched equally often (the RoPE-LIME default).
* :class:`LOO` — leave one out: one perturbation per feature.
* :class:`Uniform` — LIME-style: each feature kept independently with probability ``p``.

Any object with the :class:`Sampler` methods can be used in their place.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Protocol, TypeAlias, overload, runtime_checkable

import numpy as np
from pydantic import Field, field_validator

from ._strategy import ConfigModel, build_strategy
from .errors import ConfigError, InputError

__all__ = [
    "DEFAULT_SCHEDULE",
    "LOO",
    "CRule",
    "KRule",
    "Sampler",
    "SamplerConfig",
    "SparseK",
    "Uniform",
    "distinct_rows",
    "identified_effects",
    "make_sampler",
]

#: ``k`` relative to the number of features M: ``k = round(m · √M)`` with m = 1, 2, 4.
KRule = Literal["sqrt", "2sqrt", "4sqrt"]
#: ``c`` relative to M (and to the resolved integer ``k``).
CRule = Literal["min(M,16k)", "M", "min(M,8k)", "0.5M", "0.25M", "min(M,4k)"]

_K_MULTIPLIER: dict[str, float] = {"sqrt": 1.0, "2sqrt": 2.0, "4sqrt": 4.0}
_C_RULES: dict[str, Callable[[int, int], float]] = {
    "min(M,16k)": lambda m, k: min(m, 16 * k),
    "M": lambda m, k: m,
    "min(M,8k)": lambda m, k: min(m, 8 * k),
    "0.5M": lambda m, k: 0.5 * m,
    "0.25M": lambda m, k: 0.25 * m,
    "min(M,4k)": lambda m, k: min(m, 4 * k),
}

#: Default ``(k rule, c rule)`` of :class:`SparseK` by number of features M, as inclusive
#: ``(lo, hi)`` buckets (``hi = None``: no upper bound). M = 1 uses the first bucket.
#: The RoPE-LIME paper's per-M table could not be consulted, so these were chosen by measurement on
#: the ``tune`` split of the HotpotQA dev data (benchmarks/choose_defaults.py --sweep kc-small):
#: k = 2√M, c = M had the best mean AUROC/IoU overall (0.746 / 0.570 on 10 examples with M ≤ 11;
#: k = √M: 0.628 / 0.440, k = 4√M: 0.644 / 0.507; c = 0.5M was worse for every k). The sample is
#: too small to choose per bucket, so one rule serves all buckets.
DEFAULT_SCHEDULE: dict[tuple[int, int | None], tuple[KRule, CRule]] = {
    (2, 3): ("2sqrt", "M"),
    (4, 5): ("2sqrt", "M"),
    (6, 8): ("2sqrt", "M"),
    (9, 11): ("2sqrt", "M"),
    (12, None): ("2sqrt", "M"),
}

#: Draws of a SparseK row (fresh tie-breaking) before trading features with an earlier row.
_DUPLICATE_RETRIES = 8
#: Attempts at such a trade before a duplicate row is accepted.
_SWAP_TRIES = 64
#: Sparse-K draws tried for a design that identifies every effect (see SparseK.sample).
_IDENTIFY_RETRIES = 16
#: Rounds of batch draws :class:`Uniform` makes before giving up on unique rows.
_UNIFORM_ROUNDS = 64


@runtime_checkable
class Sampler(Protocol):
    """Chooses the perturbations of an input with ``n_features`` features."""

    def sample(self, n_features: int, rng: np.random.Generator) -> np.ndarray:
        """Boolean ``[N, n_features]`` masks, ``True`` = kept; row 0 is all ``True``."""
        ...

    def n_rows(self, n_features: int) -> int:
        """``N``, the number of rows :meth:`sample` returns (row 0 included), for budgeting."""
        ...


# -- shared config plumbing -------------------------------------------------------------------------


_SamplerBase = ConfigModel


def _check_n_features(n_features: int) -> int:
    if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)):
        raise InputError(f"n_features must be an integer, got {type(n_features).__name__}")
    if n_features < 1:
        raise InputError(f"n_features must be at least 1, got {n_features}")
    return int(n_features)


def _positive_int(value: Any) -> Any:
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"must be a positive integer, got {value!r}")
    return int(value)


# -- SparseK -------------------------------------------------------------------------------------


class SparseK(_SamplerBase):
    """Each perturbation touches exactly ``k`` features; ``N = ceil(c · ln k)`` perturbations.

    * ``mode="mask"`` masks the ``k`` touched features and keeps the rest; ``mode="keep"`` keeps the
      ``k`` touched features and masks the rest.
    * ``k`` is an integer or a rule relative to the number of features M: ``"sqrt"``, ``"2sqrt"``,
      ``"4sqrt"`` give ``round(m · √M)`` (rounded half up) for m = 1, 2, 4. The result, integer or
      rule, is clamped to ``[1, M − 1]`` so a perturbation never touches every feature. With M = 1
      the only perturbation masks the single feature, whatever the mode.
    * ``c`` is a positive number or a rule relative to M and the clamped ``k`` (``"M"``, ``"0.5M"``,
      ``"min(M,16k)"``...). ``N = max(1, ceil(c · ln k))``; ``ln 1 = 0``, so when the clamped ``k``
      is 1 the count is ``N = max(1, ceil(c))`` instead.
    * ``n_samples`` fixes ``N`` (a budget), overriding ``c``.
    * ``k = c = None`` take the rules of :data:`DEFAULT_SCHEDULE` for the input's M.

    Balanced: each perturbation touches the features used least so far (ties broken at random), so
    every feature is touched ``floor(N·k/M)`` or ``ceil(N·k/M)`` times. A row equal to an earlier
    one is redrawn with new tie-breaking a few times, then made new by trading one feature with an
    earlier row (which leaves every use count as it was); duplicates remain only once all
    ``C(M, k)`` distinct rows are used, or when a bounded search finds no trade. Because a trade
    rewrites an earlier row, a draw of more rows from the same seed need not begin with the rows
    of a smaller draw. When ``N >= M`` and a draw does not identify every feature's effect
    (:func:`identified_effects` < M: rare, about 1 seed in 11 at M = 14 and none of 25 seeds at
    M = 17-80 under the default schedule), the design is drawn again, up to 16 times.
    """

    kind: Literal["sparse_k"] = "sparse_k"
    k: int | KRule | None = None
    c: float | CRule | None = None
    #: ``"mask"``: each perturbation masks k features; ``"keep"``: it keeps k. Measured on the tune
    #: split (15 examples, M ≤ 11): mask 0.762 / 0.571 mean AUROC / IoU, keep 0.743 / 0.593 — a tie
    #: within noise; ``"mask"`` has the higher AUROC and is the default.
    mode: Literal["mask", "keep"] = "mask"
    #: Number of perturbations (row 0 excluded); ``None``: from ``c``.
    n_samples: int | None = None

    @field_validator("k", mode="before")
    @classmethod
    def _check_k(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value in _K_MULTIPLIER):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"must be a positive integer or one of {sorted(_K_MULTIPLIER)}, got {value!r}")
        return int(value)

    @field_validator("c", mode="before")
    @classmethod
    def _check_c(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value in _C_RULES):
            return value
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ValueError(f"must be a positive finite number or one of {list(_C_RULES)}, got {value!r}")
        return float(value)

    @field_validator("n_samples", mode="before")
    @classmethod
    def _check_n(cls, value: Any) -> Any:
        return _positive_int(value)

    def rules(self, n_features: int) -> tuple[int | KRule, float | CRule]:
        """The ``(k, c)`` used for ``n_features`` features: the fields, or the schedule's rules."""
        m = _check_n_features(n_features)
        k_rule, c_rule = _schedule_for(m)
        return (self.k if self.k is not None else k_rule, self.c if self.c is not None else c_rule)

    def resolve(self, n_features: int) -> tuple[int, float, int]:
        """``(k_eff, c_value, N)`` for ``n_features`` features; ``N`` excludes row 0."""
        m = _check_n_features(n_features)
        k, c = self.rules(m)
        if m == 1:
            k_eff = 1
        else:
            raw = math.floor(_K_MULTIPLIER[k] * math.sqrt(m) + 0.5) if isinstance(k, str) else k
            k_eff = min(max(int(raw), 1), m - 1)
        c_value = float(_C_RULES[c](m, k_eff)) if isinstance(c, str) else float(c)
        if self.n_samples is not None:
            n = self.n_samples
        else:
            scale = math.log(k_eff) if k_eff > 1 else 1.0
            # The tolerance keeps float noise (3.0000000001) from adding a row.
            n = max(1, math.ceil(c_value * scale - 1e-9))
        return k_eff, c_value, n

    def n_rows(self, n_features: int) -> int:
        return self.resolve(n_features)[2] + 1

    def sample(self, n_features: int, rng: np.random.Generator) -> np.ndarray:
        m = _check_n_features(n_features)
        k, _, n = self.resolve(m)
        masks = np.ones((n + 1, m), dtype=bool)
        if m == 1:
            masks[1:, 0] = False
            return masks
        for _ in range(_IDENTIFY_RETRIES):
            touched = _balanced_rows(m, k, n, rng)
            masks[1:] = ~touched if self.mode == "mask" else touched
            # With N >= M rows a design can identify every feature's effect; a draw that does not
            # (the rows' differences from row 0 span fewer than M dimensions: about 1 seed in 11
            # at M = 14) is drawn again. Every other draw is returned as first drawn.
            if n < m or identified_effects(masks) == m:
                break
        return masks


def identified_effects(masks: np.ndarray) -> int:
    """How many feature effects a keep-mask design ``[N, M]`` (row 0 the reference) identifies in a
    linear fit with an intercept: the rank of the rows' differences from row 0."""
    z = np.asarray(masks, dtype=np.float64)
    return int(np.linalg.matrix_rank(z[1:] - z[0])) if len(z) > 1 else 0


def _balanced_rows(m: int, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, m]`` rows of ``k`` touched features each, least-used features first, distinct where
    possible (see :class:`SparseK`)."""
    touched = np.zeros((n, m), dtype=bool)  # touched[i]: features perturbation i touches
    counts = np.zeros(m, dtype=np.int64)
    seen: dict[bytes, int] = {}
    n_distinct = math.comb(m, k)
    for i in range(n):
        for _ in range(_DUPLICATE_RETRIES):
            # Least-used features first; the random key breaks ties among equal counts.
            row = np.zeros(m, dtype=bool)
            row[np.lexsort((rng.random(m), counts))[:k]] = True
            if row.tobytes() not in seen:
                break
        else:
            if len(seen) < n_distinct:
                row = _swap_out_duplicate(row, touched[:i], counts, seen, rng)
        touched[i] = row
        counts += row
        seen[row.tobytes()] = seen.get(row.tobytes(), 0) + 1
    return touched


def _swap_out_duplicate(
    row: np.ndarray,
    earlier: np.ndarray,
    counts: np.ndarray,
    seen: dict[bytes, int],
    rng: np.random.Generator,
) -> np.ndarray:
    """Make ``row`` new by trading one feature with an earlier row: both keep k features and,
    once ``row`` is added, every feature has the use count it would have had, so the balance is
    intact. Updates ``earlier``, ``counts`` (of ``earlier``) and ``seen`` in place; returns ``row``
    unchanged when no trade is found within a bounded number of tries."""
    for _ in range(_SWAP_TRIES if len(earlier) else 0):
        j = int(rng.integers(len(earlier)))
        give = np.flatnonzero(row & ~earlier[j])  # leaves row, joins earlier[j]
        take = np.flatnonzero(earlier[j] & ~row)  # leaves earlier[j], joins row
        if not give.size or not take.size:
            continue
        a, b = int(rng.choice(give)), int(rng.choice(take))
        new_row, new_other = row.copy(), earlier[j].copy()
        new_row[a], new_row[b] = False, True
        new_other[b], new_other[a] = False, True
        old_key, row_key, other_key = earlier[j].tobytes(), new_row.tobytes(), new_other.tobytes()
        if row_key in seen or other_key in seen:
            continue
        seen[old_key] -= 1
        if not seen[old_key]:
            del seen[old_key]
        seen[other_key] = seen.get(other_key, 0) + 1
        earlier[j] = new_other
        counts[a] += 1
        counts[b] -= 1
        return new_row
    return row


def _schedule_for(m: int) -> tuple[KRule, CRule]:
    m = max(m, min(lo for lo, _ in DEFAULT_SCHEDULE))  # M = 1 uses the first bucket
    for (lo, hi), rules in DEFAULT_SCHEDULE.items():
        if lo <= m and (hi is None or m <= hi):
            return rules
    raise ConfigError(f"DEFAULT_SCHEDULE has no bucket for M = {m}")


# -- LOO -----------------------------------------------------------------------------------------


class LOO(_SamplerBase):
    """Leave one out: row ``i + 1`` masks feature ``i`` only (``M + 1`` rows)."""

    kind: Literal["loo"] = "loo"

    def n_rows(self, n_features: int) -> int:
        return _check_n_features(n_features) + 1

    def sample(self, n_features: int, rng: np.random.Generator) -> np.ndarray:
        m = _check_n_features(n_features)
        return np.vstack([np.ones((1, m), dtype=bool), ~np.eye(m, dtype=bool)])


# -- Uniform -------------------------------------------------------------------------------------


class Uniform(_SamplerBase):
    """LIME-style sampling: every feature is kept independently with probability ``p``.

    ``n_samples`` perturbations follow row 0. ``reject_all_masked`` redraws rows that mask every
    feature, i.e. rows follow the distribution conditioned on keeping at least one feature
    (ignored when M = 1, where that row is the only perturbation). ``unique`` redraws rows
    equal to an earlier row or to row 0, best effort: once every distinct row is used, or after
    a bounded number of draws, duplicates are accepted.
    """

    kind: Literal["uniform"] = "uniform"
    p: float = 0.5
    n_samples: int = 64
    reject_all_masked: bool = True
    unique: bool = True

    @field_validator("p", mode="before")
    @classmethod
    def _check_p(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"must be a number in (0, 1), got {value!r}")
        if not 0.0 < float(value) < 1.0:
            raise ValueError(f"must be in the open interval (0, 1), got {value!r}")
        return float(value)

    @field_validator("n_samples", mode="before")
    @classmethod
    def _check_n(cls, value: Any) -> Any:
        return _positive_int(value)

    def n_rows(self, n_features: int) -> int:
        _check_n_features(n_features)
        return self.n_samples + 1

    def sample(self, n_features: int, rng: np.random.Generator) -> np.ndarray:
        m = _check_n_features(n_features)
        n = self.n_samples
        reject = self.reject_all_masked and m >= 2
        masks = np.ones((n + 1, m), dtype=bool)
        filled = 0
        if self.unique:
            # Distinct rows other than row 0 (and other than the all-masked row when rejected).
            space = 2**m - 1 - int(reject)
            seen = {masks[0].tobytes()}
            for _ in range(_UNIFORM_ROUNDS):
                if filled == n or len(seen) - 1 >= space:
                    break
                for row in self._draw(rng, 2 * (n - filled) + 8, m, reject):
                    key = row.tobytes()
                    if key in seen:
                        continue
                    seen.add(key)
                    filled += 1
                    masks[filled] = row
                    if filled == n:
                        break
        while filled < n:
            batch = self._draw(rng, n - filled, m, reject)
            masks[filled + 1 : filled + 1 + len(batch)] = batch
            filled += len(batch)
        return masks

    def _draw(self, rng: np.random.Generator, size: int, m: int, reject: bool) -> np.ndarray:
        rows = rng.random((size, m)) < self.p
        empty = ~rows.any(axis=1) if reject else np.zeros(size, dtype=bool)
        n_empty = int(empty.sum())
        if n_empty:
            # Redraw all-masked rows from the distribution conditioned on keeping >= 1 feature,
            # exactly and without a rejection loop: the first kept feature j has
            # P(j) ∝ (1 - p)^j for j < m, the features after it are kept with probability p.
            log_q = math.log1p(-self.p)
            mass = -math.expm1(m * log_q)  # 1 - (1 - p)^m
            u = rng.random(n_empty)
            first = np.clip(np.floor(np.log1p(-u * mass) / log_q), 0, m - 1).astype(np.int64)
            fresh = rng.random((n_empty, m)) < self.p
            cols = np.arange(m)
            fresh[cols[None, :] < first[:, None]] = False
            fresh[np.arange(n_empty), first] = True
            rows[empty] = fresh
        return rows


# -- configuration -------------------------------------------------------------------------------

#: Any shipped sampler configuration, discriminated by ``kind`` (JSON round-trip safe).
SamplerConfig: TypeAlias = Annotated[SparseK | LOO | Uniform, Field(discriminator="kind")]

_SAMPLERS: dict[str, type[SparseK | LOO | Uniform]] = {"sparse_k": SparseK, "loo": LOO, "uniform": Uniform}


@overload
def make_sampler(spec: str | Mapping[str, Any] | SparseK | LOO | Uniform) -> SparseK | LOO | Uniform: ...
@overload
def make_sampler(spec: Sampler) -> Sampler: ...
def make_sampler(spec: str | Mapping[str, Any] | Sampler) -> Sampler:
    """A sampler from a name (``"sparse_k"``, ``"loo"``, ``"uniform"``), a dict with a ``kind`` key
    (``{"kind": "uniform", "p": 0.3}``), or a :class:`Sampler` (returned unchanged).

    Raises :class:`~attribsdk.errors.ConfigError` for unknown names and invalid settings.
    """
    result: Sampler = build_strategy(spec, _SAMPLERS, Sampler, "sampler")
    return result


def distinct_rows(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of ``masks`` in order of first appearance (row 0 stays first) and, for
    every row, the index of its distinct copy: score ``distinct`` once, then ``scores[copies]``
    gives every row its scores."""
    first: dict[bytes, int] = {}
    order: list[int] = []
    copies = np.empty(len(masks), dtype=np.int64)
    for i, row in enumerate(masks):
        j = first.setdefault(np.ascontiguousarray(row).tobytes(), len(order))
        if j == len(order):
            order.append(i)
        copies[i] = j
    return masks[order], copies
