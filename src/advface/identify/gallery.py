"""Closed-set identification against a gallery of enrolled embeddings.

The decision rule is the one the project's attacks target: an identity's score is the best
similarity over that identity's gallery images (``mode="nearest"``; negative Euclidean distance
for dlib, cosine similarity otherwise), or the similarity to the identity's mean embedding
(``mode="centroid"``). ``argmax`` over identities is the rank-1 decision. Every identity in the
gallery counts, including distractors enrolled with a single image, so the problem is
"who among everyone in the gallery is this?".

LFW's gallery has about 11.5k images and 5.7k identities, so the full probe x gallery matrix is
computed in blocks of at most ``chunk_elems`` entries; only the ``(N, n_identities)`` result is
ever whole. :class:`GalleryScorer` wraps a face model and a gallery into one differentiable
``nn.Module`` (images -> identity scores) that torchattacks/ART attacks run on unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from advface.data.records import identity_of
from advface.identify.embeddings import prepare_input

METRICS = ("euclidean", "cosine")
MODES = ("nearest", "centroid")
DEFAULT_CHUNK_ELEMS = 1 << 22  # 4M scores (16 MB in float32) per block


def pair_scores(q: torch.Tensor, g: torch.Tensor, metric: str) -> torch.Tensor:
    """Similarity of every row of ``q`` with every row of ``g`` (higher = more alike).

    Euclidean: ``-||q - g||`` via ``torch.cdist`` without the matmul shortcut: slower (about
    2x) but exact to float32 rounding near distance 0 (where an attack heads) and independent of
    how the gallery is chunked. Its gradient is finite, also at distance 0.
    Cosine: dot product of L2-normalised rows.
    """
    if metric == "euclidean":
        return -torch.cdist(q, g, compute_mode="donot_use_mm_for_euclid_dist")
    if metric == "cosine":
        return F.normalize(q, dim=1) @ F.normalize(g, dim=1).T
    raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")


class Gallery:
    """Enrolled embeddings ``(G, D)`` with ``labels`` indexing ``identity_names``."""

    def __init__(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor | Sequence[int],
        identity_names: Sequence[str],
        metric: str,
        *,
        chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    ):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
        emb = torch.as_tensor(embeddings).detach()
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise ValueError(f"gallery embeddings must be a non-empty (G, D) matrix, got "
                             f"{tuple(emb.shape)}")
        if not torch.isfinite(emb).all():
            raise ValueError("gallery embeddings contain NaN or inf")
        lab = torch.as_tensor(labels, dtype=torch.long).detach().reshape(-1)
        if lab.shape[0] != emb.shape[0]:
            raise ValueError(f"{lab.shape[0]} labels for {emb.shape[0]} gallery embeddings")
        names = list(identity_names)
        if len(set(names)) != len(names):
            raise ValueError("identity_names contains duplicates")
        if lab.min() < 0 or lab.max() >= len(names):
            raise ValueError(f"labels must lie in [0, {len(names)})")
        if chunk_elems < 1:
            raise ValueError(f"chunk_elems must be positive, got {chunk_elems}")
        self.embeddings = emb.to(torch.float32)
        self.labels = lab
        self.identity_names = names
        self.metric = metric
        self.chunk_elems = int(chunk_elems)
        counts = torch.bincount(lab, minlength=len(names))
        self.counts = counts
        base = F.normalize(self.embeddings, dim=1) if metric == "cosine" else self.embeddings
        sums = torch.zeros(len(names), emb.shape[1], dtype=torch.float64)
        sums.index_add_(0, lab, base.to(torch.float64))
        # Identities without gallery images get a zero centroid, masked to -inf when scoring.
        self.centroids = (sums / counts.clamp_min(1)[:, None]).to(torch.float32)
        self._device_cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    @classmethod
    def from_keys(
        cls,
        embeddings: torch.Tensor,
        keys: Sequence[str],
        metric: str,
        identity_names: Sequence[str] | None = None,
        **kwargs: int,
    ) -> Gallery:
        """Gallery whose identities are the keys' folders (all of them, sorted, by default)."""
        ids = [identity_of(k) for k in keys]
        names = sorted(set(ids)) if identity_names is None else list(identity_names)
        index = {n: i for i, n in enumerate(names)}
        missing = sorted(set(ids) - set(index))
        if missing:
            raise ValueError(f"gallery keys of identities not in identity_names: {missing[:5]}")
        return cls(embeddings, [index[i] for i in ids], names, metric, **kwargs)

    @property
    def n_identities(self) -> int:
        return len(self.identity_names)

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def _on(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gallery tensors on the query's device and dtype (cached: attacks call this a lot)."""
        key = (q.device, q.dtype)
        if key not in self._device_cache:
            self._device_cache[key] = (
                self.embeddings.to(q.device, q.dtype),
                self.labels.to(q.device),
                self.centroids.to(q.device, q.dtype),
                (self.counts == 0).to(q.device),
            )
        return self._device_cache[key]  # type: ignore[return-value]

    def _check_query(self, q: torch.Tensor) -> None:
        if q.ndim != 2 or q.shape[1] != self.embeddings.shape[1]:
            raise ValueError(
                f"queries must be (N, {self.embeddings.shape[1]}), got {tuple(q.shape)}"
            )

    def _query_rows(self, n: int) -> int:
        return max(1, min(n, 1024))

    def image_scores(self, q: torch.Tensor) -> torch.Tensor:
        """Similarity of each query with each gallery image, ``(N, G)`` (materialised whole)."""
        self._check_query(q)
        emb, _, _, _ = self._on(q)
        return pair_scores(q, emb, self.metric)

    def identity_scores(self, q: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
        """Per-identity scores ``(N, n_identities)``, differentiable w.r.t. ``q``.

        ``nearest``: max over the identity's gallery images; ``centroid``: similarity to the
        identity's mean embedding (mean of unit vectors for cosine). Identities without
        gallery images score ``-inf``.
        """
        self._check_query(q)
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        emb, labels, centroids, empty = self._on(q)
        n, n_ids = q.shape[0], self.n_identities
        rows = self._query_rows(n)
        parts = []
        for r0 in range(0, n, rows):
            qc = q[r0 : r0 + rows]
            if mode == "centroid":
                part = pair_scores(qc, centroids, self.metric)
                part = part.masked_fill(empty, float("-inf"))
            else:
                cols = max(1, self.chunk_elems // qc.shape[0])
                part = torch.full((qc.shape[0], n_ids), float("-inf"), dtype=q.dtype,
                                  device=q.device)
                for c0 in range(0, emb.shape[0], cols):
                    block = pair_scores(qc, emb[c0 : c0 + cols], self.metric)
                    index = labels[c0 : c0 + cols].expand(qc.shape[0], -1)
                    part = part.scatter_reduce(1, index, block, reduce="amax", include_self=True)
            parts.append(part)
        return parts[0] if len(parts) == 1 else torch.cat(parts, 0)

    def rank_lists(
        self, q: torch.Tensor, k: int, mode: str = "nearest"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` identity indices and their scores per query, best first, ``(N, k)`` each.

        Ties keep the lower identity index first, so column 0 equals ``argmax`` of
        :meth:`identity_scores` (and of :class:`GalleryScorer`). ``k`` is capped at the number
        of identities.
        """
        self._check_query(q)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, self.n_identities)
        idx_parts, score_parts = [], []
        rows = max(1, min(q.shape[0], self.chunk_elems // max(1, self.n_identities)))
        with torch.no_grad():
            for r0 in range(0, q.shape[0], rows):
                s = self.identity_scores(q[r0 : r0 + rows].detach(), mode)
                order = torch.sort(s, dim=1, descending=True, stable=True)
                idx_parts.append(order.indices[:, :k])
                score_parts.append(order.values[:, :k])
        if not idx_parts:
            return torch.empty(0, k, dtype=torch.long), torch.empty(0, k)
        return torch.cat(idx_parts), torch.cat(score_parts)


class GalleryScorer(nn.Module):
    """Face model + gallery as one module: images ``(N, 3, H, W)`` -> identity scores.

    ``argmax`` of the output is the closed-set rank-1 decision, so any attack written against
    a classifier (torchattacks, ART) attacks the identification system unchanged. Images are
    resized to the model's ``input_size`` inside ``forward`` (differentiably), exactly as
    :func:`advface.identify.embeddings.embed` does for the gallery. The gallery must hold
    embeddings from the same model. The module is put in eval mode.
    """

    def __init__(self, model: nn.Module, gallery: Gallery, mode: str = "nearest"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        dim = getattr(model, "embedding_dim", None)
        if dim is not None and dim != gallery.embeddings.shape[1]:
            raise ValueError(
                f"model embeds to {dim} dimensions but the gallery holds "
                f"{gallery.embeddings.shape[1]}-d embeddings"
            )
        self.model = model
        self.gallery = gallery
        self.mode = mode
        self.input_size: int | None = getattr(model, "input_size", None)
        self.identity_names = gallery.identity_names
        self.n_classes = gallery.n_identities
        self.eval()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings of images at any size (resized to the model input)."""
        return self.model(prepare_input(images, self.input_size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.gallery.identity_scores(self.embed(images), self.mode)
