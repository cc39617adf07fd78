"""Verification metrics against scikit-learn, scipy and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_auc_score, roc_curve

from advface.metrics.verification import (
    auc,
    best_threshold_accuracy,
    eer,
    kfold_verification_accuracy,
    roc,
    tar_at_far,
)

# Hand example: descending scores 3(+) 2(+) 1(-) 0.5(+) 0(-)
HAND_S = np.array([3.0, 2.0, 1.0, 0.5, 0.0])
HAND_Y = np.array([True, True, False, True, False])


def _random_pairs(seed: int, n: int = 400, rounding: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.5
    s = np.round(rng.normal(size=n) + 1.2 * y, rounding)  # rounding creates ties
    return s, y


@pytest.mark.parametrize("drop", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_matches_sklearn(seed: int, drop: bool) -> None:
    s, y = _random_pairs(seed)
    fpr, tpr, thr = roc(s, y, drop_intermediate=drop)
    rf, rt, rth = roc_curve(y, s, drop_intermediate=drop)
    np.testing.assert_allclose(fpr, rf, atol=1e-15)
    np.testing.assert_allclose(tpr, rt, atol=1e-15)
    np.testing.assert_array_equal(thr, rth)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.booleans()), min_size=2, max_size=30))
def test_roc_and_auc_match_sklearn_property(pairs: list[tuple[int, bool]]) -> None:
    s = np.array([p[0] for p in pairs], dtype=float)
    y = np.array([p[1] for p in pairs])
    if y.all() or not y.any():
        with pytest.raises(ValueError, match="both"):
            roc(s, y)
        return
    fpr, tpr, thr = roc(s, y)
    rf, rt, rth = roc_curve(y, s)
    np.testing.assert_allclose(fpr, rf)
    np.testing.assert_allclose(tpr, rt)
    np.testing.assert_array_equal(thr, rth)
    assert auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_eer_hand_computed() -> None:
    # ROC: (0,0) (0,1/3) (0,2/3) (.5,2/3) (.5,1) (1,1); FNR=1/3 meets FPR on the segment
    # from threshold 2 (fpr 0) to threshold 1 (fpr .5) at t = 2/3.
    rate, thr = eer(HAND_S, HAND_Y)
    assert rate == pytest.approx(1 / 3)
    assert thr == pytest.approx(2 - 2 / 3)


def test_eer_perfect_separation_is_zero() -> None:
    s = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([False, False, True, True])
    rate, thr = eer(s, y)
    assert rate == 0.0
    assert thr == 3.0


def test_eer_first_segment_returns_finite_threshold() -> None:
    # A genuine and an impostor pair tie at the top score: ROC (0,0) -> (.5,.5) -> (1,1), so
    # FPR = FNR = .5 is reached at the end of the segment leaving the +inf start point.
    s = np.array([5.0, 5.0, 0.0, 0.0])
    y = np.array([False, True, False, True])
    rate, thr = eer(s, y)
    assert rate == pytest.approx(0.5)
    assert thr == 5.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_eer_matches_brentq_recipe(seed: int) -> None:
    s, y = _random_pairs(seed, rounding=3)
    fpr, tpr, _ = roc_curve(y, s)
    ref = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
    assert eer(s, y)[0] == pytest.approx(ref, abs=1e-9)


def test_tar_at_far_hand_computed() -> None:
    assert tar_at_far(HAND_S, HAND_Y, 0.0) == pytest.approx(2 / 3)
    assert tar_at_far(HAND_S, HAND_Y, 0.49) == pytest.approx(2 / 3)
    assert tar_at_far(HAND_S, HAND_Y, 0.5) == 1.0
    with pytest.raises(ValueError, match="far"):
        tar_at_far(HAND_S, HAND_Y, 1.5)


@pytest.mark.parametrize("far", [1e-3, 1e-2, 0.1])
def test_tar_at_far_matches_bruteforce(far: float) -> None:
    s, y = _random_pairs(7, n=3000, rounding=4)
    pos, neg = s[y], s[~y]
    best = 0.0
    for t in np.unique(s):
        if np.mean(neg >= t) <= far:
            best = max(best, float(np.mean(pos >= t)))
    assert tar_at_far(s, y, far) == pytest.approx(best, abs=1e-12)


def test_best_threshold_accuracy_hand_computed() -> None:
    # Accepting {3, 2} or {3, 2, 1, 0.5} both give 4/5; the stricter wins, threshold midway
    # between 2 (last accepted) and 1 (first rejected).
    acc, thr = best_threshold_accuracy(HAND_S, HAND_Y)
    assert acc == pytest.approx(0.8)
    assert thr == pytest.approx(1.5)


def test_best_threshold_accuracy_reject_all_and_accept_all() -> None:
    acc, thr = best_threshold_accuracy([3.0, 2.0, 1.0], [False, False, True])
    assert (acc, thr) == (pytest.approx(2 / 3), np.inf)
    acc, thr = best_threshold_accuracy([3.0, 2.0, 1.0], [True, True, False])
    assert (acc, thr) == (1.0, 1.5)
    acc, thr = best_threshold_accuracy([1.0, 2.0, 3.0], [True, True, False])
    assert acc == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", [0, 1])
def test_best_threshold_accuracy_is_the_bruteforce_maximum(seed: int) -> None:
    s, y = _random_pairs(seed, rounding=2)
    acc, thr = best_threshold_accuracy(s, y)
    candidates = [np.inf, *np.unique(s)]
    brute = max(np.mean((s >= t) == y) for t in candidates)
    assert acc == pytest.approx(brute)
    assert np.mean((s >= thr) == y) == pytest.approx(acc)


def test_kfold_semantics_against_bruteforce() -> None:
    s, y = _random_pairs(11, n=600, rounding=2)
    mean, std, per_fold, thrs = kfold_verification_accuracy(s, y, 10)
    fold_of = np.repeat(np.arange(10), 60)
    for f in range(10):
        test = fold_of == f
        tr_s, tr_y = s[~test], y[~test]
        brute = max(np.mean((tr_s >= t) == tr_y) for t in [np.inf, *np.unique(tr_s)])
        assert np.mean((tr_s >= thrs[f]) == tr_y) == pytest.approx(brute)
        assert per_fold[f] == pytest.approx(np.mean((s[test] >= thrs[f]) == y[test]))
    assert mean == pytest.approx(per_fold.mean())
    assert std == pytest.approx(np.std(per_fold, ddof=1))


def test_kfold_explicit_fold_ids_equal_contiguous_split() -> None:
    s, y = _random_pairs(12, n=100)
    a = kfold_verification_accuracy(s, y, 5)
    b = kfold_verification_accuracy(s, y, np.repeat(np.arange(5), 20))
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[2], b[2])
    np.testing.assert_array_equal(a[3], b[3])


def test_kfold_perfectly_separable() -> None:
    y = np.tile([True, False], 50)
    s = np.where(y, 1.0, -1.0) + np.linspace(0, 0.1, 100)
    mean, std, per_fold, _ = kfold_verification_accuracy(s, y, 10)
    assert mean == 1.0
    assert std == 0.0
    assert per_fold.shape == (10,)


@pytest.mark.parametrize(
    ("scores", "same", "match"),
    [
        ([], [], "empty"),
        ([1.0, 2.0], [True], "entries"),
        ([1.0, 2.0], [True, True], "both"),
        ([1.0, np.nan], [True, False], "finite"),
        ([1.0, 2.0], [0, 2], "boolean"),
        ([[1.0, 2.0]], [[True, False]], "1-D"),
    ],
)
def test_bad_inputs_raise(scores: list, same: list, match: str) -> None:
    for fn in (roc, auc, eer, best_threshold_accuracy):
        with pytest.raises(ValueError, match=match):
            fn(scores, same)


def test_kfold_errors() -> None:
    s, y = _random_pairs(0, n=20)
    with pytest.raises(ValueError, match="at least 2"):
        kfold_verification_accuracy(s, y, 1)
    with pytest.raises(ValueError, match="shape"):
        kfold_verification_accuracy(s, y, np.zeros(3))
    with pytest.raises(ValueError, match="cannot split"):
        kfold_verification_accuracy(s[:3], np.array([True, False, True]), 5)
