"""`advface model ...`: align LFW into chips, then measure a face model's clean identification
and verification accuracy (the baseline every attack result is compared with)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from advface.paths import check_output

app = typer.Typer(help="Align faces and evaluate face models (identification, verification).",
                  no_args_is_help=True)

DataOpt = Annotated[Path | None, typer.Option(
    "--data", help="LFW folder (archive or extracted tree inside) or archive path "
    "(default: $ADVFACE_DATA or ../shared/data/lfw)")]
CacheOpt = Annotated[Path | None, typer.Option(
    "--cache", help="cache for extracted archives, chips and embeddings "
    "(default: $ADVFACE_CACHE or ~/.cache/advface)")]
UpsampleOpt = Annotated[int, typer.Option(
    "--upsample", min=0, help="HOG detector upsampling (1 finds LFW's smallish faces)")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, help="alignment processes")]
SecondOpt = Annotated[bool, typer.Option(
    "--cnn-fallback/--no-cnn-fallback", help="retry images without a HOG face with dlib's CNN "
    "detector (~1 s each) before the fallback crop (a separate chipset)")]
ModelOpt = Annotated[str, typer.Option(
    "--model", help="registered model name (e.g. dlib) or a model file (.onnx, .dat)")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="embedding batch size")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="also write the results as JSON")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="progress bars")]


def _paths(data: Path | None, cache: Path | None) -> tuple[Path, Path]:
    from advface.paths import default_cache_dir, default_data_dir

    return (data or default_data_dir()).expanduser(), (cache or default_cache_dir()).expanduser()


def _aligned(data: Path | None, cache: Path | None, upsample: int, workers: int,
             progress: bool, cnn_fallback: bool = False):
    """Open LFW and make sure every image has a chip (a no-op once `align` has run)."""
    from advface.align.chips import build_chips
    from advface.data.lfw import open_lfw

    data_dir, cache_dir = _paths(data, cache)
    lfw = open_lfw(data_dir, cache_dir)
    chips = build_chips(lfw.records, cache_dir, upsample=upsample, workers=workers,
                        second_detector="cnn" if cnn_fallback else "none", progress=progress)
    for p in chips.problems:
        typer.echo(f"skipped (no chip): {p}", err=True)
    _say_replaced(chips)
    return lfw, chips, cache_dir


def _say_replaced(chips) -> None:
    if note := chips.replaced_note():
        typer.echo(note, err=True)


def _write_json(path: Path | None, obj: object) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=2) + "\n")
        typer.echo(f"wrote {path}")


@app.command()
def align(
    data: DataOpt = None,
    cache: CacheOpt = None,
    upsample: UpsampleOpt = 1,
    workers: WorkersOpt = 2,
    cnn_fallback: SecondOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Align every image with dlib (HOG + 5 landmarks + get_face_chip) into cached 150x150 chips.

    Resumable: rerunning skips finished chips; images without a detected face get the
    documented fallback crop and are counted.
    """
    from advface.align.chips import build_chips
    from advface.data.lfw import open_lfw

    data_dir, cache_dir = _paths(data, cache)
    lfw = open_lfw(data_dir, cache_dir)
    start = time.perf_counter()
    chips = build_chips(lfw.records, cache_dir, upsample=upsample, workers=workers,
                        second_detector="cnn" if cnn_fallback else "none", progress=progress)
    seconds = time.perf_counter() - start
    n = len(chips)
    by_cnn = sum(1 for m in chips.methods.values() if m == "dlib-cnn")
    typer.echo(f"images:     {len(lfw.records):,}")
    typer.echo(f"chips:      {n:,} ({n - chips.fallback_count - by_cnn:,} dlib HOG, "
               + (f"{by_cnn:,} dlib CNN, " if cnn_fallback else "")
               + f"{chips.fallback_count:,} fallback crops)")
    _say_replaced(chips)
    typer.echo(f"problems:   {len(chips.problems):,}")
    for p in chips.problems:
        typer.echo(f"  {p}")
    typer.echo(f"time:       {seconds:.1f} s ({workers} workers, upsample {upsample})")
    typer.echo(f"chipset:    {chips.root}")


