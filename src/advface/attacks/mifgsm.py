"""Momentum iterative FGSM (Dong et al. 2018).

Accumulates L1-normalised gradients with decay ``momentum`` and steps along the accumulated
direction; the momentum stabilises the update direction, which mostly helps black-box transfer
from a surrogate. Combine with ``input_diversity``/``ti_kernel`` for DI-/TI-MI-FGSM.
"""

from __future__ import annotations

import math

from advface.attacks.base import Budget, LossKind
from advface.attacks.pgd import PGD


class MIFGSM(PGD):
    """Momentum iterative attack from the clean image; default step ``eps / steps``."""

    name = "mifgsm"

    def __init__(
        self,
        budget: Budget,
        *,
        steps: int = 10,
        step_size: float | None = None,
        momentum: float = 1.0,
        loss: LossKind = "margin",
        temperature: float = 1.0,
        kappa: float = math.inf,
        input_diversity: float = 0.0,
        diversity_scale: float = 0.9,
        ti_kernel: int = 0,
        ti_sigma: float | None = None,
        early_stop: bool = True,
        amp: bool | str = False,
        compile: bool | str = False,
    ) -> None:
        if step_size is None and budget.effective_eps > 0:  # eps 0: no step (PGD's default)
            eps = budget.effective_eps
            step_size = (eps if math.isfinite(eps) else 1.0) / max(steps, 1)
        super().__init__(
            budget,
            steps=steps,
            step_size=step_size,
            random_restarts=0,
            zero_start=True,
            loss=loss,
            temperature=temperature,
            kappa=kappa,
            momentum=momentum,
            input_diversity=input_diversity,
            diversity_scale=diversity_scale,
            ti_kernel=ti_kernel,
            ti_sigma=ti_sigma,
            early_stop=early_stop,
            amp=amp,
            compile=compile,
        )
