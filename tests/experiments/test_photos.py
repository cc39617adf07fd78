"""`advface attack photos`: a few real LFW photos attacked against a gallery folder with dlib."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from advface.cli.main import app
from advface.data.images import load_rgb
from advface.errors import ConfigError, DataError
from advface.experiments.photos import attack_photos


def _photos(bits: dict) -> list[Path]:
    return [bits["photos"] / k for k in bits["held_out"]]


def test_dodging_fools_dlib_and_every_number_is_measured_on_the_saved_files(lfw_bits, tmp_path,
                                                                          monkeypatch):
    # The panel is drawn without switching the process's matplotlib backend (a notebook
    # calling attack_photos would stop showing its own figures).
    monkeypatch.setattr(matplotlib, "use", lambda *a, **k: pytest.fail("matplotlib.use called"))
    out = tmp_path / "out"
    got = attack_photos(_photos(lfw_bits), lfw_bits["gallery"], out, eps_8bit=8,
                        cache_dir=lfw_bits["cache"], progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gallery_identities"] == len(list(lfw_bits["gallery"].iterdir()))
    assert summary["chance_rank1"] == pytest.approx(1 / summary["gallery_identities"])
    for o, key in zip(got, lfw_bits["held_out"], strict=True):
        person = key.split("/")[0]
        assert o.clean_top[0][0] == person and o.label == person  # dlib knows them clean
        assert o.label_from == "clean decision" and o.align_method == "dlib"
        assert o.success and o.adv_top[0][0] != person
        clean = load_rgb(out / o.clean_png).astype(int)
        adv = load_rgb(out / o.adv_png).astype(int)
        assert np.abs(adv - clean).max() == round(o.linf_8bit) <= 8
        diff = load_rgb(out / o.diff_png).astype(int)
        assert np.array_equal(diff, np.clip(128 + 10 * (adv - clean), 0, 255))
        assert 0.9 < o.ssim < 1.0 and o.psnr > 30
    assert [p["success"] for p in summary["photos"]] == [True, True]
    with Image.open(out / "panel.png") as im:
        assert im.size[0] > 500 and im.size[1] > 2 * 200


def test_impersonation_and_a_photo_of_a_gallery_image(lfw_bits, tmp_path):
    # A gallery image given as a photo is left out of the gallery: matched to itself it would
    # be decided at distance 0, which is no recognition at all.
    in_gallery = sorted((lfw_bits["gallery"] / "Abdoulaye_Wade").glob("*.jpg"))[0]
    target = "Abdullah_Gul"
    got = attack_photos([in_gallery], lfw_bits["gallery"], tmp_path / "imp",
                        goal="impersonation", target=target, eps_8bit=8,
                        params={"steps": 20}, cache_dir=lfw_bits["cache"], progress=False)
    (o,) = got
    summary = json.loads((tmp_path / "imp" / "summary.json").read_text())
    assert summary["gallery_excluded_as_photo"] == [f"Abdoulaye_Wade/{in_gallery.name}"]
    assert o.clean_top[0][0] == "Abdoulaye_Wade" and o.clean_top[0][1] < -0.1  # his others
    assert o.label == target and o.label_from == "target" and o.attempted
    assert o.success == (o.adv_top[0][0] == target)
    assert o.success  # 20 steps at 8/255 move dlib's decision to the target
    assert summary["n_attempted"] == 1 and summary["success_rate"] == 1.0
    # Impersonating whom the model already names: nothing to change, not in the rate.
    (same,) = attack_photos([in_gallery], lfw_bits["gallery"], tmp_path / "same",
                            goal="impersonation", target="Abdoulaye_Wade", eps_8bit=8,
                            params={"steps": 2}, cache_dir=lfw_bits["cache"], progress=False)
    summary = json.loads((tmp_path / "same" / "summary.json").read_text())
    assert not same.attempted and summary["n_attempted"] == 0
    assert summary["success_rate"] is None


def test_bad_input_is_named_with_the_fix(lfw_bits, tmp_path):
    kw = {"cache_dir": lfw_bits["cache"], "progress": False}
    gallery, photos = lfw_bits["gallery"], _photos(lfw_bits)
    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(blank)
    with pytest.raises(DataError, match="no face found") as err:
        attack_photos([blank], gallery, tmp_path / "o", **kw)
    assert "wall.png" in str(err.value) and "--aligned" in str(err.value)
    with pytest.raises(DataError, match="aligned chip must be 150x150"):
        attack_photos([blank], gallery, tmp_path / "o", aligned=True, **kw)
    with pytest.raises(DataError, match="photo not found"):
        attack_photos([tmp_path / "nope.jpg"], gallery, tmp_path / "o", **kw)
    with pytest.raises(ConfigError, match="not a gallery identity") as err:
        attack_photos(photos, gallery, tmp_path / "o", goal="impersonation",
                      target="abdullah", **kw)
    assert "Abdullah_Gul" in str(err.value)  # close names are offered
    with pytest.raises(ConfigError, match="needs a target"):
        attack_photos(photos, gallery, tmp_path / "o", goal="impersonation", **kw)
    with pytest.raises(ConfigError, match="no hyper-parameter"):
        attack_photos(photos, gallery, tmp_path / "o", params={"stepz": 3}, **kw)
    with pytest.raises(ConfigError, match="cannot attack single photos"):
        attack_photos(photos, gallery, tmp_path / "o", attack="universal", **kw)
    with pytest.raises(ConfigError, match="needs a budget"):
        attack_photos(photos, gallery, tmp_path / "o", eps_8bit=None, **kw)
    for eps in (math.inf, -1.0):
        with pytest.raises(ConfigError, match="finite budget >= 0"):
            attack_photos(photos, gallery, tmp_path / "o", eps_8bit=eps, search_min_eps=True,
                          **kw)
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_cli(lfw_bits, tmp_path):
    runner = CliRunner()
    base = ["attack", "photos", *map(str, _photos(lfw_bits)), "--gallery",
            str(lfw_bits["gallery"]), "--cache", str(lfw_bits["cache"]), "--no-progress"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "cw"), "--attack", "deepfool",
                              "--norm", "l2", "--no-budget"])
    assert res.exit_code == 0, res.output
    assert res.output.count("FOOLED") == 2 and "2/2 fooled" in res.output
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "x"), "--param", "steps"])
    # (`advface` turns this error into one line on stderr and exit status 2)
    assert isinstance(res.exception, ConfigError) and "KEY=VALUE" in str(res.exception)
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "y"), "--eps", "1",
                              "--param", "steps=2", "--attack", "bim"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "y" / "summary.json").read_text())
    assert summary["params"] == {"steps": 2} and summary["attack"] == "bim"
    assert all(p["linf_8bit"] <= 1.0 + 1e-4 for p in summary["photos"])  # float32 sums
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "z"), "--eps", "4", "--min-eps",
                              "--param", "steps=3"])
    assert res.exit_code == 0, res.output
    assert res.output.count(" from eps ") + res.output.count(" up to eps 4/255") == 2


def test_unusable_gallery_images_are_listed_not_dropped(lfw_bits, tmp_path):
    import shutil

    gallery = tmp_path / "gallery"
    shutil.copytree(lfw_bits["gallery"], gallery)
    good = sorted((gallery / "Abdullah_Gul").glob("*.jpg"))[0]
    broken = gallery / "Abdullah_Gul" / "Abdullah_Gul_0099.jpg"
    broken.write_bytes(good.read_bytes()[:200])  # a truncated download
    said: list[str] = []
    attack_photos(_photos(lfw_bits)[:1], gallery, tmp_path / "out", eps_8bit=8,
                  params={"steps": 2}, cache_dir=lfw_bits["cache"], progress=False,
                  log=said.append)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["gallery_skipped"]) == 1 and "Abdullah_Gul_0099.jpg" in said[0]
    assert summary["gallery_images"] == len(list(gallery.glob("*/*.jpg"))) - 1


def test_min_eps_finds_the_smallest_fooling_budget(lfw_bits, tmp_path):
    """By how little: the image at the found eps fools the model (on the saved file), and the
    same attack one grey level lower does not (bisection tested exactly that budget)."""
    photo = _photos(lfw_bits)[1:]
    kw = {"cache_dir": lfw_bits["cache"], "progress": False, "goal": "impersonation",
          "target": "Aaron_Peirsol", "params": {"steps": 5}}
    (o,) = attack_photos(photo, lfw_bits["gallery"], tmp_path / "min", eps_8bit=8,
                         search_min_eps=True, **kw)
    summary = json.loads((tmp_path / "min" / "summary.json").read_text())
    assert summary["min_eps_grid_8bit"] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert o.success and o.min_eps_8bit is not None and 1 <= o.min_eps_8bit <= 8
    assert o.linf_8bit <= o.min_eps_8bit + 1e-4
    if o.min_eps_8bit > 1:  # 2/255 on this machine; another CPU's float rounding may differ
        (below,) = attack_photos(photo, lfw_bits["gallery"], tmp_path / "below",
                                 eps_8bit=o.min_eps_8bit - 1, **kw)
        assert not below.success
    (at,) = attack_photos(photo, lfw_bits["gallery"], tmp_path / "at",
                          eps_8bit=o.min_eps_8bit, **kw)
    assert at.success
    with pytest.raises(ConfigError, match="minimal-eps search"):
        attack_photos(photo, lfw_bits["gallery"], tmp_path / "x", attack="cw", norm="l2",
                      eps_8bit=None, search_min_eps=True, cache_dir=lfw_bits["cache"])


def test_the_gallery_defaults_to_the_data_set(lfw_bits, tmp_path, monkeypatch):
    monkeypatch.setenv("ADVFACE_DATA", str(lfw_bits["gallery"]))
    res = CliRunner().invoke(app, ["attack", "photos", str(_photos(lfw_bits)[0]), "--out",
                                   str(tmp_path / "o"), "--cache", str(lfw_bits["cache"]),
                                   "--param", "steps=2", "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["gallery"] == str(lfw_bits["gallery"])


def test_photos_in_batches_give_the_same_images(lfw_bits, tmp_path):
    """BIM is deterministic per image, so attacking one photo at a time gives the images of
    attacking both at once (identical here; a few values may differ elsewhere, where batched
    convolutions round differently and flip a gradient sign)."""
    kw = {"cache_dir": lfw_bits["cache"], "progress": False, "attack": "bim", "eps_8bit": 2,
          "params": {"steps": 3}}
    together = attack_photos(_photos(lfw_bits), lfw_bits["gallery"], tmp_path / "a", **kw)
    alone = attack_photos(_photos(lfw_bits), lfw_bits["gallery"], tmp_path / "b",
                          batch_size=1, **kw)
    for x, y in zip(together, alone, strict=True):
        same = load_rgb(tmp_path / "a" / x.adv_png) == load_rgb(tmp_path / "b" / y.adv_png)
        assert same.mean() > 0.99
        assert x.success == y.success
    with pytest.raises(ConfigError, match="batch_size"):
        attack_photos(_photos(lfw_bits), lfw_bits["gallery"], tmp_path / "c", batch_size=0,
                      cache_dir=lfw_bits["cache"])
