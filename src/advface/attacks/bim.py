"""Basic iterative method / I-FGSM (Kurakin et al. 2017).

Repeated small gradient steps from the clean image, projected back into the budget: PGD without
random starts. Its step size default equals PGD's, so PGD (whose first run is this same zero
start) can only do better on the same images.
"""

from __future__ import annotations

import math

from advface.attacks.base import Budget, LossKind
from advface.attacks.pgd import PGD, Schedule


class BIM(PGD):
    """Iterative FGSM from the clean image (zero start, no random restarts)."""

    name = "bim"

    def __init__(
        self,
        budget: Budget,
        *,
        steps: int = 10,
        step_size: float | None = None,
        loss: LossKind = "margin",
        temperature: float = 1.0,
        kappa: float = math.inf,
        input_diversity: float = 0.0,
        diversity_scale: float = 0.9,
        ti_kernel: int = 0,
        ti_sigma: float | None = None,
        schedule: Schedule = "constant",
        early_stop: bool = True,
        amp: bool | str = False,
        compile: bool | str = False,
    ) -> None:
        super().__init__(
            budget,
            steps=steps,
            step_size=step_size,
            random_restarts=0,
            zero_start=True,
            loss=loss,
            temperature=temperature,
            kappa=kappa,
            input_diversity=input_diversity,
            diversity_scale=diversity_scale,
            ti_kernel=ti_kernel,
            ti_sigma=ti_sigma,
            schedule=schedule,
            early_stop=early_stop,
            amp=amp,
            compile=compile,
        )
