"""A tiny, deterministic LFW look-alike for tests: same layout, same protocol file formats.

Images are drawn faces (skin-toned ellipse, hair, eyes, nose, mouth) whose shape and colours are
fixed per person and jittered per image, so a model can in principle tell people apart. With
``broken=True`` the data contains the defects users' copies really have.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import shutil
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from advface.data.records import lfw_key

_FIRST = ("Ada", "Bruno", "Chloe", "Dmitri", "Esme", "Farid", "Greta", "Hiro", "Ines", "Jonas",
          "Kemal", "Lucia", "Mateo", "Nadia", "Omar", "Priya")
_LAST = ("Quill", "Rowe", "Sato", "Tembo", "Ulloa", "Vance", "Wolff", "Xu", "Yilmaz", "Zorn")
TREE_NAME = "lfw-tiny"
N_FOLDS = 2
PAIRS_PER_FOLD = 3


def tiny_names(n: int) -> list[str]:
    """``n`` distinct LFW-style names (``First_Last``), in a fixed order."""
    names = []
    for i in range(n):
        name = f"{_FIRST[i % len(_FIRST)]}_{_LAST[(i // len(_FIRST) + i) % len(_LAST)]}"
        if i >= len(_FIRST) * len(_LAST):
            name += f"_{i}"
        names.append(name)
    return names


def _person_style(rng: random.Random) -> dict:
    red = rng.uniform(110, 240)
    green = red * rng.uniform(0.62, 0.88)
    blue = green * rng.uniform(0.68, 0.92)
    return {
        "skin": (int(red), int(green), int(blue)),
        "hair": tuple(rng.randint(0, 120) for _ in range(3)),
        "bg": tuple(rng.randint(30, 220) for _ in range(3)),
        "shirt": tuple(rng.randint(0, 255) for _ in range(3)),
        "face_w": rng.uniform(0.16, 0.21),
        "face_h": rng.uniform(0.22, 0.27),
        "eye_dx": rng.uniform(0.06, 0.085),
        "eye_r": rng.uniform(0.012, 0.02),
        "mouth_w": rng.uniform(0.04, 0.07),
    }


def _draw_face(style: dict, rng: random.Random, size: int) -> Image.Image:
    """One image of a person: their style plus pose/lighting jitter and sensor noise."""
    s = size
    cx = s * (0.5 + rng.uniform(-0.025, 0.025))
    cy = s * (0.5 + rng.uniform(-0.025, 0.025))
    k = rng.uniform(0.95, 1.05)
    light = rng.uniform(0.85, 1.15)
    bg = tuple(int(min(255, c * rng.uniform(0.8, 1.2))) for c in style["bg"])
    img = Image.new("RGB", (s, s), bg)
    d = ImageDraw.Draw(img)
    fw, fh = style["face_w"] * s * k, style["face_h"] * s * k

    def box(x: float, y: float, rx: float, ry: float) -> tuple[float, float, float, float]:
        return (x - rx, y - ry, x + rx, y + ry)

    d.ellipse(box(cx, cy + 2.3 * fh, 2.4 * fw, 1.5 * fh), fill=style["shirt"])
    d.rectangle(box(cx, cy + fh, 0.45 * fw, 0.3 * fh), fill=style["skin"])
    d.ellipse(box(cx, cy - 0.25 * fh, fw * 1.08, fh * 0.85), fill=style["hair"])
    skin = tuple(int(min(255, c * light)) for c in style["skin"])
    d.ellipse(box(cx, cy, fw, fh), fill=skin)
    ex, ey, er = style["eye_dx"] * s * k, cy - 0.18 * fh, style["eye_r"] * s * k
    for sx in (-1, 1):
        d.ellipse(box(cx + sx * ex, ey, er * 1.8, er * 1.1), fill=(245, 245, 245))
        d.ellipse(box(cx + sx * ex, ey, er * 0.8, er * 0.8), fill=(30, 20, 10))
    d.line([(cx, ey + er), (cx - 0.03 * s, cy + 0.15 * fh), (cx, cy + 0.18 * fh)],
           fill=tuple(int(c * 0.7) for c in skin), width=max(1, s // 125))
    mw, my = style["mouth_w"] * s * k, cy + 0.45 * fh
    d.arc(box(cx, my - 0.025 * s, mw, 0.03 * s), 20, 160, fill=(150, 40, 50),
          width=max(1, s // 80))
    arr = np.asarray(img, dtype=np.int16)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 4, arr.shape)
    return Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8), mode="RGB")


def _jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _pairs_lines(rng: random.Random, people: list[str], counts: dict[str, int], per: int,
                 everyone: list[str]) -> list[str]:
    """``per`` same-person lines then ``per`` different-person lines, preferring ``people``."""
    multi = [p for p in people if counts[p] >= 2] or [p for p in everyone if counts[p] >= 2]
    pool = people if len(people) >= 2 else everyone
    lines = []
    for _ in range(per):
        name = rng.choice(multi)
        a, b = sorted(rng.sample(range(1, counts[name] + 1), 2))
        lines.append(f"{name}\t{a}\t{b}")
    for _ in range(per):
        n1, n2 = sorted(rng.sample(pool, 2))
        lines.append(f"{n1}\t{rng.randint(1, counts[n1])}\t{n2}\t{rng.randint(1, counts[n2])}")
    return lines


def make_tiny_lfw(
    root: Path,
    *,
    n_people: int = 6,
    images_per_person: tuple[int, int] = (1, 4),
    size: int = 250,
    seed: int = 0,
    broken: bool = False,
    archive: bool = False,
) -> Path:
    """Write an LFW-shaped data dir into ``root`` and return ``root``.

    Layout: ``lfw-tiny/<First_Last>/<First_Last>_0001.jpg`` plus ``pairs.txt`` (2 folds x 3 + 3
    pairs), ``people.txt`` (2 folds), the four View-1 dev files, ``lfw-names.txt`` and
    ``SHA256SUMS``. Image counts are drawn from ``images_per_person`` (inclusive); the first
    person always gets the maximum and the last the minimum, so there is always a multi-image
    person (and a single-image distractor when the minimum is 1). ``broken`` adds a truncated
    JPEG (an extra image of the first person, listed in lfw-names.txt but never in pairs), an
    empty person folder and a non-image file. ``archive`` ships the tree only as
    ``lfw-tiny.tgz`` (like the official download) instead of the extracted folder.
    """
    lo, hi = images_per_person
    if n_people < 1 or lo < 1 or hi < lo or size < 16:
        raise ValueError("need n_people >= 1, 1 <= min <= max images per person and size >= 16")
    root = Path(root)
    tree = root / TREE_NAME
    if tree.exists():
        shutil.rmtree(tree)
    rng = random.Random(f"advface:tiny-lfw:{seed}")
    names = tiny_names(n_people)
    counts = {name: rng.randint(lo, hi) for name in names}
    counts[names[0]] = hi
    counts[names[-1]] = lo if n_people > 1 else hi
    for name in names:
        style = _person_style(random.Random(f"advface:tiny-style:{seed}:{name}"))
        img_rng = random.Random(f"advface:tiny-images:{seed}:{name}")
        folder = tree / name
        folder.mkdir(parents=True)
        for i in range(1, counts[name] + 1):
            (tree / lfw_key(name, i)).write_bytes(_jpeg_bytes(_draw_face(style, img_rng, size)))
    listed = dict(counts)
    if broken:
        first = names[0]
        data = (tree / lfw_key(first, 1)).read_bytes()
        listed[first] = counts[first] + 1
        (tree / lfw_key(first, listed[first])).write_bytes(data[: len(data) // 2])
        (tree / "Empty_Person").mkdir()
        (tree / first / "notes.txt").write_text("not an image\n")

    folds = [[n for i, n in enumerate(names) if i % N_FOLDS == f] for f in range(N_FOLDS)]
    can_pair = n_people >= 2 and any(c >= 2 for c in counts.values())
    per = PAIRS_PER_FOLD if can_pair else 0
    pair_rng = random.Random(f"advface:tiny-pairs:{seed}")
    pairs = [f"{N_FOLDS}\t{per}"]
    dev = []
    for fold in folds:
        pairs += _pairs_lines(pair_rng, fold, counts, per, names) if per else []
        dev.append(_pairs_lines(pair_rng, fold, counts, per, names) if per else [])
    people = [str(N_FOLDS)]
    for fold in folds:
        people += [str(len(fold))] + [f"{n}\t{listed[n]}" for n in fold]
    files = {
        "pairs.txt": pairs,
        "pairsDevTrain.txt": [str(per), *dev[0]],
        "pairsDevTest.txt": [str(per), *dev[1]],
        "people.txt": people,
        "peopleDevTrain.txt": [str(len(folds[0]))] + [f"{n}\t{listed[n]}" for n in folds[0]],
        "peopleDevTest.txt": [str(len(folds[1]))] + [f"{n}\t{listed[n]}" for n in folds[1]],
        "lfw-names.txt": [f"{n}\t{listed[n]}" for n in names],
    }
    for fname, lines in files.items():
        (root / fname).write_text("\n".join(lines) + "\n")
    tgz = root / f"{TREE_NAME}.tgz"
    tgz.unlink(missing_ok=True)
    if archive:
        with (open(tgz, "wb") as raw,
              gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
              tarfile.open(fileobj=gz, mode="w") as tf):
            tf.add(tree, arcname=TREE_NAME, filter=_normalise_member)
        shutil.rmtree(tree)
    sums = sorted([*files, *([tgz.name] if archive else [])])
    (root / "SHA256SUMS").write_text("".join(
        f"{hashlib.sha256((root / f).read_bytes()).hexdigest()}  {f}\n" for f in sums))
    return root


def _normalise_member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Fixed owner and time so archives of identical content are byte-identical (same hash)."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info
