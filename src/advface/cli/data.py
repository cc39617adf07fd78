"""`advface data ...`: inspect, validate, download LFW and write closed-set splits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from advface.config import DataConfig, load_yaml, parse_config
from advface.errors import DataError

app = typer.Typer(help="Inspect, validate and download LFW; write closed-set splits.",
                  no_args_is_help=True)

DataOpt = Annotated[Path | None, typer.Option(
    "--data", help="LFW folder (archive or extracted tree inside) or archive path "
    "(default: $ADVFACE_DATA or ../shared/data/lfw)")]
CacheOpt = Annotated[Path | None, typer.Option(
    "--cache", help="cache folder for extracted archives (default: $ADVFACE_CACHE or "
    "~/.cache/advface)")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="YAML file with DataConfig keys; command-line options override it")]
MinImagesOpt = Annotated[int | None, typer.Option(
    "--min-images", help="people with at least this many images are enrolled (default: 2)")]
ProbesOpt = Annotated[int | None, typer.Option(
    "--probes-per-person", help="probe images held out per enrolled person (default: 1)")]
FractionOpt = Annotated[float | None, typer.Option(
    "--probe-fraction", help="hold out this fraction of each person's images instead")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="split seed (default: 0)")]
DistractorsOpt = Annotated[bool | None, typer.Option(
    "--distractors/--no-distractors",
    help="add the images of people below --min-images to the gallery (default: on)")]
DownloadOpt = Annotated[bool, typer.Option(
    "--download", help="download missing official LFW files first")]


def _data_config(config: Path | None, **overrides: Any) -> DataConfig:
    """The config file (if any) with the command-line options that were given on top."""
    base = load_yaml(config, DataConfig) if config is not None else DataConfig()
    given = {k: v for k, v in overrides.items() if v is not None}
    return parse_config({**base.model_dump(), **given}, DataConfig)


def _fmt_split(stats: dict[str, Any], params: dict[str, Any]) -> list[str]:
    per = stats["images_per_person"]
    held = (f"fraction {params['probe_fraction']}" if params["probe_fraction"] is not None
            else f"{params['probes_per_person']}/person")
    return [
        f"split (min_images={params['min_images']}, probes {held}, distractors="
        f"{'on' if params['distractors'] else 'off'}, seed={params['seed']}):",
        f"  people:       {stats['people']:,}",
        f"  gallery:      {stats['gallery']:,} ({stats['gallery_enrolled']:,} of enrolled people"
        f" + {stats['distractors']:,} distractors)",
        f"  probes:       {stats['probes']:,}",
        f"  distractors:  {stats['distractors']:,} images of {stats['distractor_people']:,} people",
        f"  images/person: min {per['min']}, median {per['median']}, max {per['max']}",
        f"  hash:         {stats['hash']}",
    ]


def _open(cfg: DataConfig, download: bool = False, verify_images: bool = False):
    from advface.data.lfw import open_lfw

    return open_lfw(cfg.resolved_data_dir(), cfg.resolved_cache_dir(), download=download,
                    verify_images=verify_images)


@app.command()
def info(
    data: DataOpt = None,
    cache: CacheOpt = None,
    config: ConfigOpt = None,
    min_images: MinImagesOpt = None,
    probes_per_person: ProbesOpt = None,
    probe_fraction: FractionOpt = None,
    seed: SeedOpt = None,
    distractors: DistractorsOpt = None,
    download: DownloadOpt = False,
) -> None:
    """Dataset statistics, validation against lfw-names.txt, and the closed-set split's sizes."""
    from advface.data.splits import make_closed_set_split

    cfg = _data_config(config, data_dir=data, cache_dir=cache, min_images=min_images,
                       probes_per_person=probes_per_person, probe_fraction=probe_fraction,
                       seed=seed, distractors=distractors)
    lfw = _open(cfg, download=download)
    source = lfw.archive if lfw.archive is not None else lfw.image_root
    typer.echo(f"data:        {source}")
    if lfw.archive is not None:
        typer.echo(f"extracted:   {lfw.image_root}")
    typer.echo(f"protocols:   {lfw.protocol_dir}")
    typer.echo(f"people:      {len(lfw.identities()):,}")
    typer.echo(f"images:      {len(lfw.records):,}")
    try:
        report = lfw.validate()
        typer.echo(f"validation:  {report.summary()}")
    except DataError as err:
        typer.echo(f"validation:  not possible ({err.message}; see `advface data validate`)")
    typer.echo(f"problems:    {len(lfw.problems):,}"
               + (" (list them with `advface data validate`)" if lfw.problems else ""))
    split = make_closed_set_split(lfw.records, **cfg.split_kwargs())
    for line in _fmt_split(split.stats(), split.params):
        typer.echo(line)


