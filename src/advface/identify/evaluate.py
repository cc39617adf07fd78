"""Clean closed-set identification on a split: the accuracy that attacks will try to destroy.

Gallery = ``split.gallery`` (distractors included: they are identities a probe can be mistaken
for), probes = ``split.probes``. Identities are *everyone* in the gallery, sorted by name, so
on LFW's default split the task is 5,749-way and the random baseline is ``k / 5749``. Ranks
are computed in probe chunks with :func:`advface.metrics.identification.rank_of_true`
(pessimistic ties), never holding more than a chunk of the score matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from advface.align.chips import ChipIndex
from advface.data.records import identity_of
from advface.data.splits import ClosedSetSplit
from advface.identify.embeddings import embed
from advface.identify.gallery import MODES, Gallery
from advface.metrics.identification import (
    DEFAULT_KS,
    classification_report,
    random_cmc,
    random_rank_k,
    rank_of_true,
)

MAX_CMC_RANK = 50


@dataclass
class IdentificationResult:
    """Rank-k accuracy per decision mode beside the random baseline, plus CMC and sizes."""

    n_probes: int
    n_gallery: int
    n_identities: int
    ks: list[int]
    rank_k: dict[str, dict[int, float]]  # mode -> {k: accuracy}
    random_rank_k: dict[int, float]
    cmc: dict[str, list[float]]  # mode -> CMC[k-1], k = 1..min(50, n_identities)
    random_cmc: list[float]
    classification: dict[str, dict[str, float]]  # mode -> argmax-decision report
    identity_names: list[str] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with string keys (as in ``clean/<model>.json``)."""
        return {
            "n_probes": self.n_probes,
            "n_gallery": self.n_gallery,
            "n_identities": self.n_identities,
            "rank_k": {m: {str(k): v for k, v in r.items()} for m, r in self.rank_k.items()},
            "random_rank_k": {str(k): v for k, v in self.random_rank_k.items()},
            "cmc": self.cmc,
            "random_cmc": self.random_cmc,
            "classification": self.classification,
        }

    def table(self) -> str:
        """Plain-text table: one row per k, one column per mode, then the random baseline."""
        modes = list(self.rank_k)
        head = f"{'rank':>6} " + " ".join(f"{m:>10}" for m in modes) + f" {'random':>10}"
        lines = [head]
        for k in self.ks:
            cells = " ".join(f"{self.rank_k[m][k]:>10.4f}" for m in modes)
            lines.append(f"{k:>6} {cells} {self.random_rank_k[k]:>10.5f}")
        return "\n".join(lines)


def identification_from_embeddings(
    gallery_embeddings: torch.Tensor,
    gallery_keys: Sequence[str],
    probe_embeddings: torch.Tensor,
    probe_keys: Sequence[str],
    metric: str,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    modes: Sequence[str] = MODES,
    probe_chunk: int = 256,
) -> IdentificationResult:
    """Closed-set identification of probes against a gallery, from precomputed embeddings."""
    if len(gallery_keys) != gallery_embeddings.shape[0]:
        raise ValueError(f"{len(gallery_keys)} gallery keys for {gallery_embeddings.shape[0]} rows")
    if len(probe_keys) != probe_embeddings.shape[0]:
        raise ValueError(f"{len(probe_keys)} probe keys for {probe_embeddings.shape[0]} rows")
    if not probe_keys:
        raise ValueError("no probes to identify")
    gallery = Gallery.from_keys(gallery_embeddings, gallery_keys, metric)
    index = {n: i for i, n in enumerate(gallery.identity_names)}
    absent = sorted({identity_of(k) for k in probe_keys} - set(index))
    if absent:
        raise ValueError(f"not closed-set: probes of people without gallery images: {absent[:5]}")
    labels = np.array([index[identity_of(k)] for k in probe_keys], dtype=np.int64)
    n_ids = gallery.n_identities
    max_rank = min(MAX_CMC_RANK, n_ids)
    ks = [int(k) for k in ks]
    rank_k: dict[str, dict[int, float]] = {}
    cmc: dict[str, list[float]] = {}
    classification: dict[str, dict[str, float]] = {}
    for mode in modes:
        ranks, preds = [], []
        with torch.no_grad():
            for r0 in range(0, len(probe_keys), probe_chunk):
                scores = gallery.identity_scores(probe_embeddings[r0 : r0 + probe_chunk], mode)
                ranks.append(rank_of_true(scores.numpy(), labels[r0 : r0 + probe_chunk]))
                preds.append(scores.argmax(dim=1).numpy())
        rank = np.concatenate(ranks)
        rank_k[mode] = {k: float(np.mean(rank <= k)) for k in ks}
        cmc[mode] = [float(np.mean(rank <= k)) for k in range(1, max_rank + 1)]
        classification[mode] = classification_report(labels, np.concatenate(preds), n_ids)
    return IdentificationResult(
        n_probes=len(probe_keys),
        n_gallery=len(gallery_keys),
        n_identities=n_ids,
        ks=ks,
        rank_k=rank_k,
        random_rank_k=random_rank_k(n_ids, ks),
        cmc=cmc,
        random_cmc=random_cmc(n_ids, max_rank).tolist(),
        classification=classification,
        identity_names=gallery.identity_names,
    )


def evaluate_identification(
    model: nn.Module,
    chips: ChipIndex,
    split: ClosedSetSplit,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    modes: Sequence[str] = MODES,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> IdentificationResult:
    """Embed the split's gallery and probes (cached) and run :func:`identification_from_embeddings`.

    The metric is the model's own (``model.metric``: Euclidean for dlib).
    """
    metric = getattr(model, "metric", None)
    if metric is None:
        raise ValueError("the model has no `metric` attribute ('euclidean' or 'cosine')")
    keys = sorted(set(split.gallery) | set(split.probes))
    emb = embed(model, chips, keys, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    row = {k: i for i, k in enumerate(keys)}
    g = emb[[row[k] for k in split.gallery]]
    p = emb[[row[k] for k in split.probes]]
    return identification_from_embeddings(g, split.gallery, p, split.probes, metric, ks=ks,
                                          modes=modes)
