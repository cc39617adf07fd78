"""Identification metrics against hand-computed values and scikit-learn."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, top_k_accuracy_score

from advface.metrics.identification import (
    CLASSIFICATION_KEYS,
    classification_report,
    cmc_curve,
    identification_metrics,
    random_baseline_for,
    random_classification_report,
    random_cmc,
    random_rank_k,
    rank_k_accuracy,
    rank_of_true,
)


def _sk_report(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    out = {"accuracy": accuracy_score(y_true, y_pred)}
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=avg, zero_division=0)
        out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = p, r, f
    return out


# --------------------------------------------------------------------------- ranks


def test_rank_of_true_hand_computed_with_pessimistic_ties() -> None:
    scores = np.array(
        [
            [0.1, 0.9, 0.5],  # true 2: only 0.9 beats it -> rank 2
            [0.3, 0.3, 0.3],  # all tied -> worst rank 3
            [1.0, 2.0, 3.0],  # true 2 is the maximum -> rank 1
            [5.0, 5.0, 1.0],  # true 0 tied with class 1 -> rank 2
        ]
    )
    labels = np.array([2, 0, 2, 0])
    np.testing.assert_array_equal(rank_of_true(scores, labels), [2, 3, 1, 2])


def test_rank_k_matches_sklearn_top_k_without_ties() -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(200, 30))
    labels = rng.integers(0, 30, size=200)
    got = rank_k_accuracy(scores, labels, ks=(1, 2, 5, 10, 29))
    for k, v in got.items():
        assert v == pytest.approx(
            top_k_accuracy_score(labels, scores, k=k, labels=np.arange(30)), abs=1e-12
        )


def test_cmc_hand_computed_and_consistent_with_rank_k() -> None:
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.3, 0.3], [1.0, 2.0, 3.0], [5.0, 5.0, 1.0]])
    labels = np.array([2, 0, 2, 0])  # ranks 2, 3, 1, 2
    np.testing.assert_allclose(cmc_curve(scores, labels), [0.25, 0.75, 1.0])
    np.testing.assert_allclose(cmc_curve(scores, labels, max_rank=5), [0.25, 0.75, 1, 1, 1])
    np.testing.assert_allclose(cmc_curve(scores, labels, max_rank=1), [0.25])
    assert rank_k_accuracy(scores, labels, ks=(1, 2, 3, 10)) == {1: 0.25, 2: 0.75, 3: 1.0, 10: 1.0}


def test_single_identity_is_always_rank_one() -> None:
    scores = np.zeros((5, 1))
    labels = np.zeros(5, dtype=int)
    np.testing.assert_array_equal(rank_of_true(scores, labels), np.ones(5))
    np.testing.assert_allclose(cmc_curve(scores, labels), [1.0])
    rep = identification_metrics(scores, labels)
    assert rep["rank_k"][1] == 1.0
    assert all(rep["classification"][k] == 1.0 for k in CLASSIFICATION_KEYS)


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        (np.zeros((0, 3)), np.zeros(0, dtype=int), "empty"),
        (np.zeros((2, 0)), np.zeros(2, dtype=int), "zero columns"),
        (np.zeros(3), np.zeros(3, dtype=int), "2-D"),
        (np.zeros((2, 3)), np.zeros(3, dtype=int), "rows"),
        (np.zeros((2, 3)), np.array([0, 3]), r"\[0, 3\)"),
        (np.zeros((2, 3)), np.array([-1, 0]), r"\[0, 3\)"),
        (np.zeros((2, 3)), np.array([0.5, 1.0]), "integers"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), np.array([0, 1]), "NaN"),
    ],
)
def test_bad_inputs_raise(scores: np.ndarray, labels: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        rank_of_true(scores, labels)


def test_bad_ks_and_max_rank_raise() -> None:
    s, y = np.eye(3), np.arange(3)
    with pytest.raises(ValueError, match="k must be"):
        rank_k_accuracy(s, y, ks=(0, 1))
    with pytest.raises(ValueError, match="ks is empty"):
        rank_k_accuracy(s, y, ks=())
    with pytest.raises(ValueError, match="max_rank"):
        cmc_curve(s, y, max_rank=0)


# --------------------------------------------------------------------------- classification


def test_classification_report_matches_sklearn_with_missing_classes() -> None:
    rng = np.random.default_rng(2)
    y_true = rng.integers(0, 20, size=300)
    y_pred = np.where(rng.random(300) < 0.5, y_true, rng.integers(0, 26, size=300))
    got = classification_report(y_true, y_pred, n_classes=26)
    ref = _sk_report(y_true, y_pred)
    for key in CLASSIFICATION_KEYS:
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=40),
)
def test_classification_report_matches_sklearn_property(pairs: list[tuple[int, int]]) -> None:
    y_true = np.array([p[0] for p in pairs])
    y_pred = np.array([p[1] for p in pairs])
    got = classification_report(y_true, y_pred)
    ref = _sk_report(y_true, y_pred)
    for key in CLASSIFICATION_KEYS:
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key


def test_classification_report_hand_computed() -> None:
    # class 0: tp=2 of 3, predicted 2; class 1: tp=1 of 1, predicted 2; class 2: tp 0, never true
    y_true = np.array([0, 0, 0, 1])
    y_pred = np.array([0, 0, 1, 1])
    got = classification_report(y_true, y_pred)
    assert got["accuracy"] == 0.75
    assert got["macro_precision"] == pytest.approx((1.0 + 0.5) / 2)
    assert got["macro_recall"] == pytest.approx((2 / 3 + 1.0) / 2)
    f0, f1 = 2 * 2 / (3 + 2), 2 * 1 / (1 + 2)
    assert got["macro_f1"] == pytest.approx((f0 + f1) / 2)
    assert got["weighted_recall"] == pytest.approx(got["accuracy"])
    assert got["weighted_f1"] == pytest.approx(0.75 * f0 + 0.25 * f1)


def test_classification_report_all_wrong_uses_zero_division_zero() -> None:
    got = classification_report([0, 0, 1], [1, 2, 2])
    assert all(got[k] == 0.0 for k in CLASSIFICATION_KEYS)


def test_classification_report_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        classification_report([], [])
    with pytest.raises(ValueError, match="entries"):
        classification_report([0, 1], [0])
    with pytest.raises(ValueError, match="out of range"):
        classification_report([0, 5], [0, 1], n_classes=3)
    with pytest.raises(ValueError, match="negative"):
        classification_report([0, -1], [0, 1])


def test_identification_metrics_uses_argmax_and_caps_cmc() -> None:
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(50, 8))
    labels = rng.integers(0, 8, size=50)
    rep = identification_metrics(scores, labels, max_rank=50)
    assert len(rep["cmc"]) == 8
    assert rep["classification"]["accuracy"] == pytest.approx(rep["rank_k"][1])
    assert rep["classification"] == classification_report(labels, scores.argmax(1))


# --------------------------------------------------------------------------- random baselines


def test_random_rank_k_exact() -> None:
    assert random_rank_k(10, ks=(1, 5, 10, 20)) == {1: 0.1, 5: 0.5, 10: 1.0, 20: 1.0}
    np.testing.assert_allclose(random_cmc(4), [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(random_cmc(2, max_rank=3), [0.5, 1.0, 1.0])
    with pytest.raises(ValueError):
        random_rank_k(0)


def test_random_rank_k_agrees_with_simulated_random_scores() -> None:
    rng = np.random.default_rng(4)
    scores = rng.random(size=(20000, 10))
    labels = rng.integers(0, 10, size=20000)
    sim = rank_k_accuracy(scores, labels, ks=(1, 3, 7))
    exact = random_rank_k(10, ks=(1, 3, 7))
    for k in sim:
        assert sim[k] == pytest.approx(exact[k], abs=0.015)


def _enumerated_expectation(y_true: np.ndarray, n_classes: int) -> dict[str, float]:
    """Exact expectation over every equally likely prediction vector, via scikit-learn."""
    total = dict.fromkeys(CLASSIFICATION_KEYS, 0.0)
    combos = list(itertools.product(range(n_classes), repeat=y_true.size))
    for yp in combos:
        rep = _sk_report(y_true, np.array(yp))
        for k in CLASSIFICATION_KEYS:
            total[k] += rep[k] / len(combos)
    return total


def test_random_classification_report_exact_terms_and_monte_carlo() -> None:
    y_true = np.array([0, 0, 1, 0])  # unbalanced; class 2 has no support
    exact = _enumerated_expectation(y_true, n_classes=3)
    got = random_classification_report(y_true, n_classes=3, seed=0, n_trials=20000)
    for key in ("accuracy", "weighted_recall", "weighted_precision"):
        assert got[key] == pytest.approx(exact[key], abs=1e-12), key
    for key in ("macro_precision", "macro_recall", "macro_f1", "weighted_f1"):
        assert got[key] == pytest.approx(exact[key], abs=0.01), key


def test_random_macro_recall_is_exact_when_every_class_has_support() -> None:
    y = np.arange(62)  # one probe per identity, as in the main job
    for seed in (0, 1):
        rep = random_classification_report(y, 62, seed=seed)
        assert rep["macro_recall"] == 1 / 62 == rep["accuracy"]


def test_random_classification_report_is_seeded() -> None:
    y = np.arange(30) % 7
    a = random_classification_report(y, 9, seed=5, n_trials=20)
    b = random_classification_report(y, 9, seed=5, n_trials=20)
    c = random_classification_report(y, 9, seed=6, n_trials=20)
    assert a == b
    assert a["macro_f1"] != c["macro_f1"]
    with pytest.raises(ValueError, match="out of range"):
        random_classification_report(y, 5)


def test_random_baseline_has_same_keys_as_real_metrics() -> None:
    rng = np.random.default_rng(6)
    scores = rng.normal(size=(40, 12))
    labels = rng.integers(0, 12, size=40)
    real = identification_metrics(scores, labels, ks=(1, 5), max_rank=50)
    base = random_baseline_for(scores, labels, ks=(1, 5), max_rank=50)
    assert real.keys() == base.keys()
    assert real["rank_k"].keys() == base["rank_k"].keys()
    assert real["classification"].keys() == base["classification"].keys()
    assert len(real["cmc"]) == len(base["cmc"]) == 12
    assert base["rank_k"] == {1: 1 / 12, 5: 5 / 12}
    assert base["classification"]["accuracy"] == pytest.approx(1 / 12)
