"""The gallery decision of the training evaluation follows the model's metric."""

from __future__ import annotations

import torch

from advface.training.evaluate import gallery_scores


def test_gallery_scores_follow_the_metric() -> None:
    gallery = torch.tensor([[1.0, 0.0], [3.0, 0.5]])
    labels = torch.tensor([0, 1])
    probe = torch.tensor([[3.0, 0.0]])
    # same direction as identity 0, but nearest in distance to identity 1 (dlib's decision)
    assert int(gallery_scores(probe, gallery, labels, 2).argmax()) == 0
    assert int(gallery_scores(probe, gallery, labels, 2, "euclidean").argmax()) == 1
    assert torch.allclose(gallery_scores(probe, gallery, labels, 2, "euclidean"),
                          torch.tensor([[-2.0, -0.5]]))
