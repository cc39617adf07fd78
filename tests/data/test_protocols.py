"""LFW protocol readers: real formats, dev variants, and every malformed input."""

from __future__ import annotations

from pathlib import Path

import pytest

from advface.data.protocols import read_names, read_pairs, read_people
from advface.errors import DataError


def test_read_pairs_tiny(tiny_root: Path) -> None:
    pairs = read_pairs(tiny_root / "pairs.txt")
    assert len(pairs) == 2 * 2 * 3
    assert [p.fold for p in pairs] == [0] * 6 + [1] * 6
    assert [p.same for p in pairs[:6]] == [True] * 3 + [False] * 3
    for p in pairs:
        a, b = p.key_a.split("/")[0], p.key_b.split("/")[0]
        assert (a == b) == p.same
        assert p.key_a.endswith(".jpg") and p.key_a.split("/")[1].startswith(a + "_")


def test_read_pairs_formats_keys_with_four_digits(tmp_path: Path) -> None:
    f = tmp_path / "pairs.txt"
    f.write_text("1\t1\nGeorge_W_Bush\t10\t24\nGeorge_W_Bush\t12\tJohn_Kerry\t8\n")
    same, diff = read_pairs(f)
    assert same.key_a == "George_W_Bush/George_W_Bush_0010.jpg"
    assert same.key_b == "George_W_Bush/George_W_Bush_0024.jpg" and same.same
    assert diff.key_b == "John_Kerry/John_Kerry_0008.jpg" and not diff.same


def test_dev_pairs_single_header(tiny_root: Path) -> None:
    pairs = read_pairs(tiny_root / "pairsDevTrain.txt")
    assert len(pairs) == 6 and {p.fold for p in pairs} == {0}


def test_read_people_folds_and_dev(tiny_root: Path) -> None:
    folds = read_people(tiny_root / "people.txt")
    assert len(folds) == 2
    names = [n for fold in folds for n, _ in fold]
    assert len(names) == len(set(names)) == 6
    dev = read_people(tiny_root / "peopleDevTrain.txt")
    assert len(dev) == 1 and dev[0] == folds[0]
    assert read_names(tiny_root / "lfw-names.txt") == dict(p for fold in folds for p in fold)


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("1\t1\nA\t1\tx\nA\t1\tB\t1\n", 2, "image number"),
        ("1\t1\nA\t1\nA\t1\tB\t1\n", 2, "name n1 n2"),
        ("1\t1\nA\t1\t2\nA\t1\tB\n", 3, "name1 n1 name2 n2"),
        ("1\t1\nA\t0\t2\nA\t1\tB\t1\n", 2, ">= 1"),
        ("x\t1\nA\t1\t2\nA\t1\tB\t1\n", 1, "number of folds"),
    ],
)
def test_malformed_pairs_line(tmp_path: Path, text: str, line: int, needle: str) -> None:
    f = tmp_path / "pairs.txt"
    f.write_text(text)
    with pytest.raises(DataError) as info:
        read_pairs(f)
    assert info.value.path == f and info.value.fix
    assert f"line {line}" in info.value.message and needle in info.value.message


def test_pairs_count_mismatch_and_empty(tmp_path: Path) -> None:
    f = tmp_path / "pairs.txt"
    f.write_text("2\t1\nA\t1\t2\nA\t1\tB\t1\n")
    with pytest.raises(DataError, match="announces 2 fold"):
        read_pairs(f)
    f.write_text("\n")
    with pytest.raises(DataError, match="empty"):
        read_pairs(f)


def test_missing_protocol_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        read_pairs(tmp_path / "pairs.txt")
    assert "pairs.txt" in info.value.message and str(tmp_path) in (info.value.fix or "")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("2\n1\nA\t1\n", "ends after 1"),
        ("1\n2\nA\t1\n", "ends after 1"),
        ("1\n1\nA\tmany\n", "line 3"),
        ("1\n1\nA\t1\nB\t1\n", "line 4: unexpected content"),
        ("3\nA\t1\nB\t1\n", "announces 3 people"),
    ],
)
def test_malformed_people(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "people.txt"
    f.write_text(text)
    with pytest.raises(DataError, match=needle) as info:
        read_people(f)
    assert info.value.path == f


def test_malformed_names(tmp_path: Path) -> None:
    f = tmp_path / "lfw-names.txt"
    f.write_text("A\t1\nA\t2\n")
    with pytest.raises(DataError, match="line 2: A is listed twice"):
        read_names(f)
    f.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="not a text file"):
        read_names(f)
