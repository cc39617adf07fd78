"""Chip cache: exact dlib chips, fallback crops, PNG storage, resume and problem listing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dlib  # a pinned dependency: a broken install must fail here, not skip
import numpy as np
import pytest
import torch
from PIL import Image

import advface.align.chips as chips_mod
from advface.align.chips import ChipIndex, build_chips, chip_relpath, chipset_id
from advface.align.dlib_align import AlignParams, DlibAligner, fallback_rect, shape_predictor_path
from advface.data.images import load_rgb
from advface.data.records import ImageRecord
from advface.errors import DataError


def _counting_align(monkeypatch) -> list[str]:
    """The keys aligned from now on (``_align_one`` calls) in this process."""
    calls: list[str] = []
    original = chips_mod._align_one

    def counting(job):
        calls.append(job[0])
        return original(job)

    monkeypatch.setattr(chips_mod, "_align_one", counting)
    return calls


def _index_lines(ci: ChipIndex) -> list[dict]:
    return [json.loads(line) for line in (ci.root / "index.jsonl").read_text().splitlines()]


def test_real_chips_equal_dlib_get_face_chip(real_records, tmp_path):
    ci = build_chips(real_records, tmp_path, workers=1, progress=False)
    assert sorted(ci.keys) == sorted(r.key for r in real_records)
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(shape_predictor_path()))
    checked = 0
    for rec in real_records:
        if ci.methods[rec.key] != "dlib":
            continue
        img = load_rgb(rec.path)
        dets = detector(img, 1)
        if len(dets) != 1:
            continue  # several faces: selection is tested separately
        expected = dlib.get_face_chip(img, predictor(img, dets[0]), size=150, padding=0.25)
        got = ci.load_uint8([rec.key])[0]
        np.testing.assert_array_equal(got, expected)
        checked += 1
    assert checked >= 3


def test_chips_are_lossless_png_and_identical_on_rebuild(real_records, tmp_path):
    recs = real_records[:4]
    a = build_chips(recs, tmp_path / "a", workers=1, progress=False)
    b = build_chips(recs, tmp_path / "b", workers=1, progress=False)
    assert a.chipset_id == b.chipset_id
    for key in a.keys:
        path = a.path(key)
        assert path.suffix == ".png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (150, 150)
        assert path.read_bytes() == b.path(key).read_bytes()
    x = a.load(a.keys)
    assert x.shape == (4, 3, 150, 150) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(a.load_uint8(a.keys)).permute(0, 3, 1, 2) / 255.0)
    assert torch.equal(torch.round(x * 255) / 255, x)  # "as saved" values


def test_pool_matches_in_process(real_records, tmp_path):
    one = build_chips(real_records[:4], tmp_path / "one", workers=1, progress=False)
    two = build_chips(real_records[:4], tmp_path / "two", workers=2, progress=False)
    np.testing.assert_array_equal(one.load_uint8(one.keys), two.load_uint8(one.keys))
    assert one.methods == two.methods


def test_rerun_skips_finished_keys(real_records, tmp_path, monkeypatch):
    recs = real_records[:3]
    build_chips(recs, tmp_path, workers=1, progress=False)
    calls = _counting_align(monkeypatch)
    ci = build_chips(recs, tmp_path, workers=1, progress=False)
    assert calls == [] and len(ci) == 3


def test_resume_after_partial_index_recomputes_only_missing(real_records, tmp_path, monkeypatch):
    recs = real_records[:6]
    full = build_chips(recs, tmp_path, workers=1, progress=False)
    before = {k: full.path(k).read_bytes() for k in full.keys}
    index = full.root / "index.jsonl"
    lines = index.read_text().splitlines(keepends=True)
    kept = [json.loads(x)["key"] for x in lines[:2]]
    # A kill mid-write: two complete lines and half of the third.
    index.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    calls = _counting_align(monkeypatch)
    ci = build_chips(recs, tmp_path, workers=1, progress=False)
    assert sorted(calls) == sorted(set(before) - set(kept))
    assert sorted(ci.keys) == sorted(before)
    entries = _index_lines(ci)  # every line parses: the partial one was cut off
    assert sorted(e["key"] for e in entries) == sorted(before)
    assert {k: ci.path(k).read_bytes() for k in ci.keys} == before


def test_missing_chip_file_is_recomputed(real_records, tmp_path):
    recs = real_records[:2]
    ci = build_chips(recs, tmp_path, workers=1, progress=False)
    gone = ci.keys[0]
    data = ci.path(gone).read_bytes()
    ci.path(gone).unlink()
    assert gone not in ChipIndex.open(tmp_path)
    again = build_chips(recs, tmp_path, workers=1, progress=False)
    assert again.path(gone).read_bytes() == data


def test_fallback_used_and_counted_for_faceless_images(tiny_records, tmp_path):
    blank_path = tmp_path / "src" / "Blank_Wall" / "Blank_Wall_0001.jpg"
    blank_path.parent.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(100, 130, (250, 250, 3), dtype=np.uint8)).save(blank_path)
    blank = ImageRecord("Blank_Wall/Blank_Wall_0001.jpg", "Blank_Wall", blank_path)
    ci = build_chips([*tiny_records, blank], tmp_path / "cache", workers=1, progress=False)
    assert ci.methods[blank.key] == "fallback"
    assert ci.fallback_count == sum(m == "fallback" for m in ci.methods.values()) >= 1
    entry = next(e for e in _index_lines(ci) if e["key"] == blank.key)
    assert entry["score"] is None and entry["landmarks"] is None and entry["n_faces"] == 0
    assert entry["fallback_reason"] == "no face"
    # The documented crop: the fixed square resampled exactly as dlib resamples chips.
    img = load_rgb(blank_path)
    params = AlignParams()
    details = dlib.chip_details(fallback_rect(250, 250, params), dlib.chip_dims(150, 150))
    np.testing.assert_array_equal(ci.load_uint8([blank.key])[0],
                                  dlib.extract_image_chip(img, details))
    assert entry["chip_rect"] == pytest.approx([0.504 * 250, 0.539 * 250, 0.464 * 250])


def test_fallback_square_matches_dlib_chip_scale(real_records, tmp_path):
    """The documented constants stay close to where dlib actually cuts LFW chips."""
    ci = build_chips(real_records, tmp_path, workers=1, progress=False)
    entries = [e for e in _index_lines(ci) if e["method"] == "dlib"]
    assert entries
    params = AlignParams()
    for e in entries:
        cx, cy, side = e["chip_rect"]
        w, h = e["source_width"], e["source_height"]
        assert abs(cx - params.fallback_center[0] * w) < 0.1 * w
        assert abs(cy - params.fallback_center[1] * h) < 0.1 * h
        assert 0.75 < side / (params.fallback_side * min(w, h)) < 1.3


def test_face_nearest_to_centre_is_chosen(real_records):
    """Two faces on one canvas: the chip comes from the one in the middle."""
    aligner = DlibAligner()
    faces = [load_rgb(r.path) for r in real_records]
    faces = [f for f in faces if aligner.align(f).n_faces == 1][:2]
    assert len(faces) == 2
    canvas = np.full((250, 750, 3), 128, dtype=np.uint8)
    canvas[:, 250:500] = faces[0]
    canvas[:, 0:250] = faces[1]
    res = aligner.align(canvas)
    assert res.method == "dlib" and res.n_faces >= 2
    cx = (res.box[0] + res.box[2]) / 2
    assert 250 <= cx < 500
    # Landmarks shift a little with the surroundings, so compare by distance, not equality.
    d_mid = np.abs(res.chip.astype(int) - aligner.align(faces[0]).chip).mean()
    d_side = np.abs(res.chip.astype(int) - aligner.align(faces[1]).chip).mean()
    assert d_mid < 0.5 * d_side


def test_off_centre_face_is_not_taken_for_the_labelled_person(real_records):
    """LFW centres the labelled face: a lone face in a corner is a bystander -> fallback."""
    aligner = DlibAligner()
    face = next(f for f in (load_rgb(r.path) for r in real_records)
                if aligner.align(f).n_faces == 1)
    canvas = np.full((500, 500, 3), 128, dtype=np.uint8)
    canvas[:250, :250] = face
    res = aligner.align(canvas)
    assert res.method == "fallback" and res.fallback_reason == "only off-centre faces"
    assert res.n_faces == 1
    assert aligner.align(face).method == "dlib"  # the same face, centred, is accepted
    lenient = DlibAligner(AlignParams(max_center_offset=0.5)).align(canvas)
    assert lenient.method == "dlib"


def test_unreadable_images_are_listed_not_dropped(real_records, tmp_path):
    bad = tmp_path / "src" / "Bad_Person" / "Bad_Person_0001.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(real_records[0].path.read_bytes()[:300])
    missing = ImageRecord("Gone/Gone_0001.jpg", "Gone", tmp_path / "nope.jpg")
    recs = [real_records[0], ImageRecord("Bad_Person/Bad_Person_0001.jpg", "Bad_Person", bad),
            missing]
    ci = build_chips(recs, tmp_path / "cache", workers=1, progress=False)
    assert ci.keys == [real_records[0].key]
    assert sorted(p.key for p in ci.problems) == sorted([recs[1].key, missing.key])
    assert all(p.fix for p in ci.problems)
    listed = (ci.root / "problems.jsonl").read_text()
    assert recs[1].key in listed and missing.key in listed
    assert sorted(p.key for p in ChipIndex.open(tmp_path / "cache").problems) == sorted(
        [recs[1].key, missing.key])
    with pytest.raises(DataError, match="no aligned chip"):
        ci.load([missing.key])


def test_chipset_id_depends_on_parameters(tmp_path):
    assert chipset_id(AlignParams()) == chipset_id(AlignParams())
    ids = {chipset_id(p) for p in (AlignParams(), AlignParams(upsample=0),
                                   AlignParams(padding=0.2), AlignParams(size=112),
                                   AlignParams(max_center_offset=0.3),
                                   AlignParams(version="other"))}
    assert len(ids) == 6
    assert (tmp_path / "chips").exists() is False


def test_chip_paths_reject_escaping_keys():
    assert chip_relpath("A_B/A_B_0001.jpg") == "A_B/A_B_0001.png"
    for bad in ("../x.jpg", "/abs/x.jpg"):
        with pytest.raises(DataError):
            chip_relpath(bad)


def test_colliding_keys_are_an_error(tmp_path):
    recs = [ImageRecord("A/A_1.jpg", "A", tmp_path / "1.jpg"),
            ImageRecord("A/A_1.png", "A", tmp_path / "1.png")]
    with pytest.raises(DataError, match="share the chip file"):
        build_chips(recs, tmp_path, workers=1, progress=False)


def test_params_are_recorded(real_records, tmp_path):
    ci = build_chips(real_records[:1], tmp_path, upsample=0, workers=1, progress=False)
    saved = json.loads((ci.root / "params.json").read_text())
    assert saved["upsample"] == 0 and saved["size"] == 150 and saved["padding"] == 0.25
    assert ci.root == Path(tmp_path) / "chips" / chipset_id(AlignParams(upsample=0))


def test_concurrent_builders_take_turns(real_records, tmp_path):
    import fcntl
    import threading

    root = tmp_path / "chips" / chipset_id(AlignParams())
    root.mkdir(parents=True)
    result: list[ChipIndex] = []
    with open(root / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # another process is aligning
        worker = threading.Thread(target=lambda: result.append(
            build_chips(real_records[:1], tmp_path, workers=1, progress=False)))
        worker.start()
        worker.join(timeout=1.0)
        assert worker.is_alive() and not result  # waiting, not duplicating work
        fcntl.flock(fh, fcntl.LOCK_UN)
    worker.join(timeout=120)
    assert result and result[0].keys == [real_records[0].key]


def test_default_chipset_id_is_unchanged_by_the_second_detector_option():
    # Chip caches made before the option existed must keep their id (and their embeddings).
    assert chipset_id(AlignParams()) == "1d7160c4f99f9a71"
    assert chipset_id(AlignParams(second_detector="cnn")) != chipset_id(AlignParams())
    with pytest.raises(ValueError, match="second_detector"):
        AlignParams(second_detector="mtcnn")


class _NoHog:
    def run(self, img, upsample, threshold):
        return [], [], []


def test_cnn_detector_takes_over_where_hog_finds_nothing(real_records):
    """With HOG blinded, the CNN detector's box goes through the same landmarks and chip."""
    img = load_rgb(real_records[0].path)
    hog = DlibAligner(AlignParams()).align(img)
    aligner = DlibAligner(AlignParams(second_detector="cnn"))
    aligner.detector = _NoHog()
    res = aligner.align(img)
    assert hog.method == "dlib" and res.method == "dlib-cnn" and res.landmarks is not None
    assert res.score is not None and res.n_faces >= 1
    # same face, same landmark model: the chip is nearly the HOG one (landmarks move by a few px)
    diff = np.abs(res.chip.astype(int) - hog.chip.astype(int)).mean()
    assert diff < 25, diff
    landmarks = np.array(res.landmarks) - np.array(hog.landmarks)
    assert np.abs(landmarks).max() < 8
    # HOG-only aligners never load the CNN
    assert DlibAligner(AlignParams()).cnn is None


