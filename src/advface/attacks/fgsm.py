"""Fast gradient sign method (Goodfellow et al. 2015) and its L2 analogue (fast gradient method).

One step of the full budget from the clean image along the steepest-ascent direction of the
goal loss: the cheapest white-box baseline. It is :class:`~advface.attacks.pgd.PGD` with one
step of size eps and no restarts, so it shares PGD's loss, quantisation and bookkeeping.
"""

from __future__ import annotations

import math

from advface.attacks.base import Budget, LossKind
from advface.attacks.pgd import PGD


class FGSM(PGD):
    """Single step of length eps (L-inf: sign of the gradient; L2: normalised gradient)."""

    name = "fgsm"
    supports_init = False

    def __init__(
        self,
        budget: Budget,
        *,
        loss: LossKind = "margin",
        temperature: float = 1.0,
        kappa: float = math.inf,
        amp: bool | str = False,
        compile: bool | str = False,
    ) -> None:
        eps = budget.effective_eps
        super().__init__(
            budget,
            steps=1,
            # one step of the whole budget (eps 0, a curve's clean point: no step at all)
            step_size=(eps if math.isfinite(eps) else 1.0) if eps > 0 else None,
            random_restarts=0,
            zero_start=True,
            loss=loss,
            temperature=temperature,
            kappa=kappa,
            amp=amp,
            compile=compile,
        )