@app.command()
def split(
    out: Annotated[Path, typer.Option("--out", help="where to write the split JSON")],
    data: DataOpt = None,
    cache: CacheOpt = None,
    config: ConfigOpt = None,
    min_images: MinImagesOpt = None,
    probes_per_person: ProbesOpt = None,
    probe_fraction: FractionOpt = None,
    seed: SeedOpt = None,
    distractors: DistractorsOpt = None,
    download: DownloadOpt = False,
) -> None:
    """Write a reproducible closed-set split (gallery, probes, distractors) as JSON."""
    from advface.data.splits import make_closed_set_split

    cfg = _data_config(config, data_dir=data, cache_dir=cache, min_images=min_images,
                       probes_per_person=probes_per_person, probe_fraction=probe_fraction,
                       seed=seed, distractors=distractors)
    lfw = _open(cfg, download=download)
    result = make_closed_set_split(lfw.records, **cfg.split_kwargs())
    result.save(out)
    for line in _fmt_split(result.stats(), result.params):
        typer.echo(line)
    typer.echo(f"written:     {out}")


@app.command()
def validate(
    data: DataOpt = None,
    cache: CacheOpt = None,
    verify_images: Annotated[bool, typer.Option(
        "--verify-images", help="decode every image (slower) to find corrupt files")] = False,
    checksums: Annotated[bool, typer.Option(
        "--checksums/--no-checksums",
        help="check files against SHA256SUMS (else the official LFW checksums)")] = True,
) -> None:
    """Full report: people/images missing or extra vs lfw-names.txt, every skipped file and
    why, and checksums. A plain identity folder (no LFW protocol files) gets every check but
    the name list. Exits with status 1 when anything is wrong."""
    from advface.data.lfw import CHECKSUM_FILE

    cfg = _data_config(None, data_dir=data, cache_dir=cache)
    lfw = _open(cfg, verify_images=verify_images)
    typer.echo(f"images:      {lfw.image_root}")
    report = lfw.validate()
    for line in report.lines():
        typer.echo(line)
    if not report.names_checked:
        typer.echo(_plain_folder_note(verify_images))
    ok = report.ok
    if checksums and not lfw.has_checksummed_files():
        typer.echo(f"checksums:   not checked (no {CHECKSUM_FILE} and no official LFW file in "
                   f"{lfw.protocol_dir})")
    elif checksums:
        sums = lfw.verify_checksums()
        for line in sums.lines():
            typer.echo(line)
        ok = ok and sums.ok
    if not ok:
        raise typer.Exit(code=1)


def _plain_folder_note(verify_images: bool) -> str:
    """What a plain identity folder's validation did check, so "OK" is not over-read."""
    checked = "files outside identity folders, non-image files, empty and nested folders"
    if verify_images:
        return f"checked:     {checked}, unreadable images"
    return f"checked:     {checked} (add --verify-images to decode every image too)"


@app.command()
def download(
    data: DataOpt = None,
    base_url: Annotated[str | None, typer.Option(
        "--base-url", help="mirror to download from (default: $ADVFACE_LFW_URL or the "
        "official LFW site)")] = None,
) -> None:
    """Download the official LFW files missing from --data (resumable, checksum-verified)."""
    from advface.data.download import LFW_REQUIRED, download_lfw

    target = _data_config(None, data_dir=data).resolved_data_dir()
    missing = [n for n in LFW_REQUIRED if not (target / n).is_file()]
    if not missing:
        typer.echo(f"all LFW files already present in {target}")
        return
    for path in download_lfw(target, missing, base_url=base_url):
        typer.echo(f"downloaded:  {path}")