def test_cnn_chipset_copies_the_hog_chips_and_aligns_only_the_rest(real_records, tiny_records,
                                                                   tmp_path, monkeypatch):
    records = [*real_records[:4], *tiny_records[:2]]
    hog = build_chips(records, tmp_path, workers=1, progress=False)
    aligned: list[str] = []
    real_run_jobs = chips_mod._run_jobs

    def spy(jobs, params, root, workers):
        aligned.extend(k for k, _ in jobs)
        return real_run_jobs(jobs, params, root, workers)

    monkeypatch.setattr(chips_mod, "_run_jobs", spy)
    cnn = build_chips(records, tmp_path, second_detector="cnn", workers=1, progress=False)
    assert cnn.root != hog.root and sorted(cnn.keys) == sorted(hog.keys)
    usable = {k for k, m in hog.methods.items() if m == "dlib"}
    assert usable and sorted(aligned) == sorted(set(hog.keys) - usable)
    for key in usable:
        assert (cnn.root / chip_relpath(key)).read_bytes() == (
            hog.root / chip_relpath(key)).read_bytes()
        assert cnn.methods[key] == "dlib"
    # the cartoon faces: neither detector finds them, so they get the same fallback crop
    for key in set(hog.keys) - usable:
        assert cnn.methods[key] in ("fallback", "dlib-cnn")
    assert json.loads((cnn.root / "params.json").read_text())["second_detector"] == "cnn"
    # The HOG chip of another image under the same name is not copied: that image is aligned.
    key = real_records[0].key
    other = tmp_path / "other" / key
    other.parent.mkdir(parents=True)
    other.write_bytes(real_records[5].path.read_bytes())
    aligned.clear()
    swapped = build_chips([ImageRecord(key, real_records[0].identity, other)], tmp_path,
                          second_detector="cnn", workers=1, progress=False)
    assert aligned == [key]
    assert swapped.path(key).read_bytes() != (hog.root / chip_relpath(key)).read_bytes()



