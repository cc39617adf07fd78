"""Pair verification: scores from embeddings, 10-fold protocol, ROC figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advface.data.protocols import Pair
from advface.errors import DataError
from advface.identify.verification import pair_similarities, verify_lfw_pairs
from advface.metrics.verification import kfold_verification_accuracy


def _synthetic(noise: float, seed: int = 0, folds: int = 10, per_fold: int = 40):
    """People with a true embedding; images are noisy copies. Half the pairs are matches."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, 16))
    emb: dict[str, torch.Tensor] = {}
    pairs: list[Pair] = []
    n = 0
    for fold in range(folds):
        for j in range(per_fold):
            same = j % 2 == 0
            a, b = rng.choice(200, size=2, replace=False)
            ka, kb = f"P{a}/P{a}_{n:04d}.jpg", f"P{b if not same else a}/x_{n:04d}.jpg"
            emb[ka] = torch.tensor(centres[a] + noise * rng.normal(size=16), dtype=torch.float32)
            emb[kb] = torch.tensor(centres[b if not same else a] + noise * rng.normal(size=16),
                                   dtype=torch.float32)
            pairs.append(Pair(ka, kb, same, fold))
            n += 1
    return emb, pairs


def test_separable_pairs_are_perfect():
    emb, pairs = _synthetic(noise=0.01)
    res = verify_lfw_pairs(emb, pairs, "euclidean")
    assert res["mean_accuracy"] == 1.0 and res["std_accuracy"] == 0.0
    assert res["auc"] == 1.0 and res["eer"] == 0.0
    assert res["tar_at_far"]["0.001"] == 1.0
    assert len(res["per_fold"]) == 10 and res["n_pairs"] == 400
    assert all(t < 0 for t in res["thresholds"])  # minus a distance


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_noisy_pairs_match_metric_functions(metric):
    emb, pairs = _synthetic(noise=0.9, seed=3)
    res = verify_lfw_pairs(emb, pairs, metric)
    a = np.stack([emb[p.key_a].numpy() for p in pairs]).astype(np.float64)
    b = np.stack([emb[p.key_b].numpy() for p in pairs]).astype(np.float64)
    if metric == "euclidean":
        scores = -np.linalg.norm(a - b, axis=1)
    else:
        scores = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(pair_similarities(emb, pairs, metric), scores, rtol=1e-12)
    same = np.array([p.same for p in pairs])
    mean, std, per_fold, _thr = kfold_verification_accuracy(scores, same, np.repeat(range(10), 40))
    assert res["mean_accuracy"] == pytest.approx(mean)
    assert res["std_accuracy"] == pytest.approx(std)
    assert res["per_fold"] == pytest.approx(per_fold.tolist())
    assert 0.6 < res["mean_accuracy"] < 1.0  # noisy: neither chance nor perfect
    assert 0.5 < res["auc"] < 1.0 and 0.0 < res["eer"] < 0.5
    assert len(res["roc"]["fpr"]) <= 500 and res["roc"]["fpr"][0] == 0.0
    assert res["roc"]["tpr"][-1] == 1.0


def test_folds_come_from_the_pairs_not_file_order():
    emb, pairs = _synthetic(noise=0.9, seed=5)
    shuffled = [pairs[i] for i in np.random.default_rng(0).permutation(len(pairs))]
    a = verify_lfw_pairs(emb, pairs, "euclidean")
    b = verify_lfw_pairs(emb, shuffled, "euclidean")
    assert sorted(a["per_fold"]) == sorted(b["per_fold"])


def test_missing_embedding_is_a_data_error():
    emb, pairs = _synthetic(noise=0.1)
    del emb[pairs[0].key_a]
    with pytest.raises(DataError, match="no embedding"):
        verify_lfw_pairs(emb, pairs, "euclidean")