@app.command()
def identify(
    data: DataOpt = None,
    cache: CacheOpt = None,
    model: ModelOpt = "dlib",
    min_images: Annotated[int, typer.Option(
        "--min-images", min=2, help="people with at least this many images give probes")] = 2,
    probes_per_person: Annotated[int, typer.Option(
        "--probes-per-person", min=1, help="probes held out per enrolled person")] = 1,
    seed: Annotated[int, typer.Option("--seed", min=0, help="split seed")] = 0,
    upsample: UpsampleOpt = 1,
    workers: WorkersOpt = 2,
    cnn_fallback: SecondOpt = False,
    batch_size: BatchOpt = 64,
    json_out: JsonOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Closed-set identification on LFW: rank-1/5/10/20 (nearest image, centroid) vs random."""
    from advface.data.splits import make_closed_set_split
    from advface.identify.evaluate import evaluate_identification
    from advface.models.registry import load_face_model

    check_output(json_out, folder=False, option="--json")
    lfw, chips, cache_dir = _aligned(data, cache, upsample, workers, progress, cnn_fallback)
    records = [r for r in lfw.records if r.key in chips]
    split = make_closed_set_split(records, min_images=min_images,
                                  probes_per_person=probes_per_person, seed=seed)
    net = load_face_model(model)
    start = time.perf_counter()
    result = evaluate_identification(net, chips, split, batch_size=batch_size,
                                     cache_dir=cache_dir, progress=progress)
    seconds = time.perf_counter() - start
    typer.echo(f"model {model} ({net.metric}); split {split.hash[:12]}: {result.n_probes:,} "
               f"probes, gallery {result.n_gallery:,} images of {result.n_identities:,} "
               f"identities ({len(split.distractors):,} distractor images)")
    typer.echo(result.table())
    typer.echo(f"time: {seconds:.1f} s")
    _write_json(json_out, {"model": model, "split_hash": split.hash, **result.to_dict()})


@app.command()
def verify(
    data: DataOpt = None,
    cache: CacheOpt = None,
    model: ModelOpt = "dlib",
    upsample: UpsampleOpt = 1,
    workers: WorkersOpt = 2,
    cnn_fallback: SecondOpt = False,
    batch_size: BatchOpt = 64,
    json_out: JsonOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """LFW pairs.txt verification: 10-fold accuracy (mean +- std), AUC, EER, TAR@FAR."""
    from advface.identify.embeddings import embed
    from advface.identify.verification import verify_lfw_pairs
    from advface.models.registry import load_face_model

    check_output(json_out, folder=False, option="--json")
    lfw, chips, cache_dir = _aligned(data, cache, upsample, workers, progress, cnn_fallback)
    pairs = lfw.pairs()
    keys = sorted({k for p in pairs for k in (p.key_a, p.key_b)})
    net = load_face_model(model)
    start = time.perf_counter()
    emb = embed(net, chips, keys, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    res = verify_lfw_pairs(dict(zip(keys, emb, strict=True)), pairs, net.metric)
    seconds = time.perf_counter() - start
    folds = len(set(p.fold for p in pairs))
    typer.echo(f"model {model} ({net.metric}): {res['n_pairs']:,} pairs, {folds} folds")
    typer.echo(f"accuracy:  {res['mean_accuracy']:.4f} +- {res['std_accuracy']:.4f} "
               f"({folds}-fold, threshold chosen on the other {folds - 1} folds)")
    typer.echo(f"AUC:       {res['auc']:.5f}")
    typer.echo(f"EER:       {res['eer']:.4f}")
    for far, tar in res["tar_at_far"].items():
        typer.echo(f"TAR@FAR={far}: {tar:.4f}")
    typer.echo(f"time: {seconds:.1f} s")
    _write_json(json_out, {"model": model, **res})