def test_same_key_from_another_image_is_realigned_not_served_stale(real_records, tmp_path,
                                                                   monkeypatch):
    """Two data sets sharing names (deep-funneled and original LFW, a user's folder reusing
    LFW's names) share a chip cache: a key whose source is another image gets its own chip."""
    recs = real_records[:2]
    cache = tmp_path / "cache"
    first = build_chips(recs, cache, workers=1, progress=False)
    original = {k: first.path(k).read_bytes() for k in first.keys}
    key = recs[0].key
    other = tmp_path / "other" / key
    other.parent.mkdir(parents=True)
    other.write_bytes(real_records[2].path.read_bytes())  # same name, another person's photo
    theirs = [ImageRecord(key, recs[0].identity, other), recs[1]]
    calls = _counting_align(monkeypatch)
    got = build_chips(theirs, cache, workers=1, progress=False)
    assert calls == [key] and got.replaced == [key]
    fresh = build_chips(theirs[:1], tmp_path / "fresh", workers=1, progress=False)
    assert got.path(key).read_bytes() == fresh.path(key).read_bytes() != original[key]
    assert got.content_id(key) != first.content_id(key)
    assert got.path(recs[1].key).read_bytes() == original[recs[1].key]
    # Back to the first data set: re-aligned again, the very same chip as at first.
    back = build_chips(recs, cache, workers=1, progress=False)
    assert back.replaced == [key] and back.path(key).read_bytes() == original[key]
    assert calls == [key] * 3  # theirs, the fresh cache's, and the way back


