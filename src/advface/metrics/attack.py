"""Attack outcome metrics: success rate, robust accuracy (and its curve over eps), summaries, CIs.

Every rate in the report comes with a Wilson 95% interval because attack cells are often run on
a few hundred probes, where a normal-approximation interval would be visibly wrong near 0 or 1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Z_95 = 1.959963984540054  # scipy.stats.norm.ppf(0.975)


def _bool_vector(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty: no attacked items")
    if a.dtype != np.bool_:
        if not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name} must be boolean (or 0/1)")
        a = a.astype(bool)
    return a


def attack_success_rate(success: Any) -> float:
    """Fraction of attacked items on which the attack reached its goal.

    Which items count is the caller's choice (e.g. dodging is usually only attempted on probes
    the model got right); this function only averages what it is given.
    """
    return float(_bool_vector(success, "success").mean())


def counts_toward_success(goal: str, clean_pred: Any, true_label: Any,
                          target_label: Any = None) -> Any:
    """Whether an item enters the attack success rate: the attack had to change a decision.
    Labels are ints (one item: True/False, ``None`` when unknown) or equal-shaped tensors or
    arrays (elementwise).

    Dodging counts the probes the model identified correctly before the attack (a probe it
    already got wrong is not "fooled" by anything); impersonation the probes it did not already
    name as the target. Counting every item instead would carry the clean error rate into the
    success rate (it would then be 1 - robust accuracy, and random noise would "succeed" on
    every clean mistake). ``None`` when the labels needed are missing.
    """
    if clean_pred is None:
        return None
    if goal == "impersonation":
        return None if target_label is None else clean_pred != target_label
    return None if true_label is None else clean_pred == true_label


def robust_accuracy(correct_after: Any) -> float:
    """Fraction of *all* evaluated items still correctly identified after the attack.

    Unlike the success rate the denominator includes clean mistakes, which stay wrong, so
    robust accuracy <= clean accuracy always.
    """
    return float(_bool_vector(correct_after, "correct_after").mean())


def robust_accuracy_curve(min_eps_per_image: Any, eps_grid: Any, clean_correct: Any) -> np.ndarray:
    """Robust accuracy at each budget in ``eps_grid`` from per-image minimal fooling budgets.

    An image is robust at ``eps`` iff it was correctly identified when clean and its minimal
    fooling budget is strictly larger than ``eps`` (at ``eps == min_eps`` the attack succeeds).
    Images never fooled have ``min_eps = inf``; clean mistakes are not robust at any eps, so
    their ``min_eps`` is ignored (it may be NaN). The curve at ``eps = 0`` is clean accuracy.
    """
    m = np.asarray(min_eps_per_image, dtype=np.float64)
    grid = np.asarray(eps_grid, dtype=np.float64)
    ok = _bool_vector(clean_correct, "clean_correct")
    if m.ndim != 1:
        raise ValueError(f"min_eps_per_image must be 1-D; got shape {m.shape}")
    if m.size != ok.size:
        raise ValueError(f"min_eps_per_image has {m.size} entries but clean_correct has {ok.size}")
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError("eps_grid must be a non-empty 1-D sequence")
    if np.isnan(grid).any() or (grid < 0).any():
        raise ValueError("eps_grid values must be >= 0")
    if np.isnan(m[ok]).any():
        raise ValueError(
            "min_eps is NaN for a correctly classified image; use inf for never fooled"
        )
    m_ok = np.where(ok, m, -np.inf)
    return (m_ok[None, :] > grid[:, None]).mean(axis=1)


def _quantile(sorted_a: np.ndarray, q: float) -> float:
    """Linear-interpolation quantile (numpy's default) that keeps ``inf`` instead of NaN.

    ``np.percentile`` computes ``inf - inf`` when both neighbours are infinite and returns NaN.
    """
    pos = q * (sorted_a.size - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    a_lo, a_hi = float(sorted_a[lo]), float(sorted_a[hi])
    frac = pos - lo
    if a_lo == a_hi or frac == 0.0:
        return a_lo
    return a_lo + frac * (a_hi - a_lo)


def summarise(values: Any) -> dict[str, float | int]:
    """Mean, median, quartiles and count, for per-item quantities (norms, SSIM, queries...).

    NaN means "not measured" and is dropped (``n`` counts what is left); ``inf`` is kept, since
    for minimal budgets it means "never fooled" and must pull the median up. If everything is
    NaN the statistics are NaN with ``n = 0``.
    """
    a = np.asarray(values, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError("summarise() got no values")
    a = a[~np.isnan(a)]
    if a.size == 0:
        nan = float("nan")
        return {"mean": nan, "median": nan, "p25": nan, "p75": nan, "n": 0}
    a = np.sort(a)
    p25, med, p75 = (_quantile(a, q) for q in (0.25, 0.5, 0.75))
    return {
        "mean": float(a.mean()),
        "median": float(med),
        "p25": float(p25),
        "p75": float(p75),
        "n": int(a.size),
    }


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n``.

    Chosen over the normal approximation because it stays inside [0, 1] and keeps close to
    nominal coverage at small ``n`` and at rates near 0 or 1 (e.g. 100% attack success).
    """
    if n <= 0:
        raise ValueError(f"n must be positive; got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n={n}]; got {k}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    if confidence == 0.95:
        z = Z_95
    else:
        from scipy.stats import norm

        z = float(norm.ppf(0.5 + confidence / 2.0))
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return float(low), float(high)
