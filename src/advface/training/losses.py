"""Training losses: softmax cross-entropy, CosFace, ArcFace and the siamese contrastive loss.

Why several: the seed project trained siamese networks with a contrastive loss on random pairs
and never beat chance. A classification loss over all enrolled identities compares every image
with *every* identity at each step (62-158 comparisons instead of one pair), and the margin
losses (CosFace, ArcFace) additionally force each class into a tight cone on the unit sphere,
which is what makes the embedding usable for nearest-neighbour identification. The contrastive
loss is kept to reproduce (and beat, with a sensible setup) the seed's approach.

Conventions: the margin heads of :class:`advface.models.adhoc.AdHocNet` output cosines
``cos(theta_j)`` in ``[-1, 1]``; the losses here turn them into logits, adding the margin only to
the true class. At inference the logits are ``scale * cos`` with no margin.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_COS_EPS = 1e-6


def softmax_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy of ``(N, C)`` logits (log-sum-exp, numerically stable)."""
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def cosface_logits(
    cos: torch.Tensor, labels: torch.Tensor, scale: float, margin: float
) -> torch.Tensor:
    """CosFace: ``s * (cos(theta_y) - m)`` for the true class, ``s * cos`` else."""
    onehot = F.one_hot(labels, cos.shape[1]).to(cos.dtype)
    return scale * (cos - margin * onehot)


def arcface_logits(
    cos: torch.Tensor,
    labels: torch.Tensor,
    scale: float,
    margin: float,
    easy_margin: bool = False,
) -> torch.Tensor:
    """ArcFace / additive angular margin: ``s * cos(theta_y + m)`` for the true class.

    ``cos(theta + m) = cos*cos(m) - sin*sin(m)`` with ``sin = sqrt(1 - cos^2)``; only the
    square root's argument is clamped (at 1e-6), so its gradient stays finite while every other
    use of the cosine keeps its full gradient (a wrong class at cos = 1, the worst confusion,
    must still be pushed away). ``cos(theta + m)`` stops decreasing once ``theta + m > pi``,
    which would *reward* pushing a badly classified sample further away, so for
    ``theta > pi - m`` the target logit falls back to ``cos(theta) - m * sin(m)``
    (InsightFace's choice: still decreasing in theta, though it jumps down at
    ``theta = pi - m``). With ``easy_margin`` the margin is applied only where
    ``cos(theta) > 0`` (theta < 90 degrees) and the plain cosine is kept elsewhere, which is
    gentler early in training when every sample starts near 90 degrees.
    """
    sin = torch.sqrt((1.0 - cos * cos).clamp_min(_COS_EPS))
    phi = cos * math.cos(margin) - sin * math.sin(margin)
    if easy_margin:
        phi = torch.where(cos > 0, phi, cos)
    else:
        phi = torch.where(cos > math.cos(math.pi - margin), phi,
                          cos - margin * math.sin(margin))
    onehot = F.one_hot(labels, cos.shape[1]).bool()
    return scale * torch.where(onehot, phi, cos)


class ClassificationLoss(nn.Module):
    """Loss on a head's output: ``softmax`` (logits) or ``cosface``/``arcface`` (cosines).

    ``train_logits`` are what the cross-entropy sees (with the margin on the true class only);
    decisions (accuracy, inference) use the margin-free head output.
    """

    def __init__(
        self,
        kind: str,
        scale: float = 30.0,
        margin: float = 0.35,
        label_smoothing: float = 0.0,
        easy_margin: bool = False,
    ):
        super().__init__()
        if kind not in ("softmax", "cosface", "arcface"):
            raise ValueError(f"unknown classification loss {kind!r}")
        self.kind = kind
        self.scale = scale
        self.margin = margin
        self.label_smoothing = label_smoothing
        self.easy_margin = easy_margin

    def train_logits(self, head_out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.kind == "softmax":
            return head_out
        if self.kind == "cosface":
            return cosface_logits(head_out, labels, self.scale, self.margin)
        return arcface_logits(head_out, labels, self.scale, self.margin, self.easy_margin)

    def forward(self, head_out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return softmax_cross_entropy(
            self.train_logits(head_out, labels), labels, self.label_smoothing
        )


# --------------------------------------------------------------------------- siamese


def contrastive_loss(
    emb_a: torch.Tensor, emb_b: torch.Tensor, same: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """Hadsell, Chopra & LeCun (2006) contrastive loss, mean over pairs.

    ``L = y * d^2 + (1 - y) * max(0, margin - d)^2`` with ``d = ||a - b||_2`` and ``y = 1`` for
    a same-identity pair (the paper's 1/2 factors are dropped). The positive term uses the
    squared distance directly, and ``d`` gets a tiny epsilon under the root, so the gradient is
    finite even for identical embeddings. With L2-normalised embeddings ``d`` lies in ``[0, 2]``.
    """
    y = same.to(emb_a.dtype)
    d2 = (emb_a - emb_b).pow(2).sum(dim=1)
    d = torch.sqrt(d2 + 1e-12)
    return (y * d2 + (1.0 - y) * F.relu(margin - d).pow(2)).mean()


def sample_pairs(
    labels: torch.Tensor,
    n_pairs: int,
    positive_fraction: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``n_pairs`` index pairs ``(a, b, same)`` from a label vector (e.g. one batch).

    Random pairs are almost all negatives (with 62 people, ~2% are positives), which is one
    reason a naive siamese setup learns nothing; so a fixed ``positive_fraction`` of the pairs
    are same-identity pairs (``a != b``), the rest different-identity pairs. Positives are drawn
    only from labels occurring at least twice; if none does, every pair is negative. Deterministic
    for a given ``generator`` state.
    """
    if labels.ndim != 1 or labels.numel() < 2:
        raise ValueError("need a 1-D label vector with at least 2 entries")
    if not 0.0 <= positive_fraction <= 1.0 or n_pairs < 1:
        raise ValueError("n_pairs >= 1 and 0 <= positive_fraction <= 1 are required")
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    uniq, counts = torch.unique_consecutive(sorted_labels, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    cls = torch.searchsorted(uniq, sorted_labels)  # class slot of each sorted position
    n = labels.numel()
    pos_rank = torch.arange(n) - starts[cls]  # position of each sample inside its class block

    eligible = torch.nonzero(counts[cls] >= 2).flatten()
    n_pos = round(n_pairs * positive_fraction) if eligible.numel() else 0
    if counts.numel() < 2:
        n_pos = n_pairs  # a single identity: only positives exist
    n_neg = n_pairs - n_pos

    a_parts, b_parts = [], []
    if n_pos:
        anchors = eligible[torch.randint(eligible.numel(), (n_pos,), generator=generator)]
        c = cls[anchors]
        r = torch.minimum((torch.rand(n_pos, generator=generator) * (counts[c] - 1)).long(),
                          counts[c] - 2)  # float rounding could otherwise reach the end
        r = r + (r >= pos_rank[anchors]).long()  # skip the anchor itself
        a_parts.append(anchors)
        b_parts.append(starts[c] + r)
    if n_neg:
        anchors = torch.randint(n, (n_neg,), generator=generator)
        c = cls[anchors]
        r = torch.minimum((torch.rand(n_neg, generator=generator) * (n - counts[c])).long(),
                          n - counts[c] - 1)
        r = r + counts[c] * (r >= starts[c]).long()  # skip the anchor's class block
        a_parts.append(anchors)
        b_parts.append(r)
    a = order[torch.cat(a_parts)]
    b = order[torch.cat(b_parts)]
    same = labels[a] == labels[b]
    return a, b, same
