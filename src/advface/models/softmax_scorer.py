"""The ad-hoc model's softmax head as an identity-score module (images -> logits).

Its own module, free of the experiment machinery (configs), so that benchmarks and a bare
accelerator machine can build the same score module from a checkpoint alone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advface.errors import CheckpointError


class SoftmaxScorer(nn.Module):
    """The ad-hoc model's softmax head, columns reordered to the run's identity order."""

    def __init__(self, model: nn.Module, identity_names: list[str]):
        super().__init__()
        self.model = model
        names = list(getattr(model, "class_names", []) or [])
        missing = sorted(set(identity_names) - set(names))
        if missing:
            raise CheckpointError(
                f"the softmax head does not know {len(missing)} gallery identities "
                f"(e.g. {missing[:3]})",
                fix="train the ad-hoc model on the same split as the experiment (same "
                "data.min_images/probe settings, distractors: false), or use decision "
                "'gallery-nearest'",
            )
        index = {n: i for i, n in enumerate(names)}
        self.register_buffer("perm", torch.tensor([index[n] for n in identity_names]))

    def forward(self, x: Tensor) -> Tensor:
        return self.model.logits(x)[:, self.perm]
