"""The dlib port on all of real LFW: the published accuracy must be reproduced (slow).

Aligns every image (about 10 minutes on 2 cores the first time; chips are cached under
``advface.paths.default_cache_dir()``), embeds them with the PyTorch port of dlib's ResNet, then
checks LFW 10-fold verification (dlib reports 99.38%) and closed-set identification on the
default split (one probe per person with >= 2 images against everyone else's images).
"""

from __future__ import annotations

import pytest

from advface.align.chips import build_chips
from advface.data.splits import make_closed_set_split
from advface.errors import DataError
from advface.identify.embeddings import embed
from advface.identify.evaluate import evaluate_identification
from advface.identify.verification import verify_lfw_pairs
from advface.paths import default_cache_dir, default_data_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lfw_chips():
    from advface.data.lfw import open_lfw

    try:
        lfw = open_lfw(default_data_dir(), default_cache_dir())
    except DataError as err:
        pytest.skip(f"real LFW not available: {err.message}")
    if len(lfw.records) != 13233:
        pytest.skip(f"expected the full LFW (13,233 images), found {len(lfw.records)}")
    chips = build_chips(lfw.records, default_cache_dir(), progress=False)
    assert not chips.problems and len(chips) == 13233
    return lfw, chips


@pytest.fixture(scope="module")
def dlib_model():
    from advface.models.dlib_resnet import load_dlib_resnet

    return load_dlib_resnet()


def test_verification_reproduces_dlib(lfw_chips, dlib_model):
    lfw, chips = lfw_chips
    pairs = lfw.pairs()
    keys = sorted({k for p in pairs for k in (p.key_a, p.key_b)})
    emb = embed(dlib_model, chips, keys, cache_dir=default_cache_dir(), progress=False)
    res = verify_lfw_pairs(dict(zip(keys, emb, strict=True)), pairs, "euclidean")
    assert res["n_pairs"] == 6000
    assert res["mean_accuracy"] >= 0.99
    assert res["auc"] >= 0.99


def test_identification_on_default_split(lfw_chips, dlib_model):
    lfw, chips = lfw_chips
    split = make_closed_set_split(lfw.records, min_images=2, probes_per_person=1, seed=0)
    res = evaluate_identification(dlib_model, chips, split, cache_dir=default_cache_dir(),
                                  progress=False)
    assert res.n_probes == 1680 and res.n_gallery == 11553 and res.n_identities == 5749
    assert res.rank_k["nearest"][1] >= 0.95
    assert res.rank_k["nearest"][20] >= res.rank_k["nearest"][1]
    assert res.rank_k["centroid"][1] >= 0.9
