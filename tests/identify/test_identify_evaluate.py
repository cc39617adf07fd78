"""Closed-set identification evaluation: ranks against brute force, baselines, end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advface.data.records import identity_of
from advface.data.splits import make_closed_set_split
from advface.identify.embeddings import embed
from advface.identify.evaluate import evaluate_identification, identification_from_embeddings


def _clustered(noise: float, seed: int = 0, n_ids: int = 30, per: int = 3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, 8)) * 3
    g_keys, g_emb, p_keys, p_emb = [], [], [], []
    for i in range(n_ids):
        name = f"Person_{i:02d}"
        for j in range(per):
            g_keys.append(f"{name}/{name}_{j + 1:04d}.jpg")
            g_emb.append(centres[i] + noise * rng.normal(size=8))
        if i % 3:  # every third person is a distractor: gallery only
            p_keys.append(f"{name}/{name}_{per + 1:04d}.jpg")
            p_emb.append(centres[i] + noise * rng.normal(size=8))
    as_t = lambda a: torch.tensor(np.array(a), dtype=torch.float32)  # noqa: E731
    return as_t(g_emb), g_keys, as_t(p_emb), p_keys


def test_separated_identities_are_all_found():
    g, gk, p, pk = _clustered(noise=0.01)
    res = identification_from_embeddings(g, gk, p, pk, "euclidean")
    assert res.n_identities == 30 and res.n_probes == 20 and res.n_gallery == 90
    for mode in ("nearest", "centroid"):
        assert res.rank_k[mode] == {1: 1.0, 5: 1.0, 10: 1.0, 20: 1.0}
        assert res.classification[mode]["accuracy"] == 1.0
    assert res.random_rank_k == {1: 1 / 30, 5: 5 / 30, 10: 10 / 30, 20: 20 / 30}
    assert len(res.cmc["nearest"]) == 30 and res.random_cmc[-1] == 1.0
    assert "random" in res.table() and res.to_dict()["rank_k"]["nearest"]["1"] == 1.0


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_ranks_match_brute_force(metric):
    g, gk, p, pk = _clustered(noise=3.0, seed=1)
    res = identification_from_embeddings(g, gk, p, pk, metric, ks=(1, 2, 3, 7), probe_chunk=4)
    names = sorted({identity_of(k) for k in gk})
    gl = np.array([names.index(identity_of(k)) for k in gk])
    pl = np.array([names.index(identity_of(k)) for k in pk])
    gn, pn = g.double().numpy(), p.double().numpy()
    if metric == "euclidean":
        s = -np.linalg.norm(pn[:, None] - gn[None], axis=2)
    else:
        gn1 = gn / np.linalg.norm(gn, axis=1, keepdims=True)
        s = (pn / np.linalg.norm(pn, axis=1, keepdims=True)) @ gn1.T
    per_id = np.stack([s[:, gl == i].max(1) for i in range(len(names))], 1)
    rank = (per_id >= per_id[np.arange(len(pl)), pl][:, None]).sum(1)
    for k in (1, 2, 3, 7):
        assert res.rank_k["nearest"][k] == pytest.approx(np.mean(rank <= k))
    assert 0 < res.rank_k["nearest"][1] < 1  # the data is hard enough to be informative
    assert res.cmc["nearest"][6] == pytest.approx(res.rank_k["nearest"][7])


def test_open_set_probes_are_rejected():
    g, gk, p, _ = _clustered(noise=0.1)
    with pytest.raises(ValueError, match="closed-set"):
        identification_from_embeddings(g, gk, p[:1], ["Nobody/Nobody_0001.jpg"], "euclidean")


def test_evaluate_identification_end_to_end(tiny_lfw, tiny_chips, tiny_model, tmp_path):
    split = make_closed_set_split(tiny_lfw.records, min_images=2, seed=0)
    res = evaluate_identification(tiny_model, tiny_chips, split, cache_dir=tmp_path,
                                  progress=False)
    everyone = {r.identity for r in tiny_lfw.records}
    assert res.n_identities == len(everyone) > len(split.identities)  # distractors count
    assert res.n_probes == len(split.probes) and res.n_gallery == len(split.gallery)
    g = embed(tiny_model, tiny_chips, split.gallery, progress=False)
    p = embed(tiny_model, tiny_chips, split.probes, progress=False)
    ref = identification_from_embeddings(g, split.gallery, p, split.probes, "euclidean")
    assert res.rank_k == ref.rank_k
    assert res.random_rank_k[1] == pytest.approx(1 / len(everyone))
