"""Attack a few photos against a gallery folder: the auditor's question, without a config.

"Can this photo of me be changed invisibly so that the recogniser no longer knows me (dodging), or
takes me for someone else (impersonation)?" :func:`attack_photos` answers it for any photos and
any ``identity/image`` gallery folder: it aligns the photos as the gallery is aligned, decides
their identity on the clean chip, attacks the chip, saves the adversarial chip as 8-bit PNG and
judges the *re-read* file, as the study runner does. Every number in the summary is measured on
the files it writes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from advface.align.dlib_align import AlignParams
from advface.errors import ConfigError, DataError
from advface.paths import check_output

if TYPE_CHECKING:
    from advface.data.records import ImageRecord

ALIGN = AlignParams()  # photos are aligned exactly as build_chips aligns the gallery
GOALS = ("dodging", "impersonation")
PER_IMAGE_ATTACKS = ("fgsm", "bim", "pgd", "mifgsm", "cw", "deepfool", "square", "noise")


@dataclass
class PhotoOutcome:
    """One attacked photo: its files, the decisions on the clean and the saved adversarial chip
    (top identities with scores), and the perturbation measured on the saved files."""

    photo: str
    align_method: str
    clean_png: str
    adv_png: str
    diff_png: str
    goal: str
    label: str
    label_from: str
    clean_top: list[tuple[str, float]]
    adv_top: list[tuple[str, float]]
    success: bool
    attempted: bool  # the attack had to change the decision (counted in the success rate)
    linf_8bit: float
    l2_8bit: float
    ssim: float
    psnr: float
    iterations: int | None
    queries: int | None
    min_eps_8bit: float | None = None


def _photo_chip(path: Path, aligner: Any, size: int, aligned: bool) -> tuple[torch.Tensor, str]:
    """The 150x150 chip the model sees, and how it was made."""
    from advface.data.images import load_rgb, to_tensor

    if path.is_dir():
        raise DataError("this is a directory, not a photo", path=path,
                        fix=f"pass image files, e.g. the photos inside it ({path}/*.jpg)")
    if not path.is_file():
        raise DataError("photo not found", path=path, fix="check the path")
    rgb = load_rgb(path)
    if aligned:
        if rgb.shape[:2] != (size, size):
            raise DataError(f"an aligned chip must be {size}x{size}, this is "
                            f"{rgb.shape[1]}x{rgb.shape[0]}", path=path,
                            fix="drop --aligned to let dlib find and align the face")
        return to_tensor(rgb), "given"
    result = aligner.align(rgb)
    if result.method == "fallback":
        raise DataError(f"no face found ({result.fallback_reason})", path=path,
                        fix="use a photo with one frontal face near the centre, or crop it "
                        f"to the face; a {size}x{size} aligned chip can be given with --aligned")
    return to_tensor(result.chip), result.method


def _index_of(name: str, names: list[str], what: str, gallery: Path) -> int:
    if name not in names:
        close = [n for n in names if name.lower() in n.lower()][:5]
        raise ConfigError(f"{what} {name!r} is not a gallery identity",
                          path=gallery, fix="use a sub-folder name of the gallery"
                          + (f", e.g. {', '.join(close)}" if close else ""))
    return names.index(name)


def _top(scores: torch.Tensor, names: list[str], k: int = 3) -> list[tuple[str, float]]:
    vals, idx = scores.topk(min(k, scores.numel()))
    return [(names[int(i)], round(float(v), 4)) for v, i in zip(vals, idx, strict=True)]


def _check_request(photos: list[Path], attack: str, eps_8bit: float | None, goal: str,
                   target: str | None, norm: str, search_min_eps: bool) -> list[float]:
    """Refuse a request that cannot work before any work is done; the min-eps grid (8-bit)."""
    from advface.attacks.registry import attack_class

    if not photos:
        raise ConfigError("no photos given", fix="name at least one image file")
    if goal not in GOALS:
        raise ConfigError(f"unknown goal {goal!r}", fix=f"use one of {', '.join(GOALS)}")
    if goal == "impersonation" and target is None:
        raise ConfigError("impersonation needs a target identity",
                          fix="pass --target with a gallery folder name")
    if goal == "dodging" and target is not None:
        raise ConfigError("--target is for impersonation", fix="pass --goal impersonation")
    attack = attack.lower()
    if eps_8bit is not None and not (0 <= eps_8bit < math.inf):
        raise ConfigError(f"--eps must be a finite budget >= 0, got {eps_8bit:g}",
                          fix="e.g. --eps 8 (L-inf grey levels) or --eps 255 (L2); leave it out "
                          "for C&W and DeepFool, which find their own minimal perturbation")
    if attack not in PER_IMAGE_ATTACKS:
        raise ConfigError(f"attack {attack!r} cannot attack single photos",
                          fix=f"use one of {', '.join(PER_IMAGE_ATTACKS)}")
    minimum_norm = attack_class(attack).minimum_norm
    if eps_8bit is None and not minimum_norm:
        raise ConfigError(f"attack {attack!r} needs a budget", fix="pass --eps")
    if not search_min_eps:
        return []
    if eps_8bit is None or minimum_norm:
        raise ConfigError("the minimal-eps search needs a fixed-budget attack and --eps as its "
                          "largest budget", fix="C&W and DeepFool already return minimal "
                          "perturbations: drop --min-eps for them")
    grid = ([float(e) for e in range(1, int(eps_8bit) + 1)] if norm == "linf"
            else [eps_8bit * k / 8 for k in range(1, 9)])
    if not grid:
        raise ConfigError(f"no whole grey level up to eps {eps_8bit:g}", fix="give --eps 1 or more")
    return grid


@dataclass
class GalleryNotes:
    """What became of the gallery folder's files: nothing is dropped without a trace."""

    images: int = 0  # enrolled
    ignored: list[str] = field(default_factory=list)  # not identity/image files (with why)
    skipped: list[str] = field(default_factory=list)  # images that could not be read
    fallback_crops: list[str] = field(default_factory=list)  # no face found: centre crop
    excluded: list[str] = field(default_factory=list)  # left out as copies of the photos


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def _check_gallery_layout(gallery_dir: Path) -> None:
    """Refuse a given folder without person sub-folders in --gallery's own words (open_lfw
    would talk about LFW archives and --data, which do not apply to a user's gallery)."""
    from advface.data.folder import IMAGE_SUFFIXES
    from advface.data.lfw import holds_images

    if not gallery_dir.is_dir() or holds_images(gallery_dir):
        return  # a missing folder: _gallery_scorer says so
    loose = sorted(p.name for p in gallery_dir.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    what = (f"the gallery's {len(loose)} image(s) lie directly in the folder ({_few(loose)}), "
            "not in per-person sub-folders" if loose
            else "no images in per-person sub-folders of the gallery folder")
    raise DataError(what, path=gallery_dir,
                    fix="--gallery needs one sub-folder per person (identity/image.jpg): put "
                    "each person's images in a folder named after them")


def _gallery_records(gallery_dir: Path, cache: Path, log: Callable[[str], None],
                     notes: GalleryNotes) -> list[ImageRecord]:
    """The gallery folder's images; what else it holds is logged and noted, never silent."""
    from advface.data.lfw import open_lfw

    lfw = open_lfw(gallery_dir, cache)
    notes.ignored = [str(p) for p in lfw.problems]
    if lfw.problems:
        log(f"ignored {len(lfw.problems)} item(s) of the gallery folder that are not "
            f"identity/image files: {_few([str(p.path) for p in lfw.problems])} (reasons in "
            "summary.json, gallery_ignored)")
    return lfw.records


def _note_fallback_crops(chips: Any, records: list[ImageRecord], log: Callable[[str], None],
                         notes: GalleryNotes) -> None:
    """Gallery images in which no face was found are enrolled as the fixed centre crop: say so."""
    paths = {r.key: str(r.path) for r in records}
    notes.fallback_crops = sorted(paths[k] for k, m in chips.methods.items() if m == "fallback")
    if notes.fallback_crops:
        log(f"no face found in {len(notes.fallback_crops)} gallery image(s), enrolled as the "
            f"fixed centre crop: {_few(notes.fallback_crops)} (all in summary.json, "
            "gallery_fallback_crops)")


#: A gallery image this close to a photo (embedding distance, both metrics) is that photo: a
#: different photo of the same person is tenths away; float noise is about 1e-6.
SAME_IMAGE_DISTANCE = 1e-3


def _gallery_scorer(gallery_dir: Path, model: str, cache: Path, progress: bool,
                    log: Callable[[str], None], photos: torch.Tensor
                    ) -> tuple[Any, GalleryNotes]:
    """The model + the aligned, embedded gallery folder as one score module, and what became
    of the folder's files (ignored, unreadable, fallback crops, left out as copies of photos).

    A photo that is also a gallery image (any LFW photo against the default gallery) would
    otherwise be matched to itself at distance 0: its clean decision would be no recognition
    at all, and the attack would have to move away from an exact copy of itself.
    """
    from advface.align.chips import build_chips
    from advface.identify.embeddings import embed
    from advface.identify.gallery import Gallery, GalleryScorer
    from advface.models.registry import load_face_model

    if not gallery_dir.is_dir():
        raise DataError("gallery folder not found", path=gallery_dir,
                        fix="give a folder of identity/image sub-folders")
    notes = GalleryNotes()
    records = _gallery_records(gallery_dir, cache, log, notes)
    chips = build_chips(records, cache, upsample=ALIGN.upsample, progress=progress)
    notes.skipped = [str(p) for p in chips.problems]
    for line in notes.skipped:
        log(f"skipped gallery image: {line}")
    if note := chips.replaced_note():
        log(note)
    _note_fallback_crops(chips, records, log, notes)
    if not len(chips):
        raise DataError("no usable gallery image", path=gallery_dir,
                        fix="put images in identity/image sub-folders")
    net = load_face_model(model)
    keys = list(chips.keys)
    emb = embed(net, chips, keys, cache_dir=cache, progress=progress)
    mine = embed(net, photos, progress=False)
    twins = torch.cdist(mine.double(), emb.double()).amin(dim=0) < SAME_IMAGE_DISTANCE
    if net.metric == "cosine":
        unit = torch.nn.functional.normalize
        twins |= torch.cdist(unit(mine.double(), dim=1), unit(emb.double(), dim=1)).amin(
            dim=0) < SAME_IMAGE_DISTANCE
    notes.excluded = [k for k, t in zip(keys, twins.tolist(), strict=True) if t]
    for key in notes.excluded:
        log(f"left out of the gallery (it is one of the photos): {key}")
    keep = [i for i, t in enumerate(twins.tolist()) if not t]
    if not keep:
        raise DataError("the gallery holds nothing but the photos", path=gallery_dir,
                        fix="give a gallery with other images of the people")
    kept = [keys[i] for i in keep]
    gallery = Gallery.from_keys(emb[keep], kept, net.metric)
    notes.images = len(kept)
    return GalleryScorer(net, gallery), notes


def _goal(goal: str, identity: str | None, target: str | None, decided: torch.Tensor,
          names: list[str], gallery_dir: Path) -> tuple[Any, torch.Tensor, str]:
    """(goal object, label per photo, where the label came from)."""
    from advface.attacks.base import Dodging, Impersonation

    if goal == "impersonation":
        labels = torch.full_like(decided, _index_of(str(target), names, "target", gallery_dir))
        return Impersonation(labels), labels, "target"
    if identity is not None:
        labels = torch.full_like(decided, _index_of(identity, names, "identity", gallery_dir))
        return Dodging(labels), labels, "given"
    return Dodging(decided.clone()), decided.clone(), "clean decision"


def _run_attack(build: Callable[[Any], Any], attacker: Any, grid255: list[float], scorer: Any,
                clean: torch.Tensor, goal_obj: Any, seed: int
                ) -> tuple[torch.Tensor, list[float | None], list[int | None], list[int | None]]:
    """(adversarial images, minimal eps found or None, iterations, queries) per photo: one run
    of ``attacker``, or with a min-eps grid a search over attacks ``build`` makes per budget."""
    from advface.attacks.sweep import eps_grid_8bit, minimal_eps

    n = clean.shape[0]
    if grid255:
        found = minimal_eps(build, scorer, clean, goal_obj, eps_grid_8bit(grid255),
                            norm=attacker.budget.norm, seed=seed)
        mins = [round(float(v) * 255.0, 6) if math.isfinite(float(v)) else None
                for v in found.min_eps]
        return found.adv, mins, [None] * n, [None] * n
    res = attacker.run(scorer, clean, goal_obj, seed=seed)
    iters = [None] * n if res.iterations is None else [int(v) for v in res.iterations]
    queries = [None] * n if res.queries is None else [int(v) for v in res.queries]
    return res.adv, [None] * n, iters, queries


def _in_batches(photos: int, batch_size: int, progress: bool, what: str) -> Iterable[slice]:
    """Slices of ``batch_size`` photos, with a progress bar that advances as they are used."""
    from tqdm import tqdm

    parts = [slice(i, i + batch_size) for i in range(0, photos, batch_size)]
    return tqdm(parts, desc=what, unit="batch", disable=not progress or len(parts) < 2)


def _scores(scorer: Any, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([scorer(images[i:i + batch_size])
                          for i in range(0, images.shape[0], batch_size)])


def _stems(photos: list[Path]) -> list[str]:
    """File-name stems, distinct even for photos that share a name."""
    stems: list[str] = []
    for p in photos:
        stem, n = Path(p).stem, 1
        while stem in stems:
            n += 1
            stem = f"{Path(p).stem}-{n}"
        stems.append(stem)
    return stems


def attack_photos(
    photos: list[Path],
    gallery_dir: Path | None,
    out_dir: Path,
    *,
    model: str = "dlib",
    attack: str = "pgd",
    norm: str = "linf",
    eps_8bit: float | None = 8.0,
    goal: str = "dodging",
    identity: str | None = None,
    target: str | None = None,
    params: dict[str, Any] | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    aligned: bool = False,
    search_min_eps: bool = False,
    batch_size: int = 16,
    progress: bool = True,
    log: Callable[[str], None] = lambda message: None,
) -> list[PhotoOutcome]:
    """Attack ``photos`` against the gallery folder; files and ``summary.json`` go to ``out_dir``.

    The gallery defaults to the data set (``$ADVFACE_DATA`` or ``../shared/data/lfw``): every
    LFW image, 5,749 identities.

    Dodging needs the photos' true identity: ``identity`` (one gallery folder name for all the
    photos) or, by default, the model's decision on each clean chip, so success means "no longer
    recognised as whom it recognised". Impersonation needs ``target``. ``eps_8bit`` is the
    budget in 8-bit units (``None`` for minimum-norm attacks: C&W, DeepFool). With
    ``search_min_eps`` the answer is "by how little": a binary search over the budgets up to
    ``eps_8bit`` (every whole grey level for L-inf, eighths of it for L2) finds each photo's
    smallest fooling budget, and the files show the image found there. Photos are attacked
    ``batch_size`` at a time (memory stays bounded for many photos). What of the gallery folder
    was not used as is (stray files, empty or nested folders, unreadable images, images with
    no face found, copies of the photos) is passed to ``log`` and listed in ``summary.json``.
    """
    from advface.align.dlib_align import DlibAligner
    from advface.attacks.base import Budget
    from advface.attacks.registry import factory
    from advface.data.images import load_png, save_png, signed_difference, to_uint8
    from advface.metrics.attack import counts_toward_success
    from advface.metrics.perturbation import perturbation_metrics
    from advface.paths import default_cache_dir, default_data_dir

    params = dict(params or {})
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}",
                          fix="pass --batch-size 1 or more")
    grid255 = _check_request(photos, attack, eps_8bit, goal, target, norm, search_min_eps)
    build = factory(attack, **params)  # bad hyper-parameters fail now, before any work
    check_output(Path(out_dir), folder=True, option="--out")  # not after the attack
    attacker = build(Budget.from_8bit(norm, eps_8bit))  # type: ignore[arg-type]
    aligner = None if aligned else DlibAligner(ALIGN)  # photos first: a bad one fails fast
    made = [_photo_chip(Path(p).expanduser(), aligner, ALIGN.size, aligned) for p in photos]
    clean = torch.stack([c for c, _ in made])
    cache = (cache_dir or default_cache_dir()).expanduser()
    if gallery_dir is not None:  # the default, the data set, has open_lfw's LFW advice
        _check_gallery_layout(Path(gallery_dir).expanduser())
    gallery_dir = (default_data_dir() if gallery_dir is None else Path(gallery_dir)).expanduser()
    scorer, notes = _gallery_scorer(gallery_dir, model, cache, progress, log, clean)
    names = scorer.identity_names
    clean_scores = _scores(scorer, clean, batch_size)
    goal_obj, labels, label_from = _goal(goal, identity, target, clean_scores.argmax(dim=1),
                                         names, gallery_dir)
    adv_made, mins, iters, queries = clean.clone(), [], [], []
    for part in _in_batches(len(photos), batch_size, progress, f"{attack} photos"):
        made_part = _run_attack(build, attacker, grid255, scorer, clean[part], goal_obj[part],
                                seed)
        adv_made[part] = made_part[0]
        mins += made_part[1]
        iters += made_part[2]
        queries += made_part[3]

    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = _stems(photos)
    saved = []
    for i, stem in enumerate(stems):
        save_png(out_dir / f"{stem}_clean.png", clean[i])
        save_png(out_dir / f"{stem}_adv.png", adv_made[i])
        save_png(out_dir / f"{stem}_diff_x10.png",
                 signed_difference(to_uint8(clean[i]), to_uint8(adv_made[i])))
        saved.append(load_png(out_dir / f"{stem}_adv.png"))
    adv = torch.stack(saved)  # judged as written to disk
    adv_scores = _scores(scorer, adv, batch_size)
    success = goal_obj.success(adv_scores)
    # The photos the attack had to change: dodging, those decided as their identity;
    # impersonation, those not already decided as the target (labels hold the targets).
    attempted = counts_toward_success(goal, clean_scores.argmax(dim=1), labels, labels)
    pm = perturbation_metrics(clean, adv)
    outcomes = [PhotoOutcome(
        photo=str(photos[i]), align_method=made[i][1],
        clean_png=f"{stem}_clean.png", adv_png=f"{stem}_adv.png",
        diff_png=f"{stem}_diff_x10.png", goal=goal, label=names[int(labels[i])],
        label_from=label_from, clean_top=_top(clean_scores[i], names),
        adv_top=_top(adv_scores[i], names), success=bool(success[i]),
        attempted=bool(attempted[i]),
        linf_8bit=float(pm["linf_8bit"][i]), l2_8bit=float(pm["l2_8bit"][i]),
        ssim=float(pm["ssim"][i]), psnr=float(pm["psnr"][i]),
        iterations=iters[i], queries=queries[i], min_eps_8bit=mins[i])
        for i, stem in enumerate(stems)]
    summary = {
        "model": model, "metric": scorer.gallery.metric, "gallery": str(gallery_dir),
        "gallery_images": notes.images, "gallery_identities": len(names),
        "gallery_ignored": notes.ignored, "gallery_skipped": notes.skipped,
        "gallery_fallback_crops": notes.fallback_crops,
        "gallery_excluded_as_photo": notes.excluded,
        "chance_rank1": 1.0 / len(names),
        "attack": attack, "norm": norm, "eps_8bit": eps_8bit,
        "min_eps_grid_8bit": grid255 or None, "params": params, "seed": seed,
        "n_attempted": int(attempted.sum()),
        "success_rate": (float(success[attempted].float().mean()) if bool(attempted.any())
                         else None),
        "photos": [asdict(o) for o in outcomes],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _panel(out_dir, outcomes)
    return outcomes


def _panel(out_dir: Path, outcomes: list[PhotoOutcome]) -> None:
    """``panel.png``: clean | adversarial | difference x10 per photo, decisions in the titles."""
    # A detached Figure, not pyplot: matplotlib.use("Agg") would switch the caller's whole
    # process (a notebook stops showing its figures after one call).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    fig = Figure(figsize=(7.5, 2.7 * len(outcomes)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(outcomes), 3, squeeze=False)
    for row, o in zip(axes, outcomes, strict=True):
        for ax, name, title in (
            (row[0], o.clean_png, f"clean: {o.clean_top[0][0]}"),
            (row[1], o.adv_png, f"adversarial: {o.adv_top[0][0]}"
             + (" (nothing to change)" if not o.attempted
                else " (fooled)" if o.success else " (not fooled)")),
            (row[2], o.diff_png, f"difference x10\nL-inf {o.linf_8bit:.2f}/255, "
             f"SSIM {o.ssim:.3f}"),
        ):
            with Image.open(out_dir / name) as im:
                ax.imshow(np.asarray(im.convert("RGB")))
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_dir / "panel.png", dpi=110)
