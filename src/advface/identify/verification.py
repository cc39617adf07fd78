"""LFW pair verification (the standard sanity check that a face model is what it claims).

The unrestricted 10-fold protocol: for each fold, the accept threshold is chosen on the other
nine folds and accuracy is measured on the held-out one; the mean and standard deviation over
folds are reported beside threshold-free figures (ROC AUC, EER, TAR at fixed FAR). The numbers
come from :mod:`advface.metrics.verification`; this module only turns embeddings and pairs into
scores. dlib reports 99.38% on this protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from advface.data.protocols import Pair
from advface.errors import DataError
from advface.identify.gallery import METRICS
from advface.metrics.verification import auc, eer, kfold_verification_accuracy, roc, tar_at_far

FARS: tuple[float, ...] = (0.001, 0.01)
ROC_POINTS = 500


def pair_similarities(
    embeddings_by_key: Mapping[str, torch.Tensor], pairs: Sequence[Pair], metric: str
) -> np.ndarray:
    """Similarity of each pair (negative distance or cosine), higher = more likely same."""
    missing = sorted({k for p in pairs for k in (p.key_a, p.key_b)} - set(embeddings_by_key))
    if missing:
        raise DataError(
            f"{len(missing)} image(s) named in the pairs have no embedding, e.g. {missing[:3]}",
            fix="align and embed every image of the data set (`advface model align`)",
        )
    a = torch.stack([torch.as_tensor(embeddings_by_key[p.key_a]) for p in pairs]).to(torch.float64)
    b = torch.stack([torch.as_tensor(embeddings_by_key[p.key_b]) for p in pairs]).to(torch.float64)
    # Row-wise in float64 (only the N pairs, not the N x N matrix pair_scores would give).
    if metric == "euclidean":
        scores = -torch.linalg.vector_norm(a - b, dim=1)
    elif metric == "cosine":
        scores = torch.nn.functional.cosine_similarity(a, b, dim=1)
    else:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    return scores.numpy()


def _downsample(fpr: np.ndarray, tpr: np.ndarray, n: int) -> tuple[list[float], list[float]]:
    """At most ``n`` ROC points, always keeping both ends, for reports and JSON files."""
    if fpr.size <= n:
        return fpr.tolist(), tpr.tolist()
    idx = np.unique(np.linspace(0, fpr.size - 1, n).round().astype(int))
    return fpr[idx].tolist(), tpr[idx].tolist()


def verify_lfw_pairs(
    model_embeddings_by_key: Mapping[str, torch.Tensor],
    pairs: Sequence[Pair],
    metric: str,
) -> dict[str, Any]:
    """10-fold verification accuracy plus ROC/AUC/EER/TAR@FAR on LFW ``pairs``.

    Folds come from each pair's ``fold`` (``pairs.txt`` holds 10 folds of 600). The result uses
    the keys of ``verification/<model>.json`` (see docs/run_dir.md), plus ``thresholds`` (the
    per-fold similarity thresholds chosen on the other folds; for Euclidean scores, minus the
    distance threshold) and ``n_pairs``.
    """
    if not pairs:
        raise DataError("no verification pairs given", fix="check pairs.txt")
    scores = pair_similarities(model_embeddings_by_key, pairs, metric)
    same = np.array([p.same for p in pairs], dtype=bool)
    folds = np.array([p.fold for p in pairs])
    mean, std, per_fold, thresholds = kfold_verification_accuracy(scores, same, folds)
    fpr, tpr, _ = roc(scores, same)
    fpr_s, tpr_s = _downsample(fpr, tpr, ROC_POINTS)
    rate, eer_threshold = eer(scores, same)
    return {
        "mean_accuracy": mean,
        "std_accuracy": std,
        "per_fold": [float(a) for a in per_fold],
        "thresholds": [float(t) for t in thresholds],
        "auc": auc(scores, same),
        "eer": rate,
        "eer_threshold": eer_threshold,
        "tar_at_far": {str(f): tar_at_far(scores, same, f) for f in FARS},
        "roc": {"fpr": fpr_s, "tpr": tpr_s},
        "n_pairs": len(pairs),
        "metric": metric,
    }