def test_touched_but_unchanged_source_is_hashed_once_not_realigned(real_records, tmp_path,
                                                                   monkeypatch):
    recs = real_records[:2]
    build_chips(recs, tmp_path, workers=1, progress=False)
    copied = []
    for r in recs:  # a copied data set: same bytes, new mtimes
        dest = tmp_path / "copy" / r.key
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(r.path.read_bytes())
        os.utime(dest, ns=(1_000_000_000, 1_000_000_000))
        copied.append(ImageRecord(r.key, r.identity, dest))
    calls = _counting_align(monkeypatch)
    ci = build_chips(copied, tmp_path, workers=1, progress=False)
    assert calls == [] and ci.replaced == []
    for r in copied:  # the new mtime is recorded: the next build only stats the file
        assert chips_mod.source_matches(ci.entries[r.key], r.path) == (True, False)
    assert ChipIndex.open(tmp_path).entries[copied[0].key]["source_mtime_ns"] == 1_000_000_000


def test_chip_of_a_source_changed_into_an_unreadable_file_is_dropped(real_records, tmp_path):
    recs = real_records[:1]
    build_chips(recs, tmp_path / "cache", workers=1, progress=False)
    bad = tmp_path / "bad" / recs[0].key
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a jpeg")
    ci = build_chips([ImageRecord(recs[0].key, recs[0].identity, bad)], tmp_path / "cache",
                     workers=1, progress=False)
    assert len(ci) == 0 and [p.key for p in ci.problems] == [recs[0].key]
    assert recs[0].key not in ChipIndex.open(tmp_path / "cache")  # the old chip is gone too
