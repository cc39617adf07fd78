"""Run a model in eval mode and give every sub-module back the mode it had.

Why not ``model.train(was)``: ``train`` is recursive, so restoring the root's flag overwrites
each sub-module's own. A wrapper built around a backbone that was put in eval mode (a fresh
``nn.Module`` is in training mode) would come back from an attack with the backbone's batch norm
and dropout switched to training mode, and every later decision of the caller's model would
silently change. Each module's flag is saved and restored as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run with ``model`` (every sub-module) in eval mode, restoring each module's own mode.

    Batch-dependent layers in training mode would make one image's decision depend on the
    others in the batch, which breaks per-image early stopping and reproducibility.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
