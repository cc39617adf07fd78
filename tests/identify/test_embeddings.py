"""Embedding cache: same numbers as calling the model, keyed by weights, incremental, resized."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from advface.identify.embeddings import embed, model_fingerprint, prepare_input, preprocessing_id


def _direct(model, chips, keys):
    """Reference: resize exactly as documented, then call the model in eval mode."""
    with torch.no_grad():
        x = F.interpolate(chips.load(keys), size=(model.input_size,) * 2, mode="bilinear",
                          antialias=True, align_corners=False)
        return model.eval()(x)


def test_embed_matches_direct_forward_and_orders_rows(tiny_chips, tiny_model, tiny_face):
    keys = list(reversed(tiny_chips.keys))
    got = embed(tiny_model, tiny_chips, keys, batch_size=3, progress=False)
    assert got.shape == (len(keys), 8) and got.dtype == torch.float32
    torch.testing.assert_close(got, _direct(tiny_face(), tiny_chips, keys), rtol=1e-5, atol=1e-6)


def test_cache_is_reused_and_extended_incrementally(tiny_chips, tiny_model, tmp_path, tiny_face):
    keys = tiny_chips.keys
    first = embed(tiny_model, tiny_chips, keys[:4], cache_dir=tmp_path, progress=False)
    assert tiny_model.calls == 4
    files = list((tmp_path / "embeddings").rglob("*.safetensors"))
    assert len(files) == 1 and tiny_chips.chipset_id in files[0].name
    again = embed(tiny_model, tiny_chips, keys[:4], cache_dir=tmp_path, progress=False)
    assert tiny_model.calls == 4  # nothing recomputed
    assert torch.equal(first, again)
    more = embed(tiny_model, tiny_chips, keys, cache_dir=tmp_path, progress=False)
    assert tiny_model.calls == len(keys)  # only the missing ones
    assert torch.equal(more[:4], first)
    # A fresh process (new model object with the same weights) reads the same file.
    other = tiny_face()
    assert torch.equal(embed(other, tiny_chips, keys, cache_dir=tmp_path, progress=False), more)
    assert other.calls == 0


def test_different_weights_do_not_share_a_cache(tiny_chips, tmp_path, tiny_face):
    a, b = tiny_face(seed=0), tiny_face(seed=1)
    assert model_fingerprint(a) != model_fingerprint(b)
    assert model_fingerprint(a) == model_fingerprint(tiny_face(seed=0))
    ea = embed(a, tiny_chips, cache_dir=tmp_path, progress=False)
    eb = embed(b, tiny_chips, cache_dir=tmp_path, progress=False)
    assert b.calls == len(tiny_chips) and not torch.allclose(ea, eb)
    with torch.no_grad():
        b.fc.bias.add_(1.0)  # edited in place: a new fingerprint, so recomputed
    embed(b, tiny_chips, cache_dir=tmp_path, progress=False)
    assert b.calls == 2 * len(tiny_chips)


def test_corrupt_cache_is_recomputed(tiny_chips, tiny_model, tmp_path):
    ref = embed(tiny_model, tiny_chips, cache_dir=tmp_path, progress=False)
    (path,) = list((tmp_path / "embeddings").rglob("*.safetensors"))
    path.write_bytes(b"garbage")
    again = embed(tiny_model, tiny_chips, cache_dir=tmp_path, progress=False)
    assert torch.equal(ref, again) and tiny_model.calls == 2 * len(tiny_chips)


def test_training_mode_is_restored_and_eval_used(tiny_chips, tiny_face):
    model = tiny_face().train()
    out = embed(model, tiny_chips, progress=False)
    assert model.training
    torch.testing.assert_close(out, _direct(tiny_face(), tiny_chips, tiny_chips.keys))


def test_each_modules_own_mode_is_restored(tiny_chips, tiny_face):
    """A training-mode wrapper around an eval-mode model: each gets its own mode back."""
    inner = tiny_face().eval()
    wrapper = torch.nn.Sequential(inner)
    wrapper.embedding_dim, wrapper.input_size = inner.embedding_dim, inner.input_size
    embed(wrapper, tiny_chips, progress=False)
    assert wrapper.training and not any(m.training for m in inner.modules())


def test_tensor_source(tiny_chips, tiny_model, tmp_path, tiny_face):
    x = tiny_chips.load(tiny_chips.keys[:5])
    out = embed(tiny_model, x, batch_size=2, cache_dir=tmp_path, progress=False)
    torch.testing.assert_close(out, _direct(tiny_face(), tiny_chips, tiny_chips.keys[:5]))
    embed(tiny_model, x, cache_dir=tmp_path, progress=False)
    assert tiny_model.calls == 5
    embed(tiny_model, x.flip(0), cache_dir=tmp_path, progress=False)  # new content
    assert tiny_model.calls == 10


def test_prepare_input_resizes_differentiably():
    x = torch.rand(2, 3, 150, 150, requires_grad=True)
    assert prepare_input(x, 150) is x
    y = prepare_input(x, 64)
    assert y.shape == (2, 3, 64, 64)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert preprocessing_id(150, 150) == "native150" != preprocessing_id(150, 64)


def test_same_keys_from_another_data_set_get_their_own_embeddings(tmp_path, tiny_model,
                                                                  tiny_face):
    """Two data sets with the same names in one cache: the second never gets the first's
    embeddings (chips re-aligned, cache rows keyed by what the chip was made from)."""
    from advface.align.chips import build_chips
    from advface.data.lfw import open_lfw
    from advface.data.synthetic import make_tiny_lfw

    cache = tmp_path / "cache"
    sets = [open_lfw(make_tiny_lfw(tmp_path / f"set{s}", n_people=3, images_per_person=(2, 2),
                                   size=96, seed=s), cache) for s in (0, 1)]
    assert [r.key for r in sets[0].records] == [r.key for r in sets[1].records]
    out = []
    for lfw in (*sets, sets[0]):
        chips = build_chips(lfw.records, cache, upsample=0, workers=1, progress=False)
        got = embed(tiny_model, chips, cache_dir=cache, progress=False)
        torch.testing.assert_close(got, _direct(tiny_face(), chips, chips.keys))
        out.append(got)
    assert not torch.allclose(out[0], out[1])
    assert torch.equal(out[0], out[2])
    assert tiny_model.calls == 2 * len(out[0])  # the way back is served from the cache


def test_state_a_model_builds_on_its_first_forward_stays_attackable(tiny_chips, tiny_face):
    """embed() must not leave inference-mode tensors behind: a model that builds a table on its
    first forward (positional or rotary caches do) would keep one and fail when attacked."""
    from advface.attacks import PGD, Budget, Dodging

    class Lazy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = tiny_face().eval()
            self.embedding_dim, self.input_size = self.inner.embedding_dim, self.inner.input_size
            self.table: torch.Tensor | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.table is None:
                self.table = torch.linspace(0.5, 1.5, self.embedding_dim)
            return self.inner(x) * self.table

    model = Lazy()
    x = F.interpolate(tiny_chips.load(tiny_chips.keys[:3]), size=model.input_size)
    gallery = F.normalize(embed(model, x, progress=False), dim=1)
    assert model.table is not None and not model.table.is_inference()

    class Scores(torch.nn.Module):  # cosine to the three embeddings: identity scores
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return F.normalize(model(images), dim=1) @ gallery.T

    res = PGD(Budget.from_8bit("linf", 4), steps=2).run(Scores(), x, Dodging(torch.arange(3)),
                                                         seed=0)
    assert res.adv.shape == x.shape
