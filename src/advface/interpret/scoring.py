"""Turn a face model into the score module every interpretation and defence works on.

The project's rule (docs/architecture.md) is that an identity decision is a module images ->
per-identity scores whose argmax is the decision. A model with a softmax head is turned into
one by calling its ``logits``; anything else is assumed to already be a score module (e.g. a
:class:`advface.identify.gallery.GalleryScorer`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from advface.errors import AdvfaceError
from advface.models.modes import eval_mode


class LogitScorer(nn.Module):
    """A softmax-head model seen as a score module: ``forward(x) = model.logits(x)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if not hasattr(model, "logits"):
            raise AdvfaceError(
                f"{type(model).__name__} has no softmax head (no `logits`)",
                fix="pass a score module instead, e.g. GalleryScorer(model, gallery)",
            )
        self.model = model
        self.class_names: list[str] = list(getattr(model, "class_names", []) or [])
        self.input_size: int | None = getattr(model, "input_size", None)

    def forward(self, x: Tensor) -> Tensor:
        return self.model.logits(x)


def as_scorer(model: nn.Module) -> nn.Module:
    """``LogitScorer(model)`` for a model with a softmax head, else ``model`` unchanged."""
    if isinstance(model, LogitScorer):
        return model
    return LogitScorer(model) if hasattr(model, "logits") else model


def resolve_targets(
    scorer: nn.Module, images: Tensor, target: Tensor | int | Sequence[int] | None
) -> Tensor:
    """One identity index per image: the given one(s), or the model's own decision (argmax).

    Explaining "the decision" by default is what a user looking at a single image wants; when
    comparing a clean and an adversarial image one usually passes the true label explicitly so
    both maps explain the same identity.
    """
    n = images.shape[0]
    if target is None:
        with eval_mode(scorer), torch.no_grad():  # the deployed decision; BN stats untouched
            return scorer(images).argmax(dim=1)
    t = torch.as_tensor(target, dtype=torch.long, device=images.device).reshape(-1)
    if t.numel() == 1 and n != 1:
        t = t.expand(n).clone()
    if t.numel() != n:
        raise AdvfaceError(
            f"{t.numel()} targets for {n} images", fix="give one identity index, or one per image"
        )
    return t
