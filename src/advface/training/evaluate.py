"""Closed-set evaluation of a trained ad-hoc model, two ways, each beside a random guesser.

1. **softmax head**: ``argmax model.logits(probe)`` over the enrolled identities;
2. **gallery nearest neighbour**: per identity, the best cosine similarity between the probe's
   embedding and that identity's gallery images (the project's identity-score convention; its
   argmax is the nearest gallery image). This is the only way for a siamese (head-less) model,
   and the way the pretrained dlib model is evaluated, so the two are comparable.

Metrics come from :mod:`advface.metrics.identification` (rank-k, CMC, precision/recall/F1).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advface.metrics.identification import identification_metrics, random_baseline_for
from advface.models.modes import eval_mode

KS = (1, 5, 10, 20)


def as_float(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.to(torch.float32).div(255.0)  # out of place: never the caller's tensor


@torch.no_grad()  # not inference_mode: lazily built model state must stay attackable
def batched(fn, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Apply ``fn`` to uint8 or float images in batches (no autograd)."""
    outs = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size]
        outs.append(fn(as_float(x) if x.dtype == torch.uint8 else x))
    return torch.cat(outs)


def gallery_scores(
    probe_emb: torch.Tensor, gallery_emb: torch.Tensor, gallery_labels: torch.Tensor,
    n_identities: int, metric: str = "cosine",
) -> torch.Tensor:
    """``(P, C)``: per identity, the best similarity to its gallery images (cosine, or minus
    the Euclidean distance for models such as dlib's whose threshold is on distances)."""
    if metric == "euclidean":
        sims = -torch.cdist(probe_emb.float(), gallery_emb.float())
    else:
        sims = F.normalize(probe_emb, dim=1) @ F.normalize(gallery_emb, dim=1).T
    out = torch.full((sims.shape[0], n_identities), float("-inf"), dtype=sims.dtype)
    return out.scatter_reduce(1, gallery_labels.expand(sims.shape[0], -1), sims, reduce="amax")


def evaluate_model(
    model: nn.Module,
    gallery_images: torch.Tensor,
    gallery_labels: torch.Tensor,
    probe_images: torch.Tensor,
    probe_labels: torch.Tensor,
    n_identities: int,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Both decisions' metrics and the random baseline (JSON-ready; rank keys are strings).

    The model runs in eval mode; each of its modules gets its own mode back afterwards.
    """
    with eval_mode(model):
        probe_emb = batched(model, probe_images, batch_size)
        gallery_emb = batched(model, gallery_images, batch_size)
        logits = (batched(model.logits, probe_images, batch_size) if hasattr(model, "logits")
                  else None)
    nn_scores = gallery_scores(probe_emb, gallery_emb, gallery_labels, n_identities,
                               getattr(model, "metric", "cosine"))
    return {
        "n_probes": int(probe_labels.numel()),
        "n_identities": n_identities,
        "n_gallery": int(gallery_labels.numel()),
        "gallery_nn": _jsonable(identification_metrics(nn_scores, probe_labels, KS)),
        "random": _jsonable(random_baseline_for(nn_scores, probe_labels, KS)),
        "softmax": (None if logits is None
                    else _jsonable(identification_metrics(logits, probe_labels, KS))),
    }


def _jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    out = dict(metrics)
    out["rank_k"] = {str(k): float(v) for k, v in metrics["rank_k"].items()}
    return out


def format_table(result: dict[str, Any]) -> str:
    """Plain-text table: rank-k and precision/recall for each decision beside random."""
    cols = [("gallery NN", result["gallery_nn"])]
    if result.get("softmax"):
        cols.insert(0, ("softmax", result["softmax"]))
    for name, other in (result.get("compare") or {}).items():
        cols.append((f"{name} NN", other["gallery_nn"]))
    cols.append(("random", result["random"]))
    rows = [f"rank-{k}" for k in KS] + [
        "accuracy", "macro_precision", "macro_recall", "macro_f1",
        "weighted_precision", "weighted_recall", "weighted_f1",
    ]
    header = f"{'metric':<20}" + "".join(f"{name:>12}" for name, _ in cols)
    lines = [
        f"{result['n_probes']} probes, {result['n_identities']} identities, "
        f"{result['n_gallery']} gallery images",
        header,
        "-" * len(header),
    ]
    for row in rows:
        vals = []
        for _, m in cols:
            v = m["rank_k"][row[5:]] if row.startswith("rank-") else m["classification"][row]
            vals.append(f"{v:>12.3f}")
        lines.append(f"{row:<20}" + "".join(vals))
    return "\n".join(lines)
