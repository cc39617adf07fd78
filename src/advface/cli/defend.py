"""`advface defend ...`: adversarial training, and honest evaluation of defences.

Thin wrappers around :mod:`advface.defences`; every number is computed on the probe images of
the checkpoint's training run (the closed-set split stored with the trained model).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from advface.cli.options import positive_minutes
from advface.paths import check_output

app = typer.Typer(help="Defences: adversarial training, input transformations (evaluated "
                  "with adaptive attacks), feature-squeezing detection.", no_args_is_help=True)

DataOpt = Annotated[Path | None, typer.Option(
    "--data", help="LFW folder or archive (default: the run's config, else $ADVFACE_DATA)")]
CacheOpt = Annotated[Path | None, typer.Option(
    "--cache", help="cache folder (default: the run's config, else $ADVFACE_CACHE)")]
CheckpointOpt = Annotated[Path, typer.Option(
    "--checkpoint", help="output folder of `advface train adhoc` or `advface defend advtrain`")]
EpsOpt = Annotated[str, typer.Option(
    "--eps", help="comma-separated L-inf budgets in grey levels, e.g. 2,4,8")]


def _eps_list(text: str) -> list[float]:
    from advface.errors import ConfigError

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"bad --eps {text!r}", fix="give numbers like 2,4,8") from None
    if not values or any(not (0 <= v <= 255) for v in values):  # also refuses inf and nan
        raise ConfigError(f"bad --eps {text!r}",
                          fix="give grey levels between 0 and 255 like 2,4,8")
    return values


RunOpt = Annotated[Path | None, typer.Option(
    "--run", help="also file the results with this `advface run` directory "
    "(RUN_DIR/defences/<command>_<checkpoint>-<digest>.json, digest of the checkpoint "
    "folder's path), where `advface report` includes them")]


def _write(out: Path | None, doc: object, *, quiet: bool = False) -> None:
    if out is None:
        return
    from advface.models.adhoc import atomic_write_bytes

    atomic_write_bytes(out, json.dumps(doc, indent=2).encode())
    if not quiet:
        typer.echo(f"wrote {out}")


def run_target(run: Path | None, command: str, checkpoint: Path) -> Path | None:
    """RUN_DIR/defences/<command>_<checkpoint folder>-<path digest>.json (docs/run_dir.md).

    The run directory must exist (a typo would otherwise create a stray folder the report
    never reads).
    """
    if run is None:
        return None
    from advface.errors import AdvfaceError

    if not (run / "run.json").is_file() and not (run / "results.sqlite").is_file():
        raise AdvfaceError("not a run directory (no run.json or results.sqlite)", path=run,
                           fix="pass the --out directory of `advface run`")
    from advface.interpret.run_figures import safe_name

    name = checkpoint.resolve()
    folder = name.parent if name.suffix == ".safetensors" else name
    # The folder's name alone collides (runs/a/run and runs/b/run): a digest of its full path
    # keeps two checkpoints' results apart.
    tag = hashlib.sha256(str(folder).encode()).hexdigest()[:6]
    return run / "defences" / f"{command}_{safe_name(folder.name)}-{tag}.json"


def _targets(out: Path | None, run_path: Path | None) -> list[Path]:
    """Where a result goes: --out and/or the run's defences/ file, without duplicates.

    Checked before any work: a folder given as --out would otherwise fail only when the
    results are written, after the whole evaluation.
    """
    found: list[Path] = []
    for p, option in ((out, "--out"), (run_path, "--run")):
        if p is not None and all(p.resolve() != q.resolve() for q in found):
            check_output(p, folder=False, option=option)
            found.append(p)
    return found


def _earlier_results(targets: list[Path], checkpoint: Path, settings: dict,
                     recorded_of: Callable[[dict], object] = lambda doc: doc.get("settings"),
                     ) -> dict[Path, dict]:
    """The results already in each target (read once), refusing any made with another
    checkpoint or other settings (``recorded_of``: where a file keeps its settings).

    Re-running with the same settings reuses (evaluate) or replaces (detect, advtrain) them;
    anything else would silently drop finished results.
    """
    from advface.errors import AdvfaceError

    found: dict[Path, dict] = {}
    for target in targets:
        doc = _read_doc(target)
        if doc is None:
            continue
        recorded = recorded_of(doc)
        same_model = _same_checkpoint(doc.get("checkpoint"), checkpoint)
        if not same_model or recorded != settings:
            what = "another checkpoint" if not same_model else "other settings"
            raise AdvfaceError(
                f"this file holds results of {what} ({doc.get('checkpoint')}, {recorded}); "
                "writing would drop them", path=target,
                fix="rerun with the same settings to add to it, pass another --out, or move "
                "the file away to replace it")
        found[target] = dict(doc.get("results") or {})
    return found


def _read_doc(path: Path) -> dict | None:
    from advface.errors import AdvfaceError

    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise AdvfaceError(f"cannot read earlier results ({err})", path=path,
                           fix="move the damaged file away and rerun") from None
    return doc if isinstance(doc, dict) else None


def _same_checkpoint(recorded: object, checkpoint: Path) -> bool:
    return isinstance(recorded, str) and Path(recorded).resolve() == checkpoint.resolve()


@app.command("advtrain")
def advtrain(
    config: Annotated[Path, typer.Option("--config", "-c", help="e.g. "
                                         "configs/defence_advtrain.yaml")],
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out")] = False,
    data: DataOpt = None,
    cache: CacheOpt = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="output folder (default: train.out_dir, else runs/<config name>)")] = None,
    time_budget: Annotated[float | None, typer.Option(
        "--time-budget", callback=positive_minutes,
        help="override train.time_budget_minutes")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1,
                                                help="torch CPU threads")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars")] = False,
    run: RunOpt = None,
) -> None:
    """Adversarially train the ad-hoc model (PGD or FGSM-RS) and evaluate it on the probes:
    clean accuracy (eval.json) and naive/adaptive robust accuracy (robust_eval.json)."""
    from advface.defences.adversarial_training import adv_train, load_advtrain_config

    cfg = load_advtrain_config(config)
    tc = cfg.train
    updates = {k: v for k, v in (("data_dir", data), ("cache_dir", cache)) if v is not None}
    if updates:
        tc.data = tc.data.model_copy(update=updates)
    if out is not None:
        tc.out_dir = out
    elif tc.out_dir is None:
        tc.out_dir = Path("runs") / config.stem
    if time_budget is not None:
        tc.time_budget_minutes = time_budget
    if threads is not None:
        tc.threads = threads
    run_path = run_target(run, "advtrain", Path(tc.out_dir))
    settings = {"adversarial": cfg.adversarial.model_dump(mode="json"),
                "evaluation_settings": cfg.evaluation.model_dump(mode="json")}
    # Before hours of training, not when filing the result.
    _earlier_results(_targets(None, run_path), Path(tc.out_dir), settings,
                     recorded_of=lambda doc: {k: doc.get(k) for k in settings})
    result = adv_train(cfg, resume=resume, progress=not quiet)
    typer.echo(f"stopped: {result.stop_reason} after {result.epochs_completed} epoch(s); best "
               f"epoch {result.best_epoch}")
    typer.echo(f"model: {result.model_path}")
    robust_doc = (result.evaluation or {}).get("robust")
    if run_path is not None:
        if robust_doc:
            clean = {k: v for k, v in (result.evaluation or {}).items() if k != "robust"}
            _write(run_path, {
                "kind": "advtrain", "checkpoint": str(tc.out_dir),
                "n_identities": len(result_classes(result.model_path)), **settings,
                "stop_reason": result.stop_reason, "epochs": result.epochs_completed,
                "best_epoch": result.best_epoch, "clean_evaluation": clean,
                "results": {"adversarial-training": robust_doc}})
        else:
            typer.echo(f"no robust evaluation to file in {run} (evaluation.eps_8bit is empty "
                       "or training was interrupted)")
    if quiet and result.evaluation and result.evaluation.get("robust"):
        from advface.defences.evaluate import DefenceEvaluation

        typer.echo(DefenceEvaluation(**result.evaluation["robust"]).table())


@app.command("evaluate")
def evaluate(
    checkpoint: CheckpointOpt,
    defence: Annotated[list[str] | None, typer.Option(
        "--defence", help="none, jpeg, bit-depth, median, resize-pad; repeat for several "
        "(each evaluated separately)")] = None,
    eps: EpsOpt = "2,4,8",
    quality: Annotated[int, typer.Option("--quality", min=1, max=100,
                                         help="JPEG quality")] = 75,
    bits: Annotated[int, typer.Option("--bits", min=1, max=8,
                                      help="bit-depth: bits per channel")] = 4,
    median_size: Annotated[int, typer.Option("--median-size", min=1,
                                             help="median window")] = 2,
    min_scale: Annotated[float, typer.Option(
        "--min-scale", min=0.1, max=1.0, help="resize-pad: smallest side fraction")] = 0.85,
    naive_steps: Annotated[int, typer.Option("--naive-steps", min=1)] = 10,
    steps: Annotated[int, typer.Option("--steps", min=1, help="adaptive PGD steps")] = 50,
    restarts: Annotated[int, typer.Option("--restarts", min=0,
                                          help="adaptive random restarts")] = 2,
    eot: Annotated[int, typer.Option("--eot", min=1,
                                     help="EOT samples for random defences")] = 10,
    eval_draws: Annotated[int, typer.Option(
        "--eval-draws", min=1, help="random defences: draws averaged when judging")] = 1,
    n_probes: Annotated[int | None, typer.Option(
        "--n-probes", min=1, help="evaluate the first N probes only")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threads: Annotated[int, typer.Option("--threads", min=1)] = 2,
    out: Annotated[Path | None, typer.Option("--out", help="write results as JSON")] = None,
    data: DataOpt = None,
    cache: CacheOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet")] = False,
    run: RunOpt = None,
) -> None:
    """Clean, naive and adaptive robust accuracy (L-inf dodging) of the model behind each
    defence, on the probes of the checkpoint's own split (split.json beside the trained model).
    "none" evaluates the model itself (e.g. an adversarially
    trained one)."""
    import torch

    from advface.defences.evaluate import default_attacks, evaluate_defence, load_run
    from advface.defences.transforms import Defended, build_transform
    from advface.interpret.scoring import LogitScorer

    targets = _targets(out, run_target(run, "evaluate", checkpoint))
    names = [_defence_key(name) for name in defence or ["none"]]
    torch.set_num_threads(threads)
    model, run_data = load_run(checkpoint, data_dir=data, cache_dir=cache)
    scorer = LogitScorer(model).eval()
    images = run_data.probe_images.to(torch.float32) / 255.0
    labels = run_data.probe_labels
    if n_probes is not None:
        images, labels = images[:n_probes], labels[:n_probes]
    params = {"jpeg": {"quality": quality}, "bit-depth": {"bits": bits},
              "median": {"size": median_size}, "resize-pad": {"min_scale": min_scale,
                                                              "seed": seed}}
    settings = {"eps": _eps_list(eps), "naive_steps": naive_steps, "steps": steps,
                "restarts": restarts, "eot": eot, "eval_draws": eval_draws,
                "n_images": int(images.shape[0]), "seed": seed}
    # Each finished defence is written at once; a rerun with the same --out and settings
    # skips the defences already done (an interrupted evaluation resumes). Results of other
    # settings are never overwritten.
    results: dict = {}
    source: dict[str, Path] = {}
    for target, earlier in _earlier_results(targets, checkpoint, settings).items():
        for key, value in earlier.items():
            if key not in results:
                results[key], source[key] = value, target
    for key in names:
        if key in results and results[key].get("params") == params.get(key, {}):
            from advface.defences.evaluate import DefenceEvaluation

            doc = {k: v for k, v in results[key].items() if k != "params"}
            typer.echo(DefenceEvaluation(**doc).table() + "\n(from " + str(source[key])
                       + ")\n")
            continue
        if key == "none":
            defended = scorer
        else:
            defended = Defended(scorer, build_transform(key, **params.get(key, {})))
        plans = default_attacks(defended, has_undefended=key != "none",
                                naive_steps=naive_steps, adaptive_steps=steps,
                                adaptive_restarts=restarts, eot_samples=eot)
        res = evaluate_defence(defended, images, labels, eps_8bit=settings["eps"],
                               attacks=plans, seed=seed, batch_size=batch_size,
                               eval_draws=eval_draws, progress=not quiet)
        typer.echo(res.table())
        typer.echo("")
        results[key] = {**res.to_json(), "params": params.get(key, {})}
        doc = {"kind": "evaluate", "checkpoint": str(checkpoint), "settings": settings,
               "n_identities": len(scorer.class_names), "results": results}
        for target in targets:
            _write(target, doc, quiet=True)
    # Every target ends with every result, also one that only had them reused from another
    # (e.g. --run added on a rerun).
    doc = {"kind": "evaluate", "checkpoint": str(checkpoint), "settings": settings,
           "n_identities": len(scorer.class_names), "results": results}
    for target in targets:
        _write(target, doc)


def _defence_key(name: str) -> str:
    """A --defence name as the results key (bit_depth is bit-depth); unknown ones refused
    before any work."""
    from advface.errors import ConfigError

    key = name.lower().replace("_", "-")
    known = ("none", "jpeg", "bit-depth", "median", "resize-pad")
    if key not in known:
        raise ConfigError(f"unknown defence {name!r}", fix=f"use one of {', '.join(known)}")
    return key


@app.command("detect")
def detect(
    checkpoint: CheckpointOpt,
    eps: EpsOpt = "4",
    fpr: Annotated[float, typer.Option("--fpr", min=0.0, max=1.0,
                                       help="target false-positive rate")] = 0.05,
    bits: Annotated[int, typer.Option("--bits", min=1, max=8, help="bit-depth squeezer")] = 5,
    median_size: Annotated[int, typer.Option("--median-size", min=1,
                                             help="median squeezer")] = 2,
    steps: Annotated[int, typer.Option("--steps", min=1, help="PGD steps of the attack")] = 20,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threads: Annotated[int, typer.Option("--threads", min=1)] = 2,
    out: Annotated[Path | None, typer.Option("--out", help="write results as JSON")] = None,
    data: DataOpt = None,
    cache: CacheOpt = None,
    run: RunOpt = None,
) -> None:
    """Feature-squeezing detector: threshold fitted on clean validation-gallery images at
    --fpr, ROC AUC on clean probes vs PGD adversarial probes (attack unaware of the
    detector)."""
    import torch

    from advface.attacks.base import Budget, Dodging
    from advface.attacks.pgd import PGD
    from advface.defences.detector import FeatureSqueezingDetector
    from advface.defences.evaluate import load_run
    from advface.defences.transforms import BitDepth, MedianFilter
    from advface.interpret.scoring import LogitScorer

    targets = _targets(out, run_target(run, "detect", checkpoint))
    settings = {"bits": bits, "median_size": median_size, "steps": steps, "seed": seed,
                "eps": _eps_list(eps)}
    _earlier_results(targets, checkpoint, settings)  # refuses what a rerun would drop
    torch.set_num_threads(threads)
    model, run_data = load_run(checkpoint, data_dir=data, cache_dir=cache)
    scorer = LogitScorer(model).eval()
    det = FeatureSqueezingDetector(scorer, [BitDepth(bits), MedianFilter(median_size)])
    val = run_data.gallery_images[run_data.val_idx].to(torch.float32) / 255.0
    thr = det.fit(val, fpr)
    probes = run_data.probe_images.to(torch.float32) / 255.0
    typer.echo(f"threshold {thr:.4f} (fitted on {val.shape[0]} clean validation images, "
               f"target FPR {fpr:g})")
    with torch.no_grad():
        clean_ok = scorer(probes).argmax(1) == run_data.probe_labels
    n_ok = int(clean_ok.sum())  # what the attack success rate is over
    results = {}
    for e in settings["eps"]:
        attack = PGD(Budget.from_8bit("linf", e), steps=steps, random_restarts=0)
        adv = attack.run(scorer, probes, Dodging(run_data.probe_labels), seed=seed)
        # Like Xu et al., only successful adversarial examples are positives, and only those
        # of probes the model got right (a clean mistake "succeeds" unchanged).
        fooled = adv.adv[adv.success & clean_ok]
        if fooled.shape[0] == 0:
            typer.echo(f"eps {e:g}/255: the attack fooled no probe; nothing to detect")
            continue
        roc_res = det.evaluate(probes, fooled)
        # Success over the probes the attack had to change (clean mistakes are not fooled).
        rate = float(fooled.shape[0]) / max(1, n_ok)
        doc = {**roc_res.to_json(), "attack_success_rate": rate,
               "n_attempted": n_ok,
               "n_adversarial": int(fooled.shape[0]), "roc": _roc_points(roc_res)}
        results[f"{e:g}"] = doc
        typer.echo(f"eps {e:g}/255: AUC {roc_res.auc:.3f}  TPR {roc_res.tpr_at_threshold:.3f} "
                   f"at FPR {roc_res.fpr_at_threshold:.3f} on probes  (attack success "
                   f"{rate:.3f} of the {n_ok} probes identified correctly)")
    doc = {"kind": "detect", "checkpoint": str(checkpoint), "fpr_target": fpr, "threshold": thr,
           "settings": settings,
           "n_clean_probes": int(probes.shape[0]), "n_validation": int(val.shape[0]),
           "clean_accuracy": float(clean_ok.double().mean()),
           "n_identities": len(scorer.class_names), "results": results}
    for target in targets:
        _write(target, doc)


def _roc_points(res, limit: int = 200) -> dict[str, list[float]]:
    """The detector's ROC curve, thinned to at most ``limit`` points for the report."""
    import numpy as np

    fpr, tpr = np.asarray(res.fpr, dtype=float), np.asarray(res.tpr, dtype=float)
    if fpr.size > limit:
        keep = np.unique(np.linspace(0, fpr.size - 1, limit).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}


def result_classes(model_path: Path) -> list[str]:
    """Class names of a saved ad-hoc model (for the random-guess baseline in the report)."""
    from advface.models.adhoc import load_adhoc

    return list(load_adhoc(model_path).class_names)
