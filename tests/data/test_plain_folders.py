"""Any identity/image folder works wherever LFW does: `data validate` on a plain folder, and LFW
protocol files kept next to the person folders (generated tiny data)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advface.cli.main import app
from advface.data.images import load_rgb
from advface.data.lfw import open_lfw
from advface.data.synthetic import TREE_NAME, make_tiny_lfw
from advface.errors import DataError

runner = CliRunner()
PROTOCOL_FILES = ("lfw-names.txt", "pairs.txt", "pairsDevTrain.txt", "pairsDevTest.txt",
                  "people.txt", "peopleDevTrain.txt", "peopleDevTest.txt", "SHA256SUMS")


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    """4 people x 3 images in person folders, no protocol file here or in the parent."""
    src = make_tiny_lfw(tmp_path / "src", n_people=4, images_per_person=(3, 3))
    return Path(shutil.copytree(src / TREE_NAME, tmp_path / "plain"))


@pytest.fixture
def flat_lfw(tmp_path: Path) -> Path:
    """An LFW-shaped copy with the protocol files in the folder of the person folders."""
    src = make_tiny_lfw(tmp_path / "src", n_people=4, images_per_person=(3, 3))
    root = Path(shutil.copytree(src / TREE_NAME, tmp_path / "flat"))
    for name in PROTOCOL_FILES:
        shutil.copy(src / name, root / name)
    return root


def _validate(data: Path, cache: Path, *extra: str):
    return runner.invoke(app, ["data", "validate", "--data", str(data), "--cache", str(cache),
                               *extra])


def test_validate_a_clean_plain_folder(plain: Path, cache: Path) -> None:
    res = _validate(plain, cache)
    assert res.exit_code == 0, res.output
    assert "validation: OK (4 people, 12 images" in res.output
    assert "LFW name list not checked" in res.output and "has no lfw-names.txt" in res.output
    assert "checksums:   not checked" in res.output


def test_validate_lists_a_plain_folders_problems(plain: Path, cache: Path) -> None:
    (plain / "notes.txt").write_text("not a person\n")
    (plain / "Nobody").mkdir()
    (plain / "Ada_Quill" / "older").mkdir()
    (plain / "Bruno_Rowe" / "Bruno_Rowe_0009.jpg").write_bytes(b"")
    res = _validate(plain, cache, "--verify-images")
    assert res.exit_code == 1, res.output
    out = res.output
    assert "NOT OK" in out and "LFW name list not checked" in out and "4 problems" in out
    assert "notes.txt: file outside any identity folder" in out
    assert "Nobody: identity folder without any image" in out
    assert "older: nested folder" in out
    assert "Bruno_Rowe_0009.jpg: unreadable image: empty file (0 bytes)" in out
    assert "unreadable images" in out  # says what was checked
    info = runner.invoke(app, ["data", "info", "--data", str(plain), "--cache", str(cache)])
    assert info.exit_code == 0 and "problems:    3" in info.output  # (not decoded by info)
    assert "not possible" not in info.output


def test_an_lfw_copy_without_its_name_list_is_still_an_error(tiny: Path, cache: Path) -> None:
    (tiny / "lfw-names.txt").unlink()
    res = _validate(tiny, cache)
    assert isinstance(res.exception, DataError)
    assert "lfw-names.txt not found" in res.exception.message


def test_protocol_files_next_to_person_folders_are_no_problems(flat_lfw: Path,
                                                               cache: Path) -> None:
    (flat_lfw / "README.txt").write_text("LFW readme\n")
    lfw = open_lfw(flat_lfw, cache)
    assert lfw.protocol_dir == flat_lfw and lfw.problems == []
    res = _validate(flat_lfw, cache)
    assert res.exit_code == 0, res.output
    assert "validation: OK (4/4 people, 12/12 images vs lfw-names.txt)" in res.output
    assert "checksums (" in res.output and "MISMATCH" not in res.output
    (flat_lfw / "notes.txt").write_text("mine\n")  # other loose files still are problems
    problems = open_lfw(flat_lfw, cache).problems
    assert [p.path.name for p in problems] == ["notes.txt"]


def test_an_empty_file_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "x.jpg"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty file \(0 bytes\)") as err:
        load_rgb(empty)
    assert err.value.path == empty and err.value.fix
