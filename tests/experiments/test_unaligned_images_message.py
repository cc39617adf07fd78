"""A study's images that cannot be read are named with their full path and the reason, both
when a run starts (`advface run`) and when a run's models are re-opened (generated data)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from advface.data.lfw import open_lfw
from advface.data.splits import make_closed_set_split
from advface.data.synthetic import TREE_NAME, make_tiny_lfw
from advface.errors import DataError
from advface.experiments.config import load_experiment
from advface.experiments.reload import load_run_models
from advface.experiments.runner import run_experiment

DATA = "{{data_dir: {data}, cache_dir: {cache}, min_images: 2, distractors: false}}"


@pytest.fixture
def zero_byte(tmp_path: Path) -> dict[str, Path]:
    """A plain 4 x 3 identity folder in which one image is an empty file."""
    src = make_tiny_lfw(tmp_path / "src", n_people=4, images_per_person=(3, 3))
    data = Path(shutil.copytree(src / TREE_NAME, tmp_path / "faces"))
    bad = data / "Bruno_Rowe" / "Bruno_Rowe_0002.jpg"
    bad.write_bytes(b"")
    return {"data": data, "cache": tmp_path / "cache", "bad": bad}


def _check(err: DataError, bad: Path) -> None:
    assert "1 images" in err.message and "could not be aligned or read" in err.message
    assert f"{bad.resolve()} (empty file (0 bytes))" in err.message
    assert "Bruno_Rowe/Bruno_Rowe_0002.jpg'" not in err.message  # not just the key
    assert "--verify-images" in (err.fix or "")


def test_a_run_names_the_unreadable_file_and_why(zero_byte: dict[str, Path],
                                                 tmp_path: Path) -> None:
    cfg_path = tmp_path / "study.yaml"
    cfg_path.write_text(f"""
name: tiny
seed: 0
data: {DATA.format(**zero_byte)}
models:
  - {{name: dlib, source: dlib}}
n_probes: 4
batch_size: 2
verification: false
align_upsample: 0
attacks:
  - {{name: fgsm, eps_8bit: [2], goals: [dodging]}}
""")
    with pytest.raises(DataError) as info:
        run_experiment(load_experiment(cfg_path), tmp_path / "run", progress=False,
                       log=lambda message: None)
    _check(info.value, zero_byte["bad"])


def test_reopening_a_run_names_the_unreadable_file_and_why(zero_byte: dict[str, Path],
                                                           tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(f"data: {DATA.format(**zero_byte)}\n"
                                         "models: [{name: dlib, source: dlib}]\n"
                                         "align_upsample: 0\n")
    records = open_lfw(zero_byte["data"], zero_byte["cache"]).records
    make_closed_set_split(records, min_images=2, distractors=False).save(run_dir / "split.json")
    with pytest.raises(DataError) as info:
        load_run_models(run_dir)
    _check(info.value, zero_byte["bad"])
