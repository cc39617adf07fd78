"""Pair verification metrics: ROC, AUC, EER, TAR@FAR, best-threshold and LFW 10-fold accuracy.

``scores`` are similarities (higher = more likely the same person; callers negate distances) and
``same`` is a boolean array, True for same-identity pairs. A pair is accepted when
``score >= threshold``. Implemented in numpy and tested against scikit-learn so the numbers in
the report do not depend on a library's defaults changing underneath us.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _check_pairs(scores: Any, same: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate once: 1-D, same length, finite scores, both classes present."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"scores and same must be 1-D; got shapes {s.shape} and {y.shape}")
    if s.size == 0:
        raise ValueError("scores is empty: no pairs to evaluate")
    if s.size != y.size:
        raise ValueError(f"scores has {s.size} entries but same has {y.size}")
    if y.dtype != np.bool_:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("same must be boolean (or 0/1)")
        y = y.astype(bool)
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (replace inf/NaN before calling)")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(
            "same must contain both same-identity and different-identity pairs; "
            f"got {n_pos} positive of {y.size}"
        )
    return s, y


def _cumulative_counts(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True/false accepts at every distinct score used as threshold, highest threshold first."""
    order = np.argsort(s, kind="mergesort")[::-1]
    s_sorted = s[order]
    y_sorted = y[order].astype(np.float64)
    distinct = np.where(np.diff(s_sorted))[0]
    idx = np.r_[distinct, s_sorted.size - 1]
    tps = np.cumsum(y_sorted)[idx]
    fps = 1.0 + idx - tps
    return fps, tps, s_sorted[idx]


def roc(
    scores: Any, same: Any, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr, thresholds)``, identical to ``sklearn.metrics.roc_curve``.

    The first threshold is ``+inf`` (nothing accepted, point (0, 0)); thresholds then decrease
    through the distinct scores. ``drop_intermediate`` removes collinear points as scikit-learn
    does; it changes neither the curve's shape nor its area.
    """
    s, y = _check_pairs(scores, same)
    fps, tps, thr = _cumulative_counts(s, y)
    if drop_intermediate and fps.size > 2:
        keep = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps, tps, thr = fps[keep], tps[keep], thr[keep]
    fps = np.r_[0.0, fps]
    tps = np.r_[0.0, tps]
    thr = np.r_[np.inf, thr]
    return fps / fps[-1], tps / tps[-1], thr


def auc(scores: Any, same: Any) -> float:
    """Area under the ROC curve (trapezoidal), equal to ``sklearn.metrics.roc_auc_score``.

    Takes scores, not an ``(fpr, tpr)`` pair, so it cannot be fed a down-sampled curve by mistake.
    """
    fpr, tpr, _ = roc(scores, same)
    return float(np.trapezoid(tpr, fpr))


def eer(scores: Any, same: Any) -> tuple[float, float]:
    """Equal error rate and its threshold, linearly interpolated on the ROC curve.

    The ROC points are joined by straight lines (as plotted) and the EER is where that polyline
    crosses ``FNR = 1 - TPR = FPR``; this equals the common
    ``brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)`` recipe, without scipy. The
    threshold is interpolated between the two bracketing scores with the same weight; when the
    crossing lies on the segment leaving the ``+inf`` start point, the lowest finite threshold
    of that segment is returned instead.
    """
    fpr, tpr, thr = roc(scores, same, drop_intermediate=False)
    diff = fpr - (1.0 - tpr)  # -1 at the start, +1 at the end, non-decreasing in between
    i = int(np.argmax(diff >= 0.0))
    d0, d1 = diff[i - 1], diff[i]
    t = d0 / (d0 - d1) if d1 != d0 else 1.0
    rate = fpr[i - 1] + t * (fpr[i] - fpr[i - 1])
    lo_thr = thr[i - 1]
    threshold = thr[i] if np.isinf(lo_thr) else lo_thr + t * (thr[i] - lo_thr)
    return float(rate), float(threshold)


def tar_at_far(scores: Any, same: Any, far: float) -> float:
    """Largest true-accept rate over thresholds whose false-accept rate is ``<= far``.

    No interpolation: only thresholds that exist (distinct scores) count, so with 3,000 LFW
    impostor pairs FAR 1e-3 means at most 3 false accepts. ``far`` below ``1/n_negatives``
    allows no false accept at all.
    """
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must be in [0, 1]; got {far}")
    fpr, tpr, _ = roc(scores, same, drop_intermediate=False)
    ok = fpr <= far
    return float(tpr[ok].max())


def _best_threshold(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Max-accuracy threshold; see :func:`best_threshold_accuracy`."""
    fps, tps, distinct = _cumulative_counts(s, y)
    n = s.size
    n_neg = n - tps[-1]
    acc = np.r_[n_neg, tps + (n_neg - fps)] / n  # index 0: reject everything
    best = int(np.argmax(acc))
    if best == 0:
        return float(acc[0]), float(np.inf)
    i = best - 1
    if i + 1 < distinct.size:
        hi, lo = distinct[i], distinct[i + 1]
        mid = 0.5 * (hi + lo)
        thr = mid if lo < mid <= hi else hi
    else:
        thr = distinct[i]
    return float(acc[best]), float(thr)


def best_threshold_accuracy(scores: Any, same: Any) -> tuple[float, float]:
    """Highest accuracy over all thresholds and the threshold that achieves it.

    Candidate decisions are "accept the top j distinct scores" for every j (including accept
    none and accept all). Among equally accurate candidates the strictest (highest threshold)
    wins. The returned threshold lies midway between the last accepted and the first rejected
    score, so it generalises to unseen pairs better than a threshold sitting on a training score;
    accept-none returns ``+inf`` and accept-all the lowest score.
    """
    s, y = _check_pairs(scores, same)
    return _best_threshold(s, y)


def kfold_verification_accuracy(
    scores: Any, same: Any, folds: int | Any = 10
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """LFW unrestricted-protocol accuracy: pick the threshold on 9 folds, test on the 10th.

    ``folds`` is either the number of contiguous, equal-size folds in file order (LFW's
    ``pairs.txt`` lists its 10 folds of 600 pairs one after the other) or an array giving each
    pair's fold id. Returns ``(mean, std, per_fold_accuracy, per_fold_threshold)``; ``std`` is
    the sample standard deviation (ddof=1) over folds, as in the LFW README (report
    ``std / sqrt(k)`` as the standard error).
    """
    s, y = _check_pairs(scores, same)
    if np.isscalar(folds) or np.ndim(folds) == 0:
        k = int(folds)
        if k < 2:
            raise ValueError(f"need at least 2 folds; got {k}")
        if s.size < k:
            raise ValueError(f"cannot split {s.size} pairs into {k} folds")
        fold_id = np.repeat(np.arange(k), [len(a) for a in np.array_split(np.arange(s.size), k)])
    else:
        fold_id = np.asarray(folds)
        if fold_id.shape != s.shape:
            raise ValueError(f"folds has shape {fold_id.shape}, expected {s.shape}")
    fold_values = np.unique(fold_id)
    if fold_values.size < 2:
        raise ValueError("need at least 2 distinct folds")
    accs = np.empty(fold_values.size)
    thrs = np.empty(fold_values.size)
    for j, f in enumerate(fold_values):
        test = fold_id == f
        train_s, train_y = _check_pairs(s[~test], y[~test])
        _, thr = _best_threshold(train_s, train_y)
        test_s, test_y = s[test], y[test]
        accs[j] = float(np.mean((test_s >= thr) == test_y))
        thrs[j] = thr
    return float(accs.mean()), float(accs.std(ddof=1)), accs, thrs
