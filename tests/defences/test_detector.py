"""Feature-squeezing detector: threshold at a target FPR, ROC AUC on an easy case."""

from __future__ import annotations

import pytest
import torch

from advface.attacks.base import Budget, Dodging
from advface.attacks.pgd import PGD
from advface.defences.detector import FeatureSqueezingDetector
from advface.defences.transforms import BitDepth, MedianFilter
from advface.errors import AdvfaceError


def test_detector_separates_clean_from_adversarial(problem, small_model) -> None:
    x, y = problem
    det = FeatureSqueezingDetector(small_model, [BitDepth(3), MedianFilter(2)])
    fit_x, test_x, test_y = x[1::2], x[::2], y[::2]
    thr = det.fit(fit_x, fpr=0.1)
    assert (det.score(fit_x) > thr).float().mean() <= 0.1
    # Minimal-margin adversarials (PGD stops at the first success) sit on the decision
    # boundary, where squeezing flips the decision: the easy case for this detector.
    adv = PGD(Budget.from_8bit("linf", 8), steps=10).run(small_model, test_x, Dodging(test_y),
                                                         seed=0)
    fooled = adv.adv[adv.success]
    assert fooled.shape[0] >= 5
    res = det.evaluate(test_x, fooled)
    assert res.auc > 0.5
    assert res.fpr.shape == res.tpr.shape and res.fpr[0] == 0 and res.tpr[-1] == 1
    assert res.tpr_at_threshold is not None and 0 <= res.tpr_at_threshold <= 1
    flagged = det.detect(fooled)
    assert flagged.dtype == torch.bool and float(flagged.float().mean()) == pytest.approx(
        res.tpr_at_threshold)


def test_squeezing_score_is_zero_when_squeezers_do_nothing(problem, small_model) -> None:
    x = (problem[0][:5] * 1).round()  # binary images: 1-bit squeezing leaves them unchanged
    det = FeatureSqueezingDetector(small_model, [BitDepth(1)])
    assert torch.allclose(det.score(x), torch.zeros(5), atol=1e-6)


def test_detect_needs_a_threshold(small_model, problem) -> None:
    det = FeatureSqueezingDetector(small_model)
    with pytest.raises(AdvfaceError, match="threshold"):
        det.detect(problem[0][:2])
    with pytest.raises(AdvfaceError):
        det.fit(problem[0][:2], fpr=1.5)
