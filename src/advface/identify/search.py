"""Large-gallery search with FAISS: exact and approximate nearest gallery images, then identities.

:class:`advface.identify.gallery.Gallery` scores every identity of every query and is what the
attacks differentiate through; it is fine for LFW (about 13k images) but a MegaFace-style gallery
(a million distractors or more) needs an index that returns only the top hits per query and
never holds a full queries x gallery matrix. :class:`GalleryIndex` is that index:

- ``kind="exact"``: ``IndexFlatIP`` on L2-normalised vectors (cosine) or ``IndexFlatL2``
  (Euclidean, as dlib compares its *unnormalised* descriptors). Brute force, exact ranks.
- ``kind="ivf"``: ``IndexIVFFlat`` (k-means coarse quantiser, ``nlist`` cells, ``nprobe``
  visited per query). Approximate; needs training vectors.
- ``kind="hnsw"``: ``IndexHNSWFlat`` (graph, ``M`` links, ``ef_search`` candidate list).
  Approximate; built incrementally, no training.

Scores follow the project convention (higher = more similar): cosine similarity, or the negative
Euclidean distance, so they are directly comparable with ``Gallery.identity_scores``. FAISS
computes Euclidean distances as ``|q|^2 + |g|^2 - 2 q.g`` in float32, which loses precision very
close to distance 0; ranks can only differ from the exact ``torch.cdist`` ones for near-ties.

Queries are searched in chunks of ``chunk_size`` rows, so memory is ``O(chunk_size x k)`` on top
of the index itself (FAISS blocks the distance computation internally too).

Each stored vector has a stable integer id (its insertion number, never reused) and an identity
label. Distractors are added with fresh singleton identities (:meth:`GalleryIndex.add_distractors`)
and can be removed again (:meth:`GalleryIndex.remove`): physically for ``exact`` and ``ivf``; for
``hnsw``, which cannot delete graph nodes, they are masked at search time and the graph is rebuilt
once more than half of it is masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import faiss
import numpy as np

Kind = Literal["exact", "ivf", "hnsw"]
KINDS: tuple[str, ...] = ("exact", "ivf", "hnsw")
METRICS: tuple[str, ...] = ("cosine", "euclidean")
DEFAULT_CHUNK_SIZE = 4096


def _as_matrix(x: Any, dim: int | None, what: str, *, writable: bool = False) -> np.ndarray:
    """Float32, C-contiguous ``(N, D)`` view of a numpy array or (CPU) torch tensor.

    A copy only when needed (dtype/layout, or ``writable`` for in-place normalisation): a
    million 128-d distractors are 512 MB, so needless copies decide whether a gallery fits.
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.ascontiguousarray(x, dtype=np.float32)
    # Only an ndarray that ``a`` does not share is known to be ours; any other buffer (a
    # memoryview, say) may be the caller's memory under a new array.
    fresh = isinstance(x, np.ndarray) and not np.shares_memory(a, x)
    if writable and not fresh:
        a = a.copy()
    if a.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (N, D) matrix, got shape {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f"{what} must have {dim} columns, got {a.shape[1]}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contain NaN or inf")
    return a


def _as_ids(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x).reshape(-1)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{what} must be integers, got dtype {a.dtype}")
    return a.astype(np.int64)


