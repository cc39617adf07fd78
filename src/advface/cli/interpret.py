"""`advface interpret ...`: saliency overlays and identity visualisations of a trained model.

Thin wrappers around :mod:`advface.interpret`. Images larger than the model's input are
centre-cropped to it (the ad-hoc model's center-crop convention: the 150x150 centre of a
250x250 LFW image), smaller or non-square ones resized, and the choice is printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Interpretability: saliency maps and identity visualisation.",
                  no_args_is_help=True)

CheckpointOpt = Annotated[Path, typer.Option(
    "--checkpoint", help="ad-hoc model: a training run folder or its model.safetensors")]
# Options of the commands that work on a finished run directory.
RunDirArg = Annotated[Path, typer.Argument(help="run directory written by `advface run`")]
RunModelOpt = Annotated[list[str] | None, typer.Option(
    "--model", help="model of the run (repeat for several; default: all)")]
RunDataOpt = Annotated[Path | None, typer.Option(
    "--data", help="LFW folder or archive (default: the run's config)")]
RunCacheOpt = Annotated[Path | None, typer.Option(
    "--cache", help="cache folder (default: the run's config)")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="torch CPU threads")]


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _load_model(checkpoint: Path):
    from advface.models.adhoc import load_adhoc

    return load_adhoc(checkpoint)


def _load_image(path: Path, size: int):
    """(3, size, size) float tensor on the 8-bit grid, plus a note on what was done."""
    from advface.data.images import center_crop, load_rgb, resize, to_tensor

    arr = load_rgb(path)
    h, w = arr.shape[:2]
    if (h, w) == (size, size):
        note = "used as is"
    elif h >= size and w >= size:
        arr = center_crop(arr, size)
        note = f"centre-cropped {w}x{h} -> {size}x{size}"
    else:
        arr = resize(arr, size, "bilinear")
        note = f"resized {w}x{h} -> {size}x{size}"
    return to_tensor(arr), note


def _identity_index(names: list[str], identity: str) -> int:
    from advface.errors import AdvfaceError

    if identity.isdigit() and int(identity) < len(names):
        return int(identity)
    if identity in names:
        return names.index(identity)
    import difflib

    close = difflib.get_close_matches(identity, names, n=3)
    hint = f" (close: {', '.join(close)})" if close else ""
    raise AdvfaceError(f"unknown identity {identity!r}{hint}",
                       fix="use one of the model's class names or an index")


def _overlay_path(out: Path | None, image: Path, method: str) -> Path:
    """Where the overlay goes: --out, else the current directory; never beside the image,
    where it would count as another photo of that person. PNG bytes need a .png name."""
    from advface.errors import AdvfaceError

    if out is None:
        return Path(f"{image.stem}_{method}.png")
    if out.suffix.lower() != ".png":
        raise AdvfaceError(f"--out must name a .png file (the overlay is a PNG), got {out.name!r}",
                           path=out, fix="name a .png file, e.g. --out overlay.png")
    return out


@app.command("saliency")
def saliency(
    checkpoint: CheckpointOpt,
    image: Annotated[Path, typer.Option("--image", help="face image (PNG/JPEG)")],
    method: Annotated[str, typer.Option(
        "--method", help="vanilla, smoothgrad or ig (integrated gradients)")] = "smoothgrad",
    target: Annotated[str | None, typer.Option(
        "--target", help="identity to explain (name or index; default: the decision)")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="overlay PNG (default: ./<image stem>_<method>.png in the current "
        "directory, not next to the image, where it would join the data set)")] = None,
    samples: Annotated[int, typer.Option("--samples", min=1, help="SmoothGrad samples")] = 25,
    noise: Annotated[float, typer.Option("--noise", min=0.0, help="SmoothGrad noise std")
                     ] = 0.15,
    steps: Annotated[int, typer.Option("--steps", min=1, help="IG quadrature steps")] = 64,
    baseline: Annotated[str, typer.Option("--baseline", help="IG baseline: black or blur")
                        ] = "black",
    alpha: Annotated[float, typer.Option("--alpha", min=0.0, max=1.0,
                                         help="overlay opacity")] = 0.6,
    smooth: Annotated[float, typer.Option(
        "--smooth", min=0.0, help="Gaussian sigma (pixels) applied to the map; removes the "
        "grid pattern of the ad-hoc model's 150->64 px pooling")] = 1.5,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Write a heat-map overlay of which pixels drive the model's identity score."""
    import torch

    from advface.data.images import save_png
    from advface.errors import AdvfaceError
    from advface.interpret.saliency import (
        heatmap,
        integrated_gradients,
        overlay,
        smoothgrad,
        vanilla_gradient,
    )
    from advface.interpret.scoring import LogitScorer

    path = _overlay_path(out, image, method)
    model = _load_model(checkpoint)
    scorer = LogitScorer(model)
    x, note = _load_image(image, int(model.input_size))
    x = x[None]
    names = scorer.class_names
    with torch.no_grad():
        probs = scorer(x).softmax(1)[0]
    t = _identity_index(names, target) if target is not None else int(probs.argmax())
    if method == "vanilla":
        attr = vanilla_gradient(scorer, x, t)
    elif method == "smoothgrad":
        attr = smoothgrad(scorer, x, t, samples=samples, noise=noise, seed=seed)
    elif method in ("ig", "integrated-gradients"):
        if baseline not in ("black", "blur"):
            raise AdvfaceError(f"unknown baseline {baseline!r}", fix="use black or blur")
        attr = integrated_gradients(scorer, x, t, baseline=baseline, steps=steps)  # type: ignore[arg-type]
    else:
        raise AdvfaceError(f"unknown method {method!r}", fix="use vanilla, smoothgrad or ig")
    heat = heatmap(attr, smooth=smooth)[0]
    save_png(path, overlay(x[0], heat, alpha=alpha))
    top = probs.topk(min(3, probs.numel()))
    decided = ", ".join(f"{names[i]} {p:.3f}" for p, i in zip(top.values.tolist(),
                                                               top.indices.tolist(), strict=True))
    typer.echo(f"image {image} ({note}); top identities: {decided}")
    typer.echo(f"explained identity: {names[t]}; overlay written to {path}")


