"""`advface attack photos` against a user's own gallery folder (generated data): what of the
folder is not used is logged and listed in summary.json, and layout mistakes are named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from advface.cli.main import app
from advface.data.synthetic import TREE_NAME, make_tiny_lfw
from advface.errors import DataError
from advface.experiments.photos import attack_photos

runner = CliRunner()


@pytest.fixture
def bits(tmp_path: Path) -> dict[str, Path]:
    """A 4-person gallery folder (no protocol files) and an aligned 150x150 chip to attack."""
    src = make_tiny_lfw(tmp_path / "src", n_people=4, images_per_person=(3, 3))
    gallery = Path(shutil.copytree(src / TREE_NAME, tmp_path / "gallery"))
    chip = tmp_path / "photos" / "chip.png"
    chip.parent.mkdir()
    with Image.open(gallery / "Ada_Quill" / "Ada_Quill_0001.jpg") as im:
        im.convert("RGB").resize((150, 150)).save(chip)
    return {"gallery": gallery, "chip": chip, "cache": tmp_path / "cache", "src": src}


def _attack(bits: dict[str, Path], out: Path, said: list[str]) -> dict:
    attack_photos([bits["chip"]], bits["gallery"], out, attack="fgsm", eps_8bit=2,
                  aligned=True, cache_dir=bits["cache"], progress=False, log=said.append)
    return json.loads((out / "summary.json").read_text())


def test_ignored_gallery_items_are_logged_and_listed(bits: dict[str, Path],
                                                     tmp_path: Path) -> None:
    gallery = bits["gallery"]
    (gallery / "notes.txt").write_text("who is who\n")
    (gallery / "Empty_Person").mkdir()
    (gallery / "Bruno_Rowe" / "old").mkdir()
    shutil.copy(gallery / "Bruno_Rowe" / "Bruno_Rowe_0001.jpg", gallery / "Bruno_Rowe" / "old")
    blank = gallery / "Chloe_Sato" / "Chloe_Sato_0009.jpg"
    Image.fromarray(np.full((250, 250, 3), 90, np.uint8)).save(blank)  # no face in it
    said: list[str] = []
    summary = _attack(bits, tmp_path / "out", said)

    ignored = summary["gallery_ignored"]
    assert len(ignored) == 3
    for bad in ("notes.txt", "Empty_Person", "old"):
        assert any(bad in item for item in ignored), bad
    line = next(m for m in said if m.startswith("ignored 3 item(s) of the gallery folder"))
    assert "notes.txt" in line and "Empty_Person" in line

    crops = summary["gallery_fallback_crops"]
    assert str(blank) in crops
    line = next(m for m in said if m.startswith(f"no face found in {len(crops)} gallery"))
    assert "centre crop" in line
    assert summary["gallery_images"] == 13  # 12 + the blank, enrolled as a crop


def test_a_flat_gallery_folder_is_named_for_what_it_is(bits: dict[str, Path],
                                                       tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in bits["gallery"].glob("*/*.jpg"):
        shutil.copy(f, flat / f.name)
    res = runner.invoke(app, ["attack", "photos", str(bits["chip"]), "--aligned", "--gallery",
                              str(flat), "--out", str(tmp_path / "o"), "--cache",
                              str(bits["cache"]), "--no-progress"])
    err = res.exception
    assert isinstance(err, DataError), res.output
    assert "directly in the folder" in err.message and err.path == flat
    assert "--gallery needs one sub-folder per person" in (err.fix or "")
    assert "--data" not in str(err) and "lfw-deepfunneled" not in str(err)
    (tmp_path / "hollow" / "Someone").mkdir(parents=True)
    with pytest.raises(DataError, match="no images in per-person sub-folders") as info:
        attack_photos([bits["chip"]], tmp_path / "hollow", tmp_path / "o", aligned=True,
                      cache_dir=bits["cache"], progress=False)
    assert "--gallery needs one sub-folder per person" in (info.value.fix or "")
    assert not (tmp_path / "o").exists()


def test_a_directory_given_as_a_photo(bits: dict[str, Path], tmp_path: Path) -> None:
    folder = bits["chip"].parent
    res = runner.invoke(app, ["attack", "photos", str(folder), "--gallery",
                              str(bits["gallery"]), "--out", str(tmp_path / "o"), "--cache",
                              str(bits["cache"]), "--no-progress"])
    err = res.exception
    assert isinstance(err, DataError), res.output
    assert "directory" in err.message and "not found" not in err.message
    assert err.path == folder and "image files" in (err.fix or "")


def test_an_out_that_is_a_file_is_refused_before_the_attack(bits: dict[str, Path],
                                                           tmp_path: Path) -> None:
    """Otherwise the photos are aligned and attacked, and the results lost when written."""
    from advface.errors import ConfigError

    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    said: list[str] = []
    with pytest.raises(ConfigError, match="names a file, not a folder"):
        _attack(bits, blocker, said)
    assert said == [] and not bits["cache"].exists()  # nothing aligned or embedded yet
