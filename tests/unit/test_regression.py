from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from pydantic import TypeAdapter

from attribsdk.errors import ConfigError, InputError
from attribsdk.regression import (
    WLS,
    LinearFit,
    Solver,
    SolverConfig,
    UnderdeterminedFitWarning,
    make_solver,
    normalize_attributions,
    quiet_underdetermined,
)

TRUE_COEF = np.array([1.5, -2.0, 0.0, 0.75, 3.0, -0.25])
TRUE_INTERCEPT = 0.4


def masks_data(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random 0/1 masks (as the samplers give), a linear target and random positive weights."""
    rng = np.random.default_rng(seed)
    z = (rng.random((n, TRUE_COEF.size)) < 0.6).astype(np.float64)
    y = z @ TRUE_COEF + TRUE_INTERCEPT
    w = rng.uniform(0.05, 1.0, n)
    return z, y, w


def test_recovers_noiseless_coefficients_exactly() -> None:
    z, y, w = masks_data()
    fit = WLS().fit(z, y, w)
    assert isinstance(fit, LinearFit)
    np.testing.assert_allclose(fit.coef, TRUE_COEF, atol=1e-10)
    assert fit.intercept == pytest.approx(TRUE_INTERCEPT, abs=1e-10)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.n_samples == 60
    assert fit.coef.dtype == np.float64
    np.testing.assert_allclose(fit.predict(z), y, atol=1e-10)


def test_recovers_coefficients_with_noise() -> None:
    z, y, w = masks_data(n=3000, seed=1)
    y = y + np.random.default_rng(2).normal(scale=0.1, size=y.size)
    fit = WLS().fit(z, y, w)
    np.testing.assert_allclose(fit.coef, TRUE_COEF, atol=0.03)
    assert fit.intercept == pytest.approx(TRUE_INTERCEPT, abs=0.03)
    assert 0.95 < fit.r2 < 1.0


def test_r2_is_the_weighted_coefficient_of_determination() -> None:
    z, y, w = masks_data(n=40, seed=3)
    y = y + np.random.default_rng(4).normal(scale=0.5, size=y.size)
    fit = WLS().fit(z, y, w)
    resid = y - fit.predict(z)
    y_mean = np.average(y, weights=w)
    expected = 1 - np.sum(w * resid**2) / np.sum(w * (y - y_mean) ** 2)
    assert fit.r2 == pytest.approx(expected)


def test_matches_normal_equations() -> None:
    z, y, w = masks_data(n=30, seed=5)
    y = y + np.random.default_rng(6).normal(size=y.size)
    fit = WLS(ridge=0.7).fit(z, y, w)
    x = np.hstack([z, np.ones((z.shape[0], 1))])
    penalty = np.diag([0.7] * z.shape[1] + [0.0])  # intercept unpenalised
    beta = np.linalg.solve(x.T @ (w[:, None] * x) + penalty, x.T @ (w * y))
    np.testing.assert_allclose(fit.coef, beta[:-1], atol=1e-10)
    assert fit.intercept == pytest.approx(beta[-1], abs=1e-10)


def test_ridge_shrinks_coefficient_norm_monotonically() -> None:
    z, y, w = masks_data(seed=7)
    norms = [np.linalg.norm(WLS(ridge=r).fit(z, y, w).coef) for r in (0.0, 0.01, 0.1, 1.0, 10.0, 100.0)]
    assert all(a > b for a, b in itertools.pairwise(norms))


def test_intercept_is_not_penalised() -> None:
    z, y, w = masks_data(seed=8)
    huge = WLS(ridge=1e12).fit(z, y, w)
    np.testing.assert_allclose(huge.coef, 0.0, atol=1e-8)
    assert huge.intercept == pytest.approx(np.average(y, weights=w))
    # Shifting y moves only the intercept, whatever the penalty.
    base, shifted = WLS(ridge=5.0).fit(z, y, w), WLS(ridge=5.0).fit(z, y + 100.0, w)
    np.testing.assert_allclose(shifted.coef, base.coef, atol=1e-9)
    assert shifted.intercept == pytest.approx(base.intercept + 100.0)


def test_down_weighted_outlier_does_not_move_the_fit() -> None:
    z, y, w = masks_data(seed=9)
    z = np.vstack([z, np.ones(TRUE_COEF.size)])
    y = np.append(y, 1e3)
    heavy = WLS().fit(z, y, np.append(w, 1.0))
    light = WLS().fit(z, y, np.append(w, 1e-12))
    assert np.abs(heavy.coef - TRUE_COEF).max() > 1.0  # the outlier matters at full weight
    np.testing.assert_allclose(light.coef, TRUE_COEF, atol=1e-6)


def test_zero_weight_rows_are_ignored() -> None:
    z, y, w = masks_data(seed=10)
    y = y + np.random.default_rng(11).normal(size=y.size)
    w[::3] = 0.0
    y_garbage = y.copy()
    y_garbage[::3] = 1e6  # values of zero-weight rows must not matter
    full = WLS().fit(z, y_garbage, w)
    subset = WLS().fit(z[w > 0], y[w > 0], w[w > 0])
    np.testing.assert_allclose(full.coef, subset.coef, atol=1e-10)
    assert full.intercept == pytest.approx(subset.intercept)
    assert full.r2 == pytest.approx(subset.r2)
    assert full.n_samples == int((w > 0).sum())


def test_underdetermined_gives_minimum_norm_interpolant() -> None:
    rng = np.random.default_rng(12)
    z = rng.random((4, 6))
    y = rng.normal(size=4)
    w = rng.uniform(0.5, 1.0, 4)
    with pytest.warns(UnderdeterminedFitWarning, match="4 weighted samples identify 3 of 6 feature effects"):
        fit = WLS().fit(z, y, w)
    assert fit.rank == 3 and not fit.identified  # 4 centred rows span 3 dimensions
    np.testing.assert_allclose(fit.predict(z), y, atol=1e-10)
    # Minimum norm among all exact fits of the weighted-centred system.
    zc = z - np.average(z, axis=0, weights=w)
    yc = y - np.average(y, weights=w)
    root = np.sqrt(w)
    np.testing.assert_allclose(fit.coef, np.linalg.pinv(zc * root[:, None]) @ (yc * root), atol=1e-10)


def test_rank_counts_the_identified_effects() -> None:
    z, y, w = masks_data(seed=21)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a full-rank design warns nothing
        full = WLS().fit(z, y, w)
    assert full.rank == TRUE_COEF.size and full.identified
    # A feature kept in every sample has no identifiable effect (its column centres to zero),
    # however many samples there are.
    kept = z.copy()
    kept[:, 2] = 1.0
    with pytest.warns(UnderdeterminedFitWarning, match="identify 5 of 6"):
        fit = WLS().fit(kept, y, w)
    assert fit.rank == 5 and abs(fit.coef[2]) < 1e-12
    # With a noisy target and weights whose mean of that column is not exactly 1, the column
    # centres to ~1e-16: the solve must treat it as 0, as the rank does, not divide by it.
    rng = np.random.default_rng(4)
    for _ in range(50):
        n: int = z.shape[0]
        noisy = rng.normal(size=n)
        w_any = rng.uniform(0.05, 1.0, size=n)
        with quiet_underdetermined():
            assert abs(WLS().fit(kept, noisy, w_any).coef[2]) < 1e-12
    # Zero-weight rows do not identify anything: only the two weighted rows count.
    w_two = np.zeros_like(w)
    w_two[:2] = 1.0
    with pytest.warns(UnderdeterminedFitWarning, match="2 weighted samples identify 1 of 6"):
        assert WLS().fit(z, y, w_two).rank == 1
    # A ridge penalty picks the fit: no warning, the data's rank still reported.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ridged = WLS(ridge=1.0).fit(kept, y, w)
    assert ridged.rank == 5 and not ridged.identified
    # Quiet within the block (also for the tasks it starts), loud again after it.
    with quiet_underdetermined(), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert WLS().fit(kept, y, w).rank == 5
    with pytest.warns(UnderdeterminedFitWarning):
        WLS().fit(kept, y, w)
    # A solver that does not report a rank counts as identified.
    assert LinearFit(coef=np.zeros(3), intercept=0.0, r2=1.0, n_samples=4).identified


def test_constant_target() -> None:
    z, _, w = masks_data(seed=13)
    fit = WLS().fit(z, np.full(z.shape[0], 2.5), w)
    np.testing.assert_allclose(fit.coef, 0.0, atol=1e-12)
    assert fit.intercept == pytest.approx(2.5)
    assert fit.r2 == 1.0


def test_bad_inputs() -> None:
    z, y, w = masks_data(n=10)
    solver = WLS()
    y_nan = y.copy()
    y_nan[[1, 4]] = [np.nan, np.inf]
    with pytest.raises(InputError, match="y contains 2 NaN or infinite values"):
        solver.fit(z, y_nan, w)
    with pytest.raises(InputError, match="1 negative"):
        solver.fit(z, y, np.append(w[:-1], -0.5))
    with pytest.raises(InputError, match="every sample weight is 0"):
        solver.fit(z, y, np.zeros_like(w))
    only_reference = np.zeros_like(w)
    only_reference[0] = 1.0  # every perturbation's weight underflowed: not a "perfect" all-zero fit
    with pytest.raises(InputError, match="only 1 of 10 samples has a positive weight"):
        solver.fit(z, y, only_reference)
    with pytest.raises(InputError, match="w contains 1 NaN"):
        solver.fit(z, y, np.append(w[:-1], np.nan))
    with pytest.raises(InputError, match="Z contains"):
        solver.fit(np.where(z > 0, np.nan, 0.0), y, w)
    with pytest.raises(InputError, match=r"y must have shape \[10\]"):
        solver.fit(z, y[:-1], w)
    with pytest.raises(InputError, match=r"w must have shape \[10\]"):
        solver.fit(z, y, w[:, None])
    with pytest.raises(InputError, match="non-empty"):
        solver.fit(z[:, :0], y, w)
    with pytest.raises(InputError, match="shape"):
        solver.fit(z[0], y, w)
    fit = solver.fit(z, y, w)
    with pytest.raises(InputError, match=r"\[N, 6\]"):
        fit.predict(z[:, :3])


@pytest.mark.parametrize("ridge", [-1.0, float("nan"), float("inf"), "big", True])
def test_bad_ridge(ridge: object) -> None:
    with pytest.raises(ConfigError, match=r"WLS\.ridge"):
        WLS(ridge=ridge)  # type: ignore[arg-type]


def test_normalize_attributions() -> None:
    a = normalize_attributions(np.array([2.0, -1.0, 0.0, 1.0]))
    np.testing.assert_allclose(a, [0.5, 0.25, 0.0, 0.25])
    assert a.sum() == pytest.approx(1.0)
    z, y, w = masks_data()
    assert normalize_attributions(WLS().fit(z, y, w).coef).sum() == pytest.approx(1.0)
    zeros = normalize_attributions(np.zeros(3))
    np.testing.assert_array_equal(zeros, [0.0, 0.0, 0.0])
    with pytest.raises(InputError):
        normalize_attributions(np.array([1.0, np.nan]))
    with pytest.raises(InputError):
        normalize_attributions(np.ones((2, 2)))


def test_json_round_trip_and_factory() -> None:
    adapter: TypeAdapter[WLS] = TypeAdapter(SolverConfig)
    solver = WLS(ridge=0.5)
    assert adapter.validate_json(adapter.dump_json(solver)) == solver
    assert make_solver("wls") == WLS()
    assert make_solver("WLS") == WLS()
    assert make_solver({"kind": "wls", "ridge": 2}) == WLS(ridge=2.0)
    assert make_solver(solver) is solver
    assert isinstance(solver, Solver)

    class Mean:
        def fit(self, Z: np.ndarray, y: np.ndarray, w: np.ndarray) -> LinearFit:
            return LinearFit(np.zeros(Z.shape[1]), float(np.average(y, weights=w)), 0.0, len(y))

    mean = Mean()
    assert make_solver(mean) is mean
    with pytest.raises(ConfigError, match="known solvers: wls"):
        make_solver("lasso")
    with pytest.raises(ConfigError, match="'kind'"):
        make_solver({"ridge": 1.0})
    with pytest.raises(ConfigError, match=r"WLS\.ridge"):
        make_solver({"kind": "wls", "ridge": -1})
    with pytest.raises(ConfigError, match=r"WLS\.alpha"):
        make_solver({"kind": "wls", "alpha": 1})