@app.command("identity")
def identity(
    checkpoint: CheckpointOpt,
    name: Annotated[str, typer.Option("--identity", help="identity name or index")],
    start: Annotated[Path | None, typer.Option(
        "--from-image", help="start from this face (another person) instead of noise")] = None,
    steps: Annotated[int, typer.Option("--steps")] = 200,
    lr: Annotated[float, typer.Option("--lr")] = 0.05,
    jitter: Annotated[int, typer.Option("--jitter", help="max shift in pixels (0: off)")] = 4,
    blur_every: Annotated[int, typer.Option("--blur-every", help="0: off")] = 8,
    blur_sigma: Annotated[float, typer.Option("--blur-sigma")] = 0.5,
    tv_weight: Annotated[float, typer.Option("--tv-weight")] = 0.002,
    l2_decay: Annotated[float, typer.Option("--l2-decay")] = 0.0,
    objective: Annotated[str | None, typer.Option(
        "--objective", help="score or log_softmax (default: score from noise, log_softmax "
        "from a face, where only the change toward the target matters)")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    out: Annotated[Path, typer.Option("--out", help="output PNG")] = Path("identity.png"),
) -> None:
    """Gradient ascent on the input toward one identity (softmax head), from noise or from
    another person's face; writes the image and prints the decision on it."""
    import torch

    from advface.data.images import save_png
    from advface.interpret.identity_viz import (
        VizConfig,
        identity_objective,
        noise_start,
        visualise_identity,
    )
    from advface.interpret.scoring import LogitScorer

    model = _load_model(checkpoint)
    scorer = LogitScorer(model)
    size = int(model.input_size)
    idx = _identity_index(scorer.class_names, name)
    if start is not None:
        x0, note = _load_image(start, size)
        x0 = x0[None]
        typer.echo(f"start: {start} ({note})")
    else:
        x0 = noise_start(1, size, seed=seed)
    # From a face, the priors regularise the edit, not the face itself.
    cfg = VizConfig(steps=steps, lr=lr, jitter=jitter, blur_every=blur_every,
                    blur_sigma=blur_sigma, tv_weight=tv_weight, l2_decay=l2_decay,
                    prior_on="change" if start is not None else "image")
    kind = objective or ("log_softmax" if start is not None else "score")
    res = visualise_identity(identity_objective(scorer, idx, kind), x0, cfg,  # type: ignore[arg-type]
                             seed=seed, progress=True, model=model)
    save_png(out, res.images[0])
    with torch.no_grad():
        probs = scorer(res.images).softmax(1)[0]
    typer.echo(f"wrote {out}; p({scorer.class_names[idx]}) = {float(probs[idx]):.3f}, decision "
               f"{scorer.class_names[int(probs.argmax())]}")


@app.command("run-figures")
def run_figures(
    run_dir: RunDirArg,
    model: RunModelOpt = None,
    n: Annotated[int, typer.Option("--n", help="fooled probes per model")] = 3,
    attack: Annotated[str, typer.Option(
        "--attack", help="dodging attack of the run whose images are explained")] = "pgd",
    eps: Annotated[float | None, typer.Option(
        "--eps", help="its budget in grey levels (default: the smallest that fooled --n "
        "probes)")] = None,
    samples: Annotated[int, typer.Option("--samples", help="SmoothGrad samples")] = 16,
    noise: Annotated[float, typer.Option("--noise", help="SmoothGrad noise std")] = 0.15,
    steps: Annotated[int, typer.Option("--steps", help="IG quadrature steps")] = 128,
    baseline: Annotated[str, typer.Option("--baseline", help="IG baseline: black or blur")
                        ] = "black",
    top: Annotated[float, typer.Option(
        "--top", help="fraction of most salient pixels the perturbation energy is measured "
        "on")] = 0.2,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    data: RunDataOpt = None,
    cache: RunCacheOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Saliency (vanilla, SmoothGrad, IG) of a run's fooled probes, clean vs adversarial,
    and the share of the perturbation on the most salient pixels; writes
    RUN_DIR/interpret/saliency_<model>_<attack>.{png,json}, which `advface report` includes."""
    from advface.errors import AdvfaceError
    from advface.interpret.run_figures import SaliencySettings, run_saliency

    if baseline not in ("black", "blur"):
        raise AdvfaceError(f"unknown baseline {baseline!r}", fix="use black or blur")
    _set_threads(threads)
    settings = SaliencySettings(n=n, attack=attack, eps255=eps, samples=samples, noise=noise,
                                steps=steps, baseline=baseline, top_fraction=top, seed=seed)
    docs = run_saliency(run_dir, model or None, settings, data_dir=data, cache_dir=cache,
                        log=typer.echo)
    typer.echo(f"wrote {len(docs)} saliency figure(s) to {run_dir / 'interpret'}; "
               f"`advface report {run_dir}` includes them")


@app.command("run-identity")
def run_identity(
    run_dir: RunDirArg,
    model: RunModelOpt = None,
    n: Annotated[int, typer.Option("--n", help="identities per model (>= 2)")] = 4,
    steps: Annotated[int, typer.Option("--steps", help="gradient-ascent steps")] = 200,
    lr: Annotated[float, typer.Option("--lr")] = 0.05,
    jitter: Annotated[int, typer.Option("--jitter", help="max shift in pixels (0: off)")] = 4,
    blur_every: Annotated[int, typer.Option("--blur-every", help="0: off")] = 8,
    blur_sigma: Annotated[float, typer.Option("--blur-sigma")] = 0.5,
    tv_weight: Annotated[float, typer.Option("--tv-weight")] = 0.002,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    head: Annotated[str, typer.Option(
        "--head", help="run: each model's decision in the run; softmax: the softmax head of "
        "the models that have one")] = "run",
    data: RunDataOpt = None,
    cache: RunCacheOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Identity visualisation of each model of a run (softmax: the identity's score; gallery
    models: similarity to the identity's centroid), from noise and from another person's
    probe; writes RUN_DIR/interpret/identity_<model>.{png,json}, which `advface report`
    includes."""
    from advface.interpret.identity_viz import VizConfig
    from advface.interpret.run_identity import IdentitySettings
    from advface.interpret.run_identity import run_identity as _run_identity

    _set_threads(threads)
    settings = IdentitySettings(n=n, seed=seed, viz=VizConfig(
        steps=steps, lr=lr, jitter=jitter, blur_every=blur_every, blur_sigma=blur_sigma,
        tv_weight=tv_weight))
    docs = _run_identity(run_dir, model or None, settings, head=head, data_dir=data,
                         cache_dir=cache, progress=True, log=typer.echo)
    typer.echo(f"wrote {len(docs)} identity figure(s) to {run_dir / 'interpret'}; "
               f"`advface report {run_dir}` includes them")
