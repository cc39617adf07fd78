"""Feature-squeezing detection of adversarial inputs (Xu, Evans & Qi, NDSS 2018).

Idea: an adversarial perturbation is fragile. "Squeezing" the input — fewer bits per colour,
a small median filter — barely changes the model's prediction on a natural image but often
changes it a lot on an adversarial one. The detection score is the largest L1 distance between
the softmax output on the input and on each squeezed version; an input is flagged when the
score exceeds a threshold chosen on *clean* images for a target false-positive rate.

Identity scores that are similarities (gallery cosine in [-1, 1]) give a nearly uniform
softmax; pass a ``temperature`` (e.g. 0.05) so the distribution is as peaked as a classifier's.

Caveat reported with the numbers: this measures detection of attacks that ignore the detector.
An adaptive attacker who also keeps the squeezed predictions consistent defeats it (He et al.
2017; Athalye et al. 2018), so a high AUC here is not robustness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from advface.attacks.base import eval_mode
from advface.defences.transforms import BitDepth, InputTransform, MedianFilter
from advface.errors import AdvfaceError
from advface.metrics.verification import auc as roc_auc
from advface.metrics.verification import roc


@dataclass
class DetectorROC:
    """Detection quality on clean (negative) vs adversarial (positive) inputs."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float
    threshold: float | None
    tpr_at_threshold: float | None
    fpr_at_threshold: float | None

    def to_json(self) -> dict[str, float | None]:
        return {"auc": self.auc, "threshold": self.threshold,
                "tpr_at_threshold": self.tpr_at_threshold,
                "fpr_at_threshold": self.fpr_at_threshold}


class FeatureSqueezingDetector:
    """Flags inputs whose prediction moves too much under squeezing.

    ``squeezers`` default to Xu et al.'s pair for colour images: 5-bit depth and a 2x2 median
    filter. Use :meth:`fit` on clean images to set ``threshold``, then :meth:`detect`.
    """

    def __init__(
        self,
        scorer: nn.Module,
        squeezers: Sequence[InputTransform] | None = None,
        *,
        temperature: float = 1.0,
        batch_size: int = 64,
    ):
        if temperature <= 0:
            raise AdvfaceError(f"temperature must be > 0, got {temperature}", fix="e.g. 1.0")
        self.scorer = scorer
        self.squeezers = list(squeezers) if squeezers is not None else [BitDepth(5),
                                                                         MedianFilter(2)]
        if not self.squeezers:
            raise AdvfaceError("feature squeezing needs at least one squeezer",
                               fix="e.g. [BitDepth(5), MedianFilter(2)]")
        self.temperature = float(temperature)
        self.batch_size = int(batch_size)
        self.threshold: float | None = None

    @torch.no_grad()
    def score(self, images: Tensor) -> Tensor:
        """Per image ``max_j || p(x) - p(squeeze_j(x)) ||_1`` with ``p`` = softmax(scores / T)."""
        out = []
        with eval_mode(self.scorer):
            for i in range(0, images.shape[0], self.batch_size):
                x = images[i : i + self.batch_size]
                p = (self.scorer(x) / self.temperature).softmax(dim=1)
                dist = torch.stack([
                    (p - (self.scorer(sq(x)) / self.temperature).softmax(dim=1)).abs().sum(1)
                    for sq in self.squeezers
                ])
                out.append(dist.amax(dim=0))
        return torch.cat(out) if out else torch.empty(0)

    def fit(self, clean_images: Tensor, fpr: float = 0.05) -> float:
        """Threshold so that at most ``fpr`` of these clean images score above it."""
        if not 0 <= fpr < 1:
            raise AdvfaceError(f"target FPR must be in [0, 1), got {fpr}", fix="e.g. 0.05")
        s = np.sort(self.score(clean_images).double().numpy())
        if s.size == 0:
            raise AdvfaceError("no clean images to fit the threshold on",
                               fix="pass held-out clean images (e.g. validation gallery)")
        # Flag iff score > threshold; the k-th largest clean score as threshold lets through
        # at most floor(fpr * n) clean images above it.
        allowed = math.floor(fpr * s.size)
        self.threshold = float(s[s.size - 1 - allowed])
        return self.threshold

    def detect(self, images: Tensor) -> Tensor:
        """BoolTensor: flagged as adversarial (score above the fitted threshold)."""
        if self.threshold is None:
            raise AdvfaceError("the detector has no threshold yet",
                               fix="call fit(clean_images, fpr) first")
        return self.score(images) > self.threshold

    def evaluate(self, clean: Tensor, adversarial: Tensor) -> DetectorROC:
        """ROC/AUC of the score with adversarial as the positive class (clean negative)."""
        sc = self.score(clean).double().numpy()
        sa = self.score(adversarial).double().numpy()
        scores = np.concatenate([sc, sa])
        is_adv = np.concatenate([np.zeros(sc.size, bool), np.ones(sa.size, bool)])
        fpr, tpr, thr = roc(scores, is_adv)
        tpr_t = fpr_t = None
        if self.threshold is not None:
            tpr_t = float((sa > self.threshold).mean())
            fpr_t = float((sc > self.threshold).mean())
        return DetectorROC(fpr=fpr, tpr=tpr, thresholds=thr, auc=roc_auc(scores, is_adv),
                           threshold=self.threshold, tpr_at_threshold=tpr_t,
                           fpr_at_threshold=fpr_t)
