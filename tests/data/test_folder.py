"""Folder scanning: records for any identity/image folder; every skipped file is a problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from advface.data.folder import scan_identity_folder
from advface.data.protocols import read_names
from advface.data.synthetic import make_tiny_lfw
from advface.errors import DataError


def test_scan_tiny_matches_names_file(tiny_root: Path) -> None:
    scan = scan_identity_folder(tiny_root / "lfw-tiny")
    names = read_names(tiny_root / "lfw-names.txt")
    assert scan.problems == []
    assert scan.identities() == sorted(names)
    assert len(scan.records) == sum(names.values())
    keys = [r.key for r in scan.records]
    assert keys == sorted(keys)
    rec = scan.records[0]
    assert rec.key == f"{rec.identity}/{rec.path.name}" and "\\" not in rec.key
    assert rec.path == tiny_root / "lfw-tiny" / rec.key


def test_broken_folder_problems_are_listed(tmp_path: Path) -> None:
    root = make_tiny_lfw(tmp_path, broken=True) / "lfw-tiny"
    scan = scan_identity_folder(root)
    reasons = {p.path.relative_to(root).as_posix(): p.reason for p in scan.problems}
    assert "Empty_Person" in reasons and "without any image" in reasons["Empty_Person"]
    notes = next(k for k in reasons if k.endswith("notes.txt"))
    assert "not an image" in reasons[notes]
    assert all(p.fix for p in scan.problems)
    assert "Empty_Person" not in scan.identities()
    # Without verify, the truncated JPEG is still a record (only decoding can tell).
    truncated = "Ada_Quill/Ada_Quill_0005.jpg"
    assert truncated in {r.key for r in scan.records}

    verified = scan_identity_folder(root, verify=True)
    assert truncated not in {r.key for r in verified.records}
    bad = [p for p in verified.problems if p.path == root / truncated]
    assert len(bad) == 1 and "unreadable" in bad[0].reason
    assert len(verified.records) == len(scan.records) - 1


def test_loose_files_nested_folders_and_unreadable_person(tmp_path: Path) -> None:
    root = make_tiny_lfw(tmp_path, n_people=3) / "lfw-tiny"
    (root / "README.md").write_text("hello")
    (root / "Ada_Quill" / "extra").mkdir()
    lone = sorted(p for p in root.iterdir() if p.is_dir())[-1]
    for f in lone.iterdir():
        f.write_bytes(b"garbage")
    scan = scan_identity_folder(root, verify=True)
    reasons = " | ".join(str(p) for p in scan.problems)
    assert "README.md" in reasons and "outside any identity folder" in reasons
    assert "nested folder" in reasons
    assert lone.name not in scan.identities()
    assert any(p.path == lone and "no readable image" in p.reason for p in scan.problems)


def test_missing_or_empty_root_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        scan_identity_folder(tmp_path / "absent")
    assert info.value.path == tmp_path / "absent" and info.value.fix
    (tmp_path / "lfw" / "Someone").mkdir(parents=True)
    with pytest.raises(DataError, match="no images") as info:
        scan_identity_folder(tmp_path)
    assert "one level deeper" in (info.value.fix or "")
