"""FAISS gallery search vs brute force: exact ranks, chunking, distractors, approximate recall."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advface.identify.gallery import Gallery
from advface.identify.search import (
    GalleryIndex,
    cmc_from_lists,
    default_nlist,
    rank_agreement,
    true_ranks,
)


def clustered(n_ids: int, per_id: int, dim: int, seed: int, spread: float = 0.35
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Identity centres plus per-image noise: gallery, gallery labels, and the centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, dim)).astype(np.float32)
    counts = rng.integers(1, per_id + 1, size=n_ids)
    labels = np.repeat(np.arange(n_ids), counts)
    emb = centres[labels] + spread * rng.standard_normal((labels.size, dim)).astype(np.float32)
    return emb.astype(np.float32), labels, centres


def probes_for(centres: np.ndarray, n: int, seed: int, spread: float = 0.35
               ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, centres.shape[0], size=n)
    q = centres[y] + spread * rng.standard_normal((n, centres.shape[1])).astype(np.float32)
    return q.astype(np.float32), y


def brute_scores(q: np.ndarray, g: np.ndarray, metric: str) -> np.ndarray:
    q64, g64 = q.astype(np.float64), g.astype(np.float64)
    if metric == "cosine":
        q64 = q64 / np.linalg.norm(q64, axis=1, keepdims=True)
        g64 = g64 / np.linalg.norm(g64, axis=1, keepdims=True)
        return q64 @ g64.T
    return -np.sqrt(((q64[:, None, :] - g64[None, :, :]) ** 2).sum(-1))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_search_equals_brute_force(metric: str) -> None:
    g, labels, centres = clustered(60, 4, 16, seed=1)
    q, _ = probes_for(centres, 50, seed=2)
    index = GalleryIndex(g, labels, metric, kind="exact")
    scores, ids = index.search(q, 10)
    ref = brute_scores(q, g, metric)
    order = np.argsort(-ref, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_allclose(scores, np.take_along_axis(ref, order, 1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_identity_rank_lists_equal_gallery_rank_lists(metric: str) -> None:
    # Some identities have many images so the first search depth covers too few identities:
    # the depth doubling must still give the exact ranking.
    g, labels, centres = clustered(40, 12, 12, seed=3, spread=0.2)
    q, y = probes_for(centres, 64, seed=4, spread=0.2)
    k = 25
    ref_ids, ref_scores = Gallery(torch.from_numpy(g), torch.from_numpy(labels),
                                  [f"p{i}" for i in range(40)], metric).rank_lists(
                                      torch.from_numpy(q), k)
    index = GalleryIndex(g, labels, metric, kind="exact")
    scores, ids = index.identity_rank_lists(q, k, depth=k)
    np.testing.assert_array_equal(ids, ref_ids.numpy())
    np.testing.assert_allclose(scores, ref_scores.numpy(), rtol=1e-4, atol=1e-4)
    ranks = true_ranks(ids, y)
    full = Gallery(torch.from_numpy(g), torch.from_numpy(labels), [f"p{i}" for i in range(40)],
                   metric).identity_scores(torch.from_numpy(q))
    from advface.metrics.identification import rank_of_true

    np.testing.assert_array_equal(np.where(ranks == 0, k + 1, ranks),
                                  np.minimum(rank_of_true(full.numpy(), y), k + 1))
    cmc = cmc_from_lists(ids, y)
    assert cmc.shape == (k,) and np.all(np.diff(cmc) >= 0)


def test_capped_depth_pads_rows_that_are_short() -> None:
    # One identity with 30 images right next to the probe: depth 8 sees only that identity.
    rng = np.random.default_rng(0)
    near = 0.01 * rng.standard_normal((30, 8)).astype(np.float32)
    far = 5 + rng.standard_normal((10, 8)).astype(np.float32)
    g = np.concatenate([near, far])
    labels = np.concatenate([np.zeros(30, np.int64), np.arange(1, 11)])
    index = GalleryIndex(g, labels, "euclidean")
    q = np.zeros((1, 8), np.float32)
    s, ids = index.identity_rank_lists(q, 3, depth=8, max_depth=8)
    assert ids[0].tolist() == [0, -1, -1] and np.isneginf(s[0, 1:]).all()
    s, ids = index.identity_rank_lists(q, 3, depth=8)  # default: deepen until complete
    assert ids[0, 0] == 0 and (ids[0, 1:] > 0).all()


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_chunked_equals_unchunked(kind: str) -> None:
    g, labels, centres = clustered(50, 3, 16, seed=5)
    q, _ = probes_for(centres, 37, seed=6)
    index = GalleryIndex(g, labels, "cosine", kind=kind, seed=0)
    whole = index.search(q, 7, chunk_size=1000)
    for step in (1, 5, 16):
        part = index.search(q, 7, chunk_size=step)
        np.testing.assert_array_equal(part[1], whole[1])
        np.testing.assert_array_equal(part[0], whole[0])
        lists = index.identity_rank_lists(q, 5, chunk_size=step)
        ref = index.identity_rank_lists(q, 5, chunk_size=1000)
        np.testing.assert_array_equal(lists[1], ref[1])


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_distractors_add_then_remove_restores_results(kind: str) -> None:
    g, labels, centres = clustered(80, 3, 16, seed=7)
    q, y = probes_for(centres, 40, seed=8)
    index = GalleryIndex(g, labels, "euclidean", kind=kind, nlist=3, nprobe=2, seed=0)
    before = index.identity_rank_lists(q, 5)
    # Distractors sitting right on the probes must take rank 1 and carry fresh labels.
    ids = index.add_distractors(q + 1e-3)
    assert len(index) == g.shape[0] + q.shape[0]
    new_labels = index.labels_of(ids)
    assert new_labels.min() == 80 and np.unique(new_labels).size == q.shape[0]
    assert index.n_identities == 80 + q.shape[0]
    _, with_d = index.identity_rank_lists(q, 5)
    np.testing.assert_array_equal(with_d[:, 0], new_labels)
    assert (true_ranks(with_d, y) != 1).all()
    assert index.remove(ids) == q.shape[0]
    assert index.remove(ids) == 0  # already gone
    assert len(index) == g.shape[0]
    after = index.identity_rank_lists(q, 5)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0], rtol=1e-5)


def test_hnsw_masks_few_removals_and_rebuilds_after_many() -> None:
    g, labels, centres = clustered(60, 2, 8, seed=9)
    index = GalleryIndex(g, labels, "cosine", kind="hnsw")
    q, _ = probes_for(centres, 10, seed=10)
    _, top = index.search(q, 1)
    index.remove(top[:3, 0])  # few: masked, the graph keeps them
    _, ids = index.search(q, 5)
    assert not np.isin(ids, top[:3, 0]).any()
    everything_but = np.setdiff1d(np.arange(g.shape[0]), [0, 1, 2])
    index.remove(everything_but)  # most: rebuilt from the survivors
    assert len(index) == 3 - int(np.isin([0, 1, 2], top[:3, 0]).sum())
    _, ids = index.search(q, 3)
    valid = ids[ids >= 0]
    assert set(valid.tolist()) <= {0, 1, 2} - set(top[:3, 0].tolist())


def test_approximate_recall_on_synthetic_set() -> None:
    """Approximate indexes against exact search: recall grows with effort and is reported."""
    g, labels, centres = clustered(1500, 3, 32, seed=11)
    q, _ = probes_for(centres, 200, seed=12)
    exact = GalleryIndex(g, labels, "cosine", kind="exact").identity_rank_lists(q, 10)[1]
    nlist = default_nlist(g.shape[0])
    ivf = GalleryIndex(g, labels, "cosine", kind="ivf", nlist=nlist, seed=0)
    report = {}
    for nprobe in (1, 8, nlist):
        ivf.nprobe = nprobe
        report[f"ivf nprobe={nprobe}/{nlist}"] = rank_agreement(
            ivf.identity_rank_lists(q, 10)[1], exact)
    hnsw = GalleryIndex(g, labels, "cosine", kind="hnsw", seed=0)
    for ef in (10, 64):
        hnsw.ef_search = ef
        report[f"hnsw ef={ef}"] = rank_agreement(hnsw.identity_rank_lists(q, 10)[1], exact)
    print("approximate vs exact:", report)
    recalls = [r["recall"] for name, r in report.items() if name.startswith("ivf")]
    assert recalls[0] < recalls[1] < recalls[2] == 1.0  # visiting every cell is exact
    assert report[f"ivf nprobe=8/{nlist}"]["rank1_agreement"] >= 0.9
    assert report["hnsw ef=64"]["recall"] >= 0.95
    assert report["hnsw ef=64"]["rank1_agreement"] >= 0.95
    assert report["hnsw ef=10"]["recall"] <= report["hnsw ef=64"]["recall"]


def test_input_validation() -> None:
    g = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="metric"):
        GalleryIndex(g, [0, 1, 2, 3], "manhattan")
    with pytest.raises(ValueError, match="kind"):
        GalleryIndex(g, [0, 1, 2, 3], "cosine", kind="lsh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels"):
        GalleryIndex(g, [0, 1], "cosine")
    index = GalleryIndex(g, [0, 1, 2, 3], "cosine")
    with pytest.raises(ValueError, match="columns"):
        index.search(np.ones((2, 4), np.float32), 1)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 3), np.nan, np.float32), 1)
    with pytest.raises(ValueError, match="nlist"):
        GalleryIndex(g, [0, 1, 2, 3], "cosine", kind="ivf", nlist=10)
    s, ids = index.search(np.ones((1, 3), np.float32), 6)  # k > gallery: padded
    assert (ids[0, 4:] == -1).all() and np.isneginf(s[0, 4:]).all()


def test_callers_arrays_are_not_modified() -> None:
    g, labels, centres = clustered(20, 2, 8, seed=13)
    q, _ = probes_for(centres, 5, seed=14)
    g0, q0 = g.copy(), q.copy()
    index = GalleryIndex(g, labels, "cosine")  # normalises its own copy, not the caller's
    index.add_distractors(g)
    index.search(q, 3)
    index.identity_rank_lists(torch.from_numpy(q), 3)
    np.testing.assert_array_equal(g, g0)
    np.testing.assert_array_equal(q, q0)
    buffer = g.copy()
    GalleryIndex(memoryview(buffer), labels, "cosine")  # any buffer, not only an ndarray
    np.testing.assert_array_equal(buffer, g0)
