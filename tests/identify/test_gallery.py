"""Gallery scores against brute-force numpy, chunking invariance, and the attackable scorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advface.identify.gallery import Gallery, GalleryScorer


def _brute_scores(q: np.ndarray, g: np.ndarray, metric: str) -> np.ndarray:
    q = q.astype(np.float64)
    g = g.astype(np.float64)
    if metric == "euclidean":
        return -np.sqrt(((q[:, None, :] - g[None, :, :]) ** 2).sum(-1))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    return qn @ gn.T


def _brute_identity(q, g, labels, n_ids, metric, mode):
    if mode == "nearest":
        s = _brute_scores(q, g, metric)
        out = np.full((q.shape[0], n_ids), -np.inf)
        for j, lab in enumerate(labels):
            out[:, lab] = np.maximum(out[:, lab], s[:, j])
        return out
    base = g.astype(np.float64)
    if metric == "cosine":
        base = base / np.linalg.norm(base, axis=1, keepdims=True)
    out = np.full((q.shape[0], n_ids), -np.inf)
    for i in range(n_ids):
        members = base[labels == i]
        if len(members):
            out[:, i] = _brute_scores(q, members.mean(0, keepdims=True), metric)[:, 0]
    return out


def _data(seed: int, g: int = 300, d: int = 12, n: int = 25, n_ids: int = 40):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(g, d)).astype(np.float32)
    labels = rng.integers(0, n_ids - 3, size=g)  # the last 3 identities have no images
    labels[: n_ids - 3] = np.arange(n_ids - 3)
    q = rng.normal(size=(n, d)).astype(np.float32)
    return emb, labels, q, [f"id{i:03d}" for i in range(n_ids)]


def _assert_scores_equal(got: torch.Tensor, ref: np.ndarray, atol: float = 2e-5):
    got = got.numpy()
    assert got.shape == ref.shape
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(got[finite], ref[finite], rtol=1e-5, atol=atol)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("mode", ["nearest", "centroid"])
def test_identity_scores_match_brute_force(metric, mode):
    emb, labels, q, names = _data(0)
    gal = Gallery(torch.from_numpy(emb), labels, names, metric, chunk_elems=333)
    ref = _brute_identity(q, emb, labels, len(names), metric, mode)
    _assert_scores_equal(gal.identity_scores(torch.from_numpy(q), mode), ref)
    assert np.isneginf(gal.identity_scores(torch.from_numpy(q), mode).numpy()[:, -3:]).all()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_image_scores_match_brute_force(metric):
    emb, labels, q, names = _data(1)
    gal = Gallery(torch.from_numpy(emb), labels, names, metric)
    _assert_scores_equal(gal.image_scores(torch.from_numpy(q)), _brute_scores(q, emb, metric))


@settings(max_examples=25, deadline=None)
@given(chunk=st.integers(1, 5000), seed=st.integers(0, 10_000),
       metric=st.sampled_from(["euclidean", "cosine"]), mode=st.sampled_from(["nearest",
                                                                              "centroid"]))
def test_chunked_equals_unchunked(chunk, seed, metric, mode):
    emb, labels, q, names = _data(seed, g=120, n=9, n_ids=30)
    big = Gallery(torch.from_numpy(emb), labels, names, metric, chunk_elems=1 << 30)
    small = Gallery(torch.from_numpy(emb), labels, names, metric, chunk_elems=chunk)
    qt = torch.from_numpy(q)
    a, b = big.identity_scores(qt, mode), small.identity_scores(qt, mode)
    if metric == "euclidean":
        assert torch.equal(a, b)  # elementwise distances do not depend on block shapes
    else:
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    ia, _ = big.rank_lists(qt, 5, mode)
    ib, _ = small.rank_lists(qt, 5, mode)
    assert torch.equal(ia[:, 0], ib[:, 0]) or torch.allclose(
        a.gather(1, ia[:, :1]), a.gather(1, ib[:, :1]), atol=1e-6)


def test_chunks_bound_the_score_block(monkeypatch):
    """No block of the probe x gallery matrix is larger than chunk_elems."""
    import advface.identify.gallery as gallery_mod

    emb, labels, q, names = _data(2, g=1000, n=50)
    sizes: list[int] = []
    original = gallery_mod.pair_scores

    def spy(a, b, metric):
        out = original(a, b, metric)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(gallery_mod, "pair_scores", spy)
    gal = Gallery(torch.from_numpy(emb), labels, names, "euclidean", chunk_elems=4000)
    gal.identity_scores(torch.from_numpy(q))
    assert max(sizes) <= 4000 and sum(sizes) == 50 * 1000  # every score, in small blocks


@pytest.mark.parametrize("mode", ["nearest", "centroid"])
def test_rank_lists_are_sorted_brute_force_top_k(mode):
    emb, labels, q, names = _data(3)
    gal = Gallery(torch.from_numpy(emb), labels, names, "euclidean", chunk_elems=500)
    idx, scores = gal.rank_lists(torch.from_numpy(q), 7, mode)
    ref = _brute_identity(q, emb, labels, len(names), "euclidean", mode)
    assert idx.shape == scores.shape == (len(q), 7)
    np.testing.assert_array_equal(idx.numpy(), np.argsort(-ref, axis=1, kind="stable")[:, :7])
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    assert gal.rank_lists(torch.from_numpy(q), 10_000, mode)[0].shape == (len(q), len(names))


def test_from_keys_counts_single_image_people_as_identities():
    keys = ["Ann/Ann_0001.jpg", "Ann/Ann_0002.jpg", "Bob/Bob_0001.jpg", "Cid/Cid_0001.jpg"]
    emb = torch.tensor([[0.0, 0.0], [0.0, 1.0], [5.0, 5.0], [-5.0, 5.0]])
    gal = Gallery.from_keys(emb, keys, "euclidean")
    assert gal.identity_names == ["Ann", "Bob", "Cid"]
    assert gal.labels.tolist() == [0, 0, 1, 2]
    q = torch.tensor([[0.0, 0.9], [-4.0, 4.0]])
    s = gal.identity_scores(q)
    assert s.argmax(1).tolist() == [0, 2]
    torch.testing.assert_close(s[0, 0], torch.tensor(-0.1))
    torch.testing.assert_close(gal.identity_scores(q, "centroid")[0, 0], torch.tensor(-0.4))


def test_bad_inputs_are_rejected():
    emb = torch.randn(4, 3)
    with pytest.raises(ValueError, match="metric"):
        Gallery(emb, [0, 0, 1, 1], ["a", "b"], "manhattan")
    with pytest.raises(ValueError, match="labels"):
        Gallery(emb, [0, 0, 1, 2], ["a", "b"], "euclidean")
    gal = Gallery(emb, [0, 0, 1, 1], ["a", "b"], "euclidean")
    with pytest.raises(ValueError, match="queries"):
        gal.identity_scores(torch.randn(2, 5))
    with pytest.raises(ValueError, match="mode"):
        gal.identity_scores(torch.randn(2, 3), "vote")


@pytest.mark.parametrize("mode", ["nearest", "centroid"])
def test_gallery_scorer_decision_and_gradients(tiny_model, tiny_chips, mode):
    from advface.identify.embeddings import embed

    keys = tiny_chips.keys
    emb = embed(tiny_model, tiny_chips, keys, progress=False)
    gal = Gallery.from_keys(emb[1:], keys[1:], tiny_model.metric, chunk_elems=7)
    scorer = GalleryScorer(tiny_model, gal, mode)
    assert scorer.n_classes == gal.n_identities and not scorer.training
    x = tiny_chips.load(keys).requires_grad_(True)  # 150x150, resized inside forward
    scores = scorer(x)
    assert scores.shape == (len(keys), gal.n_identities)
    idx, _ = gal.rank_lists(emb, 3, mode)
    assert torch.equal(scores.argmax(1), idx[:, 0])
    # Gallery images score themselves (distance 0): gradients must still be finite.
    loss = torch.nn.functional.cross_entropy(scores, idx[:, 1])
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_gallery_scorer_rejects_mismatched_dimension(tiny_model):
    gal = Gallery(torch.randn(3, 5), [0, 1, 1], ["a", "b"], "euclidean")
    with pytest.raises(ValueError, match="dimensions"):
        GalleryScorer(tiny_model, gal)


class _LinearFace(torch.nn.Module):
    """A linear embedder in float64 with the face-model attributes (toy scale)."""

    embedding_dim = 5

    def __init__(self, metric: str, input_size: int | None, side: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.metric = metric
        self.input_size = input_size
        self.fc = torch.nn.Linear(3 * side * side, self.embedding_dim).double()
        with torch.no_grad():
            for p in self.fc.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("mode", ["nearest", "centroid"])
@pytest.mark.parametrize(("input_size", "chunk_elems"), [(None, 1 << 22), (6, 3)])
def test_gallery_scorer_gradient_is_the_true_derivative(metric, mode, input_size, chunk_elems):
    """Attacks step along the GalleryScorer's input gradient; gradcheck (float64, central
    differences) verifies it is the derivative of the scores, through the resize, the metric,
    the per-identity maximum (also when the gallery is scored in blocks) and the centroids.
    The queries are kept clear of ties between an identity's images, where the maximum has no
    derivative."""
    side = 8
    model = _LinearFace(metric, input_size, input_size or side)
    g = torch.Generator().manual_seed(11)
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    gal = Gallery(torch.randn(len(labels), 5, generator=g), labels, ["a", "b", "c", "d"],
                  metric, chunk_elems=chunk_elems)
    scorer = GalleryScorer(model, gal, mode)
    x = torch.rand(2, 3, side, side, generator=g, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        sims = gal.image_scores(scorer.embed(x))
    lab = torch.tensor(labels)
    for i in range(4):  # an identity's best image wins clearly (no tie within 1e-3)
        top2 = sims[:, lab == i].topk(2, dim=1).values
        assert bool((top2[:, 0] - top2[:, 1] > 1e-3).all())
    assert torch.autograd.gradcheck(scorer, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)
    scorer(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0  # not a vacuous 0 == 0
