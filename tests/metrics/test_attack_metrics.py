"""Attack outcome metrics against hand-computed values and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from advface.metrics.attack import (
    attack_success_rate,
    robust_accuracy,
    robust_accuracy_curve,
    summarise,
    wilson_interval,
)


def test_rates_hand_computed() -> None:
    assert attack_success_rate([True, False, True, True]) == 0.75
    assert attack_success_rate(np.array([1, 0, 0, 0])) == 0.25
    assert robust_accuracy([False, False, True]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("fn", [attack_success_rate, robust_accuracy])
def test_rates_reject_bad_input(fn) -> None:
    with pytest.raises(ValueError, match="empty"):
        fn([])
    with pytest.raises(ValueError, match="boolean"):
        fn([0, 2])
    with pytest.raises(ValueError, match="1-D"):
        fn([[True]])


def test_robust_accuracy_curve_hand_computed() -> None:
    min_eps = np.array([0.01, np.inf, 0.03, np.nan])
    clean_correct = np.array([True, True, True, False])
    grid = [0.0, 0.01, 0.02, 0.03, 1.0]
    # at eps == min_eps the image is fooled; the clean mistake never counts
    np.testing.assert_allclose(
        robust_accuracy_curve(min_eps, grid, clean_correct), [0.75, 0.5, 0.5, 0.25, 0.25]
    )


def test_robust_accuracy_curve_equals_pointwise_robust_accuracy() -> None:
    rng = np.random.default_rng(0)
    n = 200
    clean_correct = rng.random(n) < 0.8
    min_eps = np.where(rng.random(n) < 0.2, np.inf, rng.uniform(0, 0.1, n))
    grid = np.linspace(0, 0.12, 13)
    curve = robust_accuracy_curve(min_eps, grid, clean_correct)
    for eps, value in zip(grid, curve, strict=True):
        assert value == robust_accuracy(clean_correct & (min_eps > eps))
    assert curve[0] == pytest.approx(clean_correct.mean())
    assert np.all(np.diff(curve) <= 0)


def test_robust_accuracy_curve_errors() -> None:
    with pytest.raises(ValueError, match="NaN"):
        robust_accuracy_curve([np.nan], [0.1], [True])
    with pytest.raises(ValueError, match="entries"):
        robust_accuracy_curve([0.1, 0.2], [0.1], [True])
    with pytest.raises(ValueError, match="eps_grid"):
        robust_accuracy_curve([0.1], [], [True])
    with pytest.raises(ValueError, match=">= 0"):
        robust_accuracy_curve([0.1], [-0.1], [True])


def test_summarise_matches_numpy_for_finite_values() -> None:
    rng = np.random.default_rng(1)
    v = rng.normal(size=101)
    s = summarise(v)
    assert s["n"] == 101
    assert s["mean"] == pytest.approx(v.mean())
    assert s["median"] == pytest.approx(np.median(v))
    assert s["p25"] == pytest.approx(np.percentile(v, 25))
    assert s["p75"] == pytest.approx(np.percentile(v, 75))


def test_summarise_hand_computed_with_nan_and_inf() -> None:
    s = summarise([4.0, np.nan, 1.0, 2.0, 3.0])
    assert s == {"mean": 2.5, "median": 2.5, "p25": 1.75, "p75": 3.25, "n": 4}
    s = summarise([0.1, np.inf, np.inf, np.inf])  # most images never fooled
    assert s["median"] == math.inf and s["p75"] == math.inf and s["mean"] == math.inf
    assert s["n"] == 4
    s = summarise([np.nan, np.nan])
    assert s["n"] == 0 and math.isnan(s["median"])
    with pytest.raises(ValueError, match="no values"):
        summarise([])


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (1, 1), (57, 400), (399, 400)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-12)
    assert hi == pytest.approx(ref.high, abs=1e-12)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_hand_computed_and_other_confidence() -> None:
    z2 = 1.959963984540054**2
    assert wilson_interval(0, 10) == (0.0, pytest.approx(z2 / (10 + z2)))
    ref = binomtest(7, 20).proportion_ci(confidence_level=0.9, method="wilson")
    lo, hi = wilson_interval(7, 20, confidence=0.9)
    assert (lo, hi) == (pytest.approx(ref.low), pytest.approx(ref.high))


def test_wilson_errors() -> None:
    with pytest.raises(ValueError, match="n must be positive"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="k must be"):
        wilson_interval(5, 4)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 4, confidence=1.0)
