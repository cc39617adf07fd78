"""What the attack benchmarks share: the models under attack, their inputs, memory and machine.

Every model is a plain ``nn.Module`` mapping ``(N, 3, H, W)`` RGB in ``[0, 1]`` to per-identity
scores (argmax = decision), so advface, torchattacks and ART attack the very same object:

``tiny``
    A random-weight CNN with 10 outputs on random images; labels are its own predictions. No
    data needed (a smoke test of the harness, not a face model).
``dlib``
    The dlib ResNet port (``advface.models``) + cosine similarity of the descriptor to each
    identity's centroid of gallery embeddings (``advface.identify.GalleryScorer``,
    ``mode="centroid"``, gallery ``metric="cosine"``). Raw cosines, no temperature: the project's
    scorers never scale them.
``adhoc``
    The ad-hoc CNN trained on the same split (``--checkpoint``): its softmax-head logits,
    columns in the split's identity order (``advface.experiments.models.SoftmaxScorer``).

Inputs for ``dlib``/``adhoc``: the first ``batch`` probes (sorted keys) of the closed-set LFW split
the ad-hoc model was trained on and ``configs/lfw_default.yaml`` attacks (people with >= 20
images, 1 probe each, no distractors, split seed 0: 62 identities, 62 probes), as the cached
aligned chips; labels are the true identities. Missing data or chips stop the benchmark with
what to run; nothing falls back to random data. ``--pack DIR`` takes the same models and inputs
from a pack written by ``gpu_pack.py`` (for the accelerator machine, which has no data).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import platform
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("tiny", "dlib", "adhoc")
DEFAULT_CHECKPOINT = ROOT / "runs" / "models" / "adhoc_min20"
#: The closed-set split of configs/lfw_default.yaml and of the adhoc_min20 checkpoint.
SPLIT = {"min_images": 20, "probes_per_person": 1, "distractors": False, "seed": 0}


class BenchCNN(nn.Module):
    """Small random-weight CNN with a 10-identity head (stands in for a real face model)."""

    def __init__(self, n_ids: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Linear(64 * 16, n_ids)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x - 0.5).flatten(1))


@dataclass
class Bench:
    """A score module and the batch it is attacked on."""

    model: nn.Module
    x: Tensor
    y: Tensor
    description: str

    @property
    def n_classes(self) -> int:
        with torch.no_grad():
            return int(self.model(self.x[:1]).shape[1])


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """The options that pick the model and its inputs (forwarded to worker processes)."""
    ap.add_argument("--model", default="tiny", choices=MODELS)
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                    help="ad-hoc checkpoint dir (--model adhoc)")
    ap.add_argument("--size", type=int, default=64,
                    help="image side for --model tiny (dlib/adhoc use the 150x150 chips)")
    ap.add_argument("--data", type=Path, default=None,
                    help="LFW folder (default $ADVFACE_DATA or ../shared/data/lfw)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="advface cache with chips/embeddings (default $ADVFACE_CACHE)")
    ap.add_argument("--pack", type=Path, default=None,
                    help="take dlib/adhoc and their inputs from a GPU pack (gpu_pack.py) "
                    "instead of the data and cache")


def model_argv(args: argparse.Namespace) -> list[str]:
    """``add_model_args`` options as a command line, for worker subprocesses."""
    out = ["--model", args.model, "--checkpoint", str(args.checkpoint), "--size", str(args.size)]
    if args.data is not None:
        out += ["--data", str(args.data)]
    if args.cache is not None:
        out += ["--cache", str(args.cache)]
    if args.pack is not None:
        out += ["--pack", str(args.pack)]
    return out


def _stop(what: str, fix: str | None) -> SystemExit:
    return SystemExit(f"error: {what}" + (f"\n  fix: {fix}" if fix else ""))


def _stop_from(err: Any, fix: str | None = None) -> SystemExit:
    """An advface error (message, file) as an exit message, with ``fix`` replacing its own."""
    where = f" ({err.path})" if err.path is not None else ""
    return _stop(f"{err.message}{where}", fix or err.fix)


def _split_and_chips(args: argparse.Namespace):
    """The benchmark split and its chip index; stops with what to run when anything is missing."""
    from advface.align.chips import ChipIndex
    from advface.align.dlib_align import AlignParams
    from advface.data.lfw import open_lfw
    from advface.data.splits import make_closed_set_split
    from advface.errors import AdvfaceError
    from advface.paths import default_cache_dir, default_data_dir

    data_dir = (args.data or default_data_dir()).expanduser()
    cache_dir = (args.cache or default_cache_dir()).expanduser()
    align_cmd = (f"ADVFACE_DATA={data_dir} ADVFACE_CACHE={cache_dir} advface model align  "
                 "(or pass --cache / set ADVFACE_CACHE to the cache that holds the chips)")
    # The chipset every advface run uses (build_chips defaults: 150 px, padding 0.25, upsample 1).
    # Checked first: opening LFW with an empty cache would start extracting the archive.
    chips = ChipIndex.open(cache_dir, AlignParams(size=150, padding=0.25, upsample=1))
    if not chips.entries:
        raise _stop(f"no aligned chips in {chips.root}", f"align LFW once: {align_cmd}")
    try:
        lfw = open_lfw(data_dir, cache_dir)
    except AdvfaceError as err:
        raise _stop_from(err) from err
    split = make_closed_set_split(lfw.records, **SPLIT)
    needed = set(split.probes) | set(split.gallery)
    missing = sorted(needed - set(chips.entries))
    if missing:
        raise _stop(
            f"{len(missing)} of the {len(needed)} chips of the benchmark split are not in the "
            f"chip cache {chips.root} (e.g. {missing[0]})",
            f"align LFW once: {align_cmd}",
        )
    return split, chips, cache_dir


def _check_trained_on(ckpt: Path, split: Any) -> None:
    """Refuse a checkpoint trained on another split: its "probes" could be training images."""
    from advface.data.splits import ClosedSetSplit

    saved = (ckpt if ckpt.is_dir() else ckpt.parent) / "split.json"
    if saved.is_file() and ClosedSetSplit.load(saved).hash != split.hash:
        raise _stop(f"{ckpt} was trained on another split than the benchmark's ({SPLIT})",
                    "pass --checkpoint of a model trained with configs/train_adhoc.yaml")


def build_bench(args: argparse.Namespace, batch: int) -> Bench:
    """The ``--model`` score module (eval mode, frozen weights) and ``batch`` inputs + labels."""
    if args.model == "tiny":
        torch.manual_seed(0)
        model = BenchCNN().eval()
        g = torch.Generator().manual_seed(1)
        x = torch.randint(0, 256, (batch, 3, args.size, args.size), generator=g).float() / 255
        with torch.no_grad():
            y = model(x).argmax(1)
        return Bench(model, x, y, f"tiny random CNN, 10 classes, random {args.size}x{args.size} "
                     "images labelled by its own predictions")

    if args.pack is not None:
        from gpu_pack import load_bench

        return load_bench(args.pack, args.model, batch)

    from advface.errors import AdvfaceError
    from advface.experiments.config import ModelSpec
    from advface.experiments.models import SoftmaxScorer, load_model

    split, chips, cache_dir = _split_and_chips(args)
    if batch > len(split.probes):
        raise SystemExit(f"error: --batch {batch} > the split's {len(split.probes)} probes")
    probes = split.probes[:batch]  # sorted keys
    x = chips.load(probes)
    y = torch.tensor(split.probe_labels()[:batch])
    names = split.identities
    what = (f"first {batch} probes of the LFW closed-set split (min_images=20, 1 probe/person, "
            f"no distractors, seed 0: {len(names)} identities), 150x150 dlib chips")
    try:
        if args.model == "dlib":
            from advface.identify.embeddings import embed
            from advface.identify.gallery import Gallery, GalleryScorer

            face = load_model(ModelSpec(name="dlib", source="dlib"))
            gallery_keys = split.gallery  # sorted, the order of gallery_labels()
            emb = embed(face, chips, gallery_keys, cache_dir=cache_dir, progress=False)
            gallery = Gallery(emb, split.gallery_labels(), names, "cosine")
            model: nn.Module = GalleryScorer(face, gallery, mode="centroid")
            desc = (f"dlib ResNet port, cosine to {len(names)} identity centroids of "
                    f"{len(gallery_keys)} gallery embeddings; {what}")
        else:
            ckpt = Path(args.checkpoint)
            _check_trained_on(ckpt, split)
            face = load_model(ModelSpec(name="adhoc", source="adhoc", checkpoint=ckpt))
            model = SoftmaxScorer(face, names)
            desc = f"ad-hoc CNN {Path(ckpt).name} softmax logits ({len(names)} classes); {what}"
    except AdvfaceError as err:
        fix = ("train it: advface train adhoc --config configs/train_adhoc.yaml --out "
               f"{args.checkpoint}" if args.model == "adhoc" else None)
        raise _stop_from(err, fix) from err
    return Bench(model.eval(), x, y, desc)


# --------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class PeakRSS:
    """Peak resident memory of a ``with`` block, in MiB, in this process.

    On Linux the high-water mark (VmHWM) is reset on entry (``/proc/self/clear_refs``), so
    ``peak_mib`` is the block's own peak and ``increase_mib`` its growth over the resident size at
    entry (model, inputs, interpreter). Elsewhere it falls back to ``ru_maxrss``, the process
    peak so far, which setup may already have raised (``method`` says which was used). torch's
    CPU allocator is invisible to tracemalloc, hence RSS.
    """

    def __enter__(self) -> PeakRSS:
        self.method = "ru_maxrss"
        try:
            Path("/proc/self/clear_refs").write_text("5")
            if _status_kib("VmHWM") is not None:
                self.method = "VmHWM"
        except OSError:
            pass
        now = _status_kib("VmRSS")
        self.start_kib = now if now is not None else resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc: object) -> None:
        peak = _status_kib("VmHWM") if self.method == "VmHWM" else None
        self.peak_kib = peak if peak is not None else resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024

    @property
    def increase_mib(self) -> float:
        return max(0, self.peak_kib - self.start_kib) / 1024


class Counting(nn.Module):
    """Counts images through the wrapped score module, with and without autograd."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.grad_images = 0
        self.forward_images = 0

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad_images += int(x.shape[0])
        else:
            self.forward_images += int(x.shape[0])
        return self.model(x)


# --------------------------------------------------------------------------- machine, tables


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(threads: int) -> str:
    """One line describing where the numbers were taken."""
    versions = [f"torch {torch.__version__}"]
    for mod in ("torchattacks", "art"):
        with contextlib.suppress(ImportError):
            versions.append(f"{mod} {__import__(mod).__version__}")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{cpu_name()}, {os.cpu_count()} cores, {threads} torch thread(s), "
            f"{', '.join(versions)}, Python {platform.python_version()}; load average at the "
            f"start {load} (cores shared with other jobs inflate times)")


def write_tables(out: Path, stem: str, rows: list[dict[str, Any]], markdown: str) -> None:
    """``out/stem.csv`` (all rows) and ``out/stem.md``; prints where they went."""
    out.mkdir(parents=True, exist_ok=True)
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with (out / f"{stem}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    (out / f"{stem}.md").write_text(markdown)
    print(f"wrote {out / stem}.csv and .md")
