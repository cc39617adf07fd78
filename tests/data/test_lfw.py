"""open_lfw: folders, archives (extracted once, safely), protocol access, validation."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from advface.data import lfw as lfw_mod
from advface.data.lfw import MARKER, open_lfw
from advface.data.synthetic import make_tiny_lfw
from advface.errors import DataError


def _no_tmp_left(cache: Path) -> bool:
    base = cache / "extracted"
    return not base.exists() or not any(p.name.startswith(".tmp-") for p in base.iterdir())


def test_open_extracted_tree(tiny_root: Path, cache: Path) -> None:
    lfw = open_lfw(tiny_root, cache)
    assert lfw.image_root == tiny_root / "lfw-tiny" and lfw.archive is None
    assert lfw.protocol_dir == tiny_root and lfw.problems == []
    assert len(lfw.identities()) == 6
    assert len(lfw.pairs()) == 12 and len(lfw.dev_pairs("test")) == 6
    assert len(lfw.people()) == 2 and lfw.dev_people("train") == lfw.people()[0]
    report = lfw.validate()
    assert report.ok and report.expected_images == len(lfw.records)
    sums = lfw.verify_checksums()
    assert sums.ok and sums.source == tiny_root / "SHA256SUMS"
    assert not cache.exists() or not (cache / "extracted").exists()  # nothing to extract
    rec = lfw.records[0]
    assert lfw.path(rec.key) == rec.path
    with pytest.raises(DataError, match="not in this data set"):
        lfw.path("Nobody/Nobody_0001.jpg")


def test_open_the_image_tree_itself_finds_protocols_in_parent(tiny_root: Path, cache: Path):
    lfw = open_lfw(tiny_root / "lfw-tiny", cache)
    assert lfw.protocol_dir == tiny_root and len(lfw.pairs()) == 12


def test_archive_is_extracted_once_into_hashed_cache_folder(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_tiny_lfw(tmp_path / "data", archive=True)
    assert not (root / "lfw-tiny").exists()
    lfw = open_lfw(root, cache)
    digest = lfw_mod.sha256_file(root / "lfw-tiny.tgz")
    folder = cache / "extracted" / f"lfw-tiny-{digest[:12]}"
    assert lfw.image_root == folder / "lfw-tiny" and lfw.archive == root / "lfw-tiny.tgz"
    marker = json.loads((folder / MARKER).read_text())
    assert marker["sha256"] == digest and marker["files"] == len(lfw.records)
    assert _no_tmp_left(cache)

    # Second open: neither hashing nor extraction happens again.
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("should have been cached")

    monkeypatch.setattr(lfw_mod, "sha256_file", boom)
    monkeypatch.setattr(lfw_mod, "_safe_extract", boom)
    again = open_lfw(root / "lfw-tiny.tgz", cache)  # the archive path itself works too
    assert again.records == lfw.records and again.protocol_dir == root
    assert again.validate().ok


def test_changed_archive_is_rehashed(tmp_path: Path, cache: Path) -> None:
    root = make_tiny_lfw(tmp_path / "data", archive=True)
    first = open_lfw(root, cache).image_root
    make_tiny_lfw(root, archive=True, n_people=4)  # same name, new content
    (root / "SHA256SUMS").unlink()
    second = open_lfw(root, cache)
    assert second.image_root != first and len(second.identities()) == 4


def _archive_error(path: Path, cache: Path) -> DataError:
    with pytest.raises(DataError) as info:
        open_lfw(path, cache)
    assert _no_tmp_left(cache)
    return info.value


def test_random_bytes_archive(tmp_path: Path, cache: Path) -> None:
    bad = tmp_path / "lfw.tgz"
    bad.write_bytes(os.urandom(4096))
    err = _archive_error(bad, cache)
    assert err.path == bad and "cannot read archive" in err.message
    assert "download" in (err.fix or "")


def test_checksum_lines_written_as_dot_slash_name_are_checked(tmp_path: Path,
                                                               cache: Path) -> None:
    root = make_tiny_lfw(tmp_path / "data", archive=True)
    (root / "SHA256SUMS").write_text("0" * 64 + "  ./lfw-tiny.tgz\n")  # `sha256sum ./*`
    err = _archive_error(root / "lfw-tiny.tgz", cache)
    assert "does not match SHA256SUMS" in err.message


def test_a_file_that_is_no_archive_is_not_called_corrupt(tmp_path: Path, cache: Path) -> None:
    notes = tmp_path / "pairs.txt"
    notes.write_text("10\t300\n")
    err = _archive_error(notes, cache)
    assert "not an image archive" in err.message and "delete" not in (err.fix or "")
    assert notes.is_file()


def test_truncated_archive(tmp_path: Path, cache: Path) -> None:
    root = make_tiny_lfw(tmp_path / "data", archive=True)
    tgz = root / "lfw-tiny.tgz"
    tgz.write_bytes(tgz.read_bytes()[: tgz.stat().st_size // 2])
    err = _archive_error(tgz, cache)
    assert "SHA256SUMS" in err.message and err.path == tgz  # caught before extraction
    (root / "SHA256SUMS").unlink()
    err = _archive_error(tgz, cache)
    assert "cannot read archive" in err.message and "truncated" in (err.fix or "")


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def test_archive_that_is_not_lfw_shaped(tmp_path: Path, cache: Path) -> None:
    tgz = _tar_with(tmp_path / "lfw.tgz", [_file("notes/readme.txt"), _file("a.txt")])
    err = _archive_error(tgz, cache)
    assert "LFW-shaped" in err.message and err.fix


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        ("../evil.txt", "escapes"),
        ("lfw/A/../../../evil.txt", "escapes"),
        ("/tmp/advface-evil.txt", "absolute"),
    ],
)
def test_path_traversal_members_are_refused(
    tmp_path: Path, cache: Path, member: str, reason: str
) -> None:
    tgz = _tar_with(tmp_path / "lfw.tgz", [_file("lfw/A/A_0001.jpg"), _file(member, b"pwned")])
    err = _archive_error(tgz, cache)
    assert "unsafe" in err.message and reason in err.message and err.path == tgz
    assert not (tmp_path / "evil.txt").exists() and not (cache / "evil.txt").exists()
    assert not Path("/tmp/advface-evil.txt").exists()


@pytest.mark.parametrize("target", ["/etc/passwd", "../../../outside", "A_0001.jpg",
                                    "../B/deep/../../A"])
def test_link_entries_are_refused(tmp_path: Path, cache: Path, target: str) -> None:
    """Even one whose text stays inside: chained links can climb out (CVE-2025-4517)."""
    link = tarfile.TarInfo("lfw/A/A_0002.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, target
    tgz = _tar_with(tmp_path / "lfw.tgz", [_file("lfw/A/A_0001.jpg"), (link, None)])
    err = _archive_error(tgz, cache)
    assert "unsafe" in err.message and "link" in err.message


def test_device_members_are_refused(tmp_path: Path, cache: Path) -> None:
    dev = tarfile.TarInfo("lfw/A/dev")
    dev.type = tarfile.CHRTYPE
    tgz = _tar_with(tmp_path / "lfw.tgz", [_file("lfw/A/A_0001.jpg"), (dev, None)])
    assert "device" in _archive_error(tgz, cache).message


def test_missing_protocol_file(tiny: Path, cache: Path) -> None:
    (tiny / "pairs.txt").unlink()
    lfw = open_lfw(tiny, cache)  # images alone are fine
    with pytest.raises(DataError) as info:
        lfw.pairs()
    assert info.value.path == tiny / "pairs.txt" and "pairs.txt" in info.value.message
    assert str(tiny) in (info.value.fix or "")


def test_pairs_naming_missing_images(tiny: Path, cache: Path) -> None:
    lfw = open_lfw(tiny, cache)
    victim = lfw.pairs()[0].key_a
    (tiny / "lfw-tiny" / victim).unlink()
    with pytest.raises(DataError, match=victim) as info:
        open_lfw(tiny, cache).pairs()
    assert info.value.path == tiny / "pairs.txt"


def test_validate_reports_missing_extra_and_problems(tmp_path: Path, cache: Path) -> None:
    root = make_tiny_lfw(tmp_path / "d", broken=True)
    tree = root / "lfw-tiny"
    (tree / "Bruno_Rowe" / "Bruno_Rowe_0002.jpg").unlink()
    shutil.copytree(tree / "Chloe_Sato", tree / "Zed_Extra")
    shutil.copy(tree / "Ada_Quill" / "Ada_Quill_0001.jpg", tree / "Ada_Quill" / "Ada_Quill.jpg")
    shutil.rmtree(tree / "Farid_Vance")
    report = open_lfw(root, cache).validate()
    assert not report.ok
    assert report.missing_people == ["Farid_Vance"]
    assert report.extra_people == ["Zed_Extra"]
    assert report.missing_images == ["Bruno_Rowe/Bruno_Rowe_0002.jpg"]
    assert report.extra_images == ["Ada_Quill/Ada_Quill.jpg"]
    assert len(report.problems) == 2  # empty folder + notes.txt
    text = "\n".join(report.lines())
    assert "Farid_Vance" in text and "Empty_Person" in text and "NOT OK" in report.summary()
    verified = open_lfw(root, cache, verify_images=True)
    assert any("unreadable" in p.reason for p in verified.problems)


def test_checksum_mismatch_is_reported(tiny: Path, cache: Path) -> None:
    with (tiny / "people.txt").open("a") as fh:
        fh.write("\n")
    sums = open_lfw(tiny, cache).verify_checksums()
    assert not sums.ok and [e.name for e in sums.mismatched] == ["people.txt"]
    (tiny / "SHA256SUMS").unlink()
    builtin = open_lfw(tiny, cache).verify_checksums()
    assert builtin.source is None and {e.name for e in builtin.mismatched} == {
        "pairs.txt", "people.txt", "pairsDevTrain.txt", "pairsDevTest.txt",
        "peopleDevTrain.txt", "peopleDevTest.txt", "lfw-names.txt"}


def test_missing_or_empty_data_dir(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(DataError, match="not found") as info:
        open_lfw(tmp_path / "absent", cache)
    assert "--data" in (info.value.fix or "")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no LFW images") as info:
        open_lfw(tmp_path / "empty", cache)
    assert "lfw-deepfunneled.tgz" in (info.value.fix or "") and "pairs.txt" in info.value.fix


def test_download_fetches_only_missing_files(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_tiny_lfw(tmp_path / "src", archive=True)
    target = tmp_path / "target"
    target.mkdir()
    (target / "lfw-tiny.tgz").write_bytes((source / "lfw-tiny.tgz").read_bytes())
    (target / "pairs.txt").write_bytes((source / "pairs.txt").read_bytes())
    calls: list[tuple[Path, list[str]]] = []

    def fake_download(dest: Path, names: list[str]) -> list[Path]:
        calls.append((dest, list(names)))
        for n in names:
            shutil.copy(source / n, dest / n)
        return [dest / n for n in names]

    monkeypatch.setattr(lfw_mod, "download_lfw", fake_download)
    lfw = open_lfw(target, cache, download=True)
    assert calls == [(target, ["people.txt", "pairsDevTrain.txt", "pairsDevTest.txt",
                               "peopleDevTrain.txt", "peopleDevTest.txt", "lfw-names.txt"])]
    assert lfw.validate().ok
    open_lfw(target, cache, download=True)
    assert len(calls) == 1  # everything present now