def default_nlist(n: int) -> int:
    """IVF cells for ``n`` vectors: the usual ``4 sqrt(n)``, capped so each cell trains on >= 39."""
    return max(1, min(int(4 * np.sqrt(max(n, 1))), n // 39))


class GalleryIndex:
    """FAISS index over gallery embeddings with identity labels (see the module docstring).

    ``labels[i]`` is the identity of ``embeddings[i]`` (any non-negative integers, e.g. indices
    into a run's ``identity_names``); the initial vectors get ids ``0 .. G-1``. IVF parameters:
    ``nlist`` (default :func:`default_nlist` of the training set), ``nprobe``; the coarse
    quantiser is trained on ``train_vectors`` (default: the initial embeddings) subsampled to
    ``train_per_list * nlist`` with ``seed``. HNSW parameters: ``hnsw_m``, ``ef_construction``,
    ``ef_search``. ``nprobe`` and ``ef_search`` may be changed between searches.
    """

    def __init__(
        self,
        embeddings: Any,
        labels: Any,
        metric: str,
        *,
        kind: Kind = "exact",
        nlist: int | None = None,
        nprobe: int = 16,
        train_vectors: Any = None,
        train_per_list: int = 50,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 64,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        seed: int = 0,
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; choose one of {KINDS}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        emb = self._prepare(_as_matrix(embeddings, None, "gallery embeddings",
                                       writable=metric == "cosine"), metric)
        self.dim = int(emb.shape[1])
        if self.dim == 0:
            raise ValueError("gallery embeddings have zero columns")
        self.metric = metric
        self.kind: Kind = kind
        self.nprobe = int(nprobe)
        self.ef_search = int(ef_search)
        self.chunk_size = int(chunk_size)
        self.seed = int(seed)
        self._hnsw_m = int(hnsw_m)
        self._ef_construction = int(ef_construction)
        self._faiss_metric = (faiss.METRIC_INNER_PRODUCT if metric == "cosine"
                              else faiss.METRIC_L2)
        self._labels = np.empty(0, dtype=np.int64)  # by id
        self._alive = np.empty(0, dtype=bool)  # by id
        self._masked = 0  # hnsw: ids removed but still in the graph
        self._next_label = 0
        self.nlist: int | None = None
        if kind == "ivf":
            train = emb if train_vectors is None else self._prepare(
                _as_matrix(train_vectors, self.dim, "train_vectors",
                           writable=metric == "cosine"), metric)
            self.nlist = int(nlist) if nlist is not None else default_nlist(train.shape[0])
            if self.nlist < 1 or train.shape[0] < self.nlist:
                raise ValueError(f"IVF with nlist={self.nlist} needs at least that many "
                                 f"training vectors, got {train.shape[0]}")
            cap = train_per_list * self.nlist
            if train.shape[0] > cap:
                pick = np.random.default_rng(seed).choice(train.shape[0], cap, replace=False)
                train = train[np.sort(pick)]
            self._index = self._new_ivf(train)
        else:
            self._index = self._new_hnsw() if kind == "hnsw" else faiss.IndexIDMap2(
                faiss.IndexFlatIP(self.dim) if metric == "cosine" else faiss.IndexFlatL2(self.dim))
        self._add_prepared(emb, _as_ids(labels, "labels"))

    # ------------------------------------------------------------------ construction

    @staticmethod
    def _prepare(x: np.ndarray, metric: str) -> np.ndarray:
        """Unit rows for cosine (inner product of unit vectors = cosine), untouched otherwise."""
        if metric == "cosine" and x.size:
            faiss.normalize_L2(x)
        return x

    def _new_ivf(self, train: np.ndarray) -> Any:
        assert self.nlist is not None
        quantizer = faiss.IndexFlatIP(self.dim) if self.metric == "cosine" else \
            faiss.IndexFlatL2(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, self._faiss_metric)
        index.cp.seed = self.seed
        index.cp.spherical = self.metric == "cosine"  # centroids stay on the unit sphere
        index.train(train)
        self._quantizer = quantizer  # the IVF index does not own it
        return index

    def _new_hnsw(self) -> Any:
        inner = faiss.IndexHNSWFlat(self.dim, self._hnsw_m, self._faiss_metric)
        inner.hnsw.efConstruction = self._ef_construction
        self._hnsw_inner = inner
        return faiss.IndexIDMap2(inner)

    def _add_prepared(self, emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
        if labels.shape[0] != emb.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {emb.shape[0]} embeddings")
        if labels.size and labels.min() < 0:
            raise ValueError("labels must be non-negative")
        start = self._labels.shape[0]
        ids = np.arange(start, start + emb.shape[0], dtype=np.int64)
        if emb.shape[0]:
            self._index.add_with_ids(emb, ids)
        self._labels = np.concatenate([self._labels, labels])
        self._alive = np.concatenate([self._alive, np.ones(emb.shape[0], dtype=bool)])
        if labels.size:
            self._next_label = max(self._next_label, int(labels.max()) + 1)
        return ids

    # ------------------------------------------------------------------ gallery changes

    def add(self, embeddings: Any, labels: Any) -> np.ndarray:
        """Enrol more images of given identities; returns their new ids."""
        emb = self._prepare(_as_matrix(embeddings, self.dim, "embeddings",
                                       writable=self.metric == "cosine"), self.metric)
        return self._add_prepared(emb, _as_ids(labels, "labels"))

    def add_distractors(self, embeddings: Any) -> np.ndarray:
        """Enrol images of people no probe can be: each gets a fresh identity of its own.

        That is the MegaFace protocol (one image per distractor person is the worst case for
        the probes: every distractor can take a rank). Returns the new ids; their labels are
        :meth:`labels_of` those ids.
        """
        emb = self._prepare(_as_matrix(embeddings, self.dim, "embeddings",
                                       writable=self.metric == "cosine"), self.metric)
        labels = np.arange(self._next_label, self._next_label + emb.shape[0], dtype=np.int64)
        return self._add_prepared(emb, labels)

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Remove vectors by id (unknown or already removed ids are ignored); returns the count."""
        want = np.unique(_as_ids(ids, "ids"))
        want = want[(want >= 0) & (want < self._alive.shape[0])]
        want = want[self._alive[want]]
        if not want.size:
            return 0
        self._alive[want] = False
        if self.kind == "hnsw":
            self._masked += int(want.size)
            if self._masked * 2 > self._index.ntotal:
                self._rebuild_hnsw()
        else:
            removed = int(self._index.remove_ids(want))
            if removed != want.size:  # pragma: no cover - would mean our bookkeeping is wrong
                raise RuntimeError(f"FAISS removed {removed} of {want.size} vectors")
        return int(want.size)

    def _rebuild_hnsw(self) -> None:
        """Build a fresh graph from the vectors still alive (HNSW cannot delete nodes)."""
        n = self._index.ntotal
        ext = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        vecs = self._hnsw_inner.storage.reconstruct_n(0, n) if n else np.empty((0, self.dim),
                                                                                np.float32)
        keep = self._alive[ext]
        self._index = self._new_hnsw()
        if keep.any():
            self._index.add_with_ids(np.ascontiguousarray(vecs[keep]), ext[keep])
        self._masked = 0

    # ------------------------------------------------------------------ introspection

    def __len__(self) -> int:
        """Number of searchable (not removed) vectors."""
        return int(self._alive.sum())

    @property
    def n_identities(self) -> int:
        """Distinct identities among the searchable vectors."""
        return int(np.unique(self._labels[self._alive]).size)

    def labels_of(self, ids: Any) -> np.ndarray:
        """Identity label of each id; -1 for ids FAISS returns as padding (``-1``)."""
        a = _as_ids(ids, "ids")
        out = np.full(a.shape, -1, dtype=np.int64)
        ok = (a >= 0) & (a < self._labels.shape[0])
        out[ok] = self._labels[a[ok]]
        return out.reshape(np.shape(ids))

    # ------------------------------------------------------------------ search

    def _params(self) -> Any:
        if self.kind == "ivf":
            return faiss.SearchParametersIVF(nprobe=min(self.nprobe, self.nlist or 1))
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=self.ef_search)
            if self._masked:
                # Keep the selector objects alive for the duration of the search.
                self._sel_batch = faiss.IDSelectorBatch(np.flatnonzero(~self._alive))
                self._sel = faiss.IDSelectorNot(self._sel_batch)
                params.sel = self._sel
            return params
        return None

    def _search_prepared(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist, ids = self._index.search(q, k, params=self._params())
        scores = -np.sqrt(np.maximum(dist, 0.0)) if self.metric == "euclidean" else dist
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        return scores, ids.astype(np.int64)

    def _queries(self, queries: Any) -> np.ndarray:
        return self._prepare(_as_matrix(queries, self.dim, "queries",
                                        writable=self.metric == "cosine"), self.metric)

    def search(self, queries: Any, k: int, *, chunk_size: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` gallery images per query: ``(scores, ids)``, each ``(N, k)``, best first.

        Rows with fewer than ``k`` searchable vectors (or an approximate index that found fewer)
        are padded with id ``-1`` and score ``-inf``.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = self._queries(queries)
        step = self.chunk_size if chunk_size is None else int(chunk_size)
        if step < 1:
            raise ValueError(f"chunk_size must be >= 1, got {step}")
        scores = np.empty((q.shape[0], k), dtype=np.float32)
        ids = np.empty((q.shape[0], k), dtype=np.int64)
        for r0 in range(0, q.shape[0], step):
            scores[r0 : r0 + step], ids[r0 : r0 + step] = self._search_prepared(
                q[r0 : r0 + step], k)
        return scores, ids

    def _first_per_identity(self, scores: np.ndarray, ids: np.ndarray, k: int
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image hits (sorted per row) -> best hit per identity, first ``k`` identities per row."""
        n, depth = ids.shape
        lab = self.labels_of(ids)
        valid = lab >= 0
        key = np.arange(n, dtype=np.int64)[:, None] * (self._next_label + 1) + lab
        flat_pos = np.flatnonzero(valid.ravel())
        _, first = np.unique(key.ravel()[flat_pos], return_index=True)
        is_first = np.zeros(n * depth, dtype=bool)
        is_first[flat_pos[first]] = True
        is_first = is_first.reshape(n, depth)
        pos = np.cumsum(is_first, axis=1) - 1
        r, c = np.nonzero(is_first & (pos < k))
        out_s = np.full((n, k), -np.inf, dtype=np.float32)
        out_l = np.full((n, k), -1, dtype=np.int64)
        out_s[r, pos[r, c]] = scores[r, c]
        out_l[r, pos[r, c]] = lab[r, c]
        return out_s, out_l, is_first.sum(axis=1)

    def identity_rank_lists(
        self,
        queries: Any,
        k: int,
        *,
        depth: int | None = None,
        max_depth: int | None = None,
        chunk_size: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` identities per query: ``(scores, identity labels)``, each ``(N, k)``.

        An identity's score is its best image score (the ``nearest`` rule of ``Gallery``),
        taken among the top ``depth`` image hits (default ``max(2k, k + 16)``). With exact search
        this is exact as far as it goes: an identity that appears among the hits has its best
        image among them, so the distinct identities of the top ``depth`` hits are precisely the
        top identities of the full ranking. It only falls short when the hits cover fewer than
        ``k`` identities (one person with many near images); such rows are searched again with
        the depth doubled, up to ``max_depth`` (default: the whole gallery, i.e. always
        complete). Rows still short are padded with label ``-1`` and score ``-inf``: read them
        as "rank > what was searched". With ``ivf``/``hnsw`` the hits themselves are approximate,
        so an identity whose best image the index missed is scored by its next-best hit or
        missing; measure that with :func:`rank_agreement` against an exact index.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        total = max(1, int(self._index.ntotal))
        limit = total if max_depth is None else max(1, min(int(max_depth), total))
        start = min(limit, max(k, depth if depth is not None else max(2 * k, k + 16)))
        q = self._queries(queries)
        step = self.chunk_size if chunk_size is None else int(chunk_size)
        if step < 1:
            raise ValueError(f"chunk_size must be >= 1, got {step}")
        out_s = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        out_l = np.full((q.shape[0], k), -1, dtype=np.int64)
        for r0 in range(0, q.shape[0], step):
            rows = np.arange(r0, min(r0 + step, q.shape[0]))
            d = start
            while rows.size:
                s, ids = self._search_prepared(q[rows], d)
                ls, ll, found = self._first_per_identity(s, ids, k)
                out_s[rows], out_l[rows] = ls, ll
                # Short rows whose hits filled the depth might find more identities deeper.
                short = (found < k) & (ids[:, -1] >= 0)
                if d >= limit:
                    break
                rows = rows[short]
                d = min(limit, 2 * d)
        return out_s, out_l


def true_ranks(identities: np.ndarray, true_labels: Any) -> np.ndarray:
    """1-based rank of each query's true identity in its rank list; 0 when not in the list."""
    ids = np.asarray(identities)
    y = _as_ids(true_labels, "true_labels")
    if ids.ndim != 2 or ids.shape[0] != y.shape[0]:
        raise ValueError(f"identities must be (N, k) with N = {y.shape[0]}, got {ids.shape}")
    hit = ids == y[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0)


def cmc_from_lists(identities: np.ndarray, true_labels: Any) -> np.ndarray:
    """CMC over the list length: ``cmc[j]`` = fraction of queries with rank <= j + 1."""
    ranks = true_ranks(identities, true_labels)
    k = np.asarray(identities).shape[1]
    counts = np.bincount(ranks, minlength=k + 1)[1 : k + 1]
    return np.cumsum(counts) / max(1, ranks.size)


def rank_agreement(approx: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    """How well approximate lists match exact ones (same queries): rank-1 agreement and recall.

    ``rank1_agreement``: fraction of queries whose first entry is the same; ``recall``: mean
    fraction of each exact list's (valid, ``>= 0``) entries found anywhere in the approximate list.
    """
    a, e = np.asarray(approx), np.asarray(exact)
    if a.shape != e.shape or a.ndim != 2:
        raise ValueError(f"lists must have the same (N, k) shape, got {a.shape} and {e.shape}")
    if a.shape[0] == 0:
        raise ValueError("no queries to compare")
    rank1 = float(np.mean(a[:, 0] == e[:, 0]))
    found = np.array([np.isin(er[er >= 0], ar).mean() if (er >= 0).any() else 1.0
                      for ar, er in zip(a, e, strict=True)])
    return {"rank1_agreement": rank1, "recall": float(found.mean())}
