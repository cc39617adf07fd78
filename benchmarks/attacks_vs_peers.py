"""PGD L-inf throughput and peak memory: advface vs torchattacks vs ART, same model and inputs.

Why: attack sweeps dominate experiment cost, so the engine must not be slower than the
libraries people would otherwise use, and its extra guarantees (budget-safe quantisation, keep
best per image, success judged on saved images) must be cheap. Each (library, batch) runs in a
fresh subprocess so its peak resident memory is measured in isolation (see ``_models.PeakRSS``).

Models (``--model``, see ``benchmarks/_models.py``): ``dlib`` (pretrained dlib ResNet port,
cosine to identity centroids), ``adhoc`` (the ad-hoc CNN's softmax logits, ``--checkpoint``),
both on the first ``batch`` real LFW probe chips with their true identities, and ``tiny`` (a
random CNN on random images; needs no data). Full runs (minutes each on 2 quiet cores;
see benchmarks/README.md)::

    export ADVFACE_DATA=/work/shared/data/lfw ADVFACE_CACHE=/tmp/advface-cache
    python benchmarks/attacks_vs_peers.py --model dlib --batch-sizes 1 32 --threads 2 --out
    python benchmarks/attacks_vs_peers.py --model adhoc --batch-sizes 1 32 --threads 2 --out

``--out`` writes ``benchmarks/results/attacks_vs_peers_<model>.{csv,md}`` (or into ``--out DIR``).
Smoke test: ``--model tiny --repeats 1 --rounds 1``.

advface is timed twice: "same work" (one random start, no early stopping, step eps/4: the same
number of gradient steps as the peers, plus one forward pass that judges the last iterate, which
the peers return unjudged, and one for the clean image of any image no candidate fooled; the
final judgement reuses decisions already taken on exactly the returned images) and "default"
(zero start + one random restart, per-image early stopping: what experiments use). advface
ascends the score margin; torchattacks and ART ascend cross-entropy on the scores. Every
library's output is rounded to 8 bits before it is judged, as advface judges its own.
"torchattacks+judge" times the peer together with that rounding and the one forward pass that
gives its decisions, i.e. up to the result advface returns (adversarials and success flags);
plain "torchattacks" stops at the unjudged last iterate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _models import (
    RESULTS,
    Bench,
    PeakRSS,
    add_model_args,
    build_bench,
    machine,
    model_argv,
    write_tables,
)
from torch import Tensor, nn

from advface.attacks.base import to_grid

LIBRARIES = ("advface-same-work", "advface-default", "torchattacks", "torchattacks+judge", "art")


def attack_fn(lib: str, bench: Bench, args: argparse.Namespace, *, amp: bool | str = False
              ) -> Callable[[], Tensor]:
    """A no-argument callable running one PGD attack and returning the adversarial batch.

    ``amp``: advface's autocast for the gradient passes (True/"bf16" or "fp16"; peers have none).
    """
    model, x, y = bench.model, bench.x, bench.y
    eps = args.eps255 / 255
    alpha = eps / 4
    if lib.startswith("advface"):
        from advface.attacks import PGD, Budget, Dodging

        budget = Budget.from_8bit("linf", args.eps255)
        if lib == "advface-same-work":
            attack = PGD(budget, steps=args.steps, step_size=alpha, zero_start=False,
                         random_restarts=1, early_stop=False, amp=amp)
        else:
            attack = PGD(budget, steps=args.steps, step_size=alpha, amp=amp)
        goal = Dodging(y)
        return lambda: attack.run(model, x, goal, seed=0).adv
    if lib in ("torchattacks", "torchattacks+judge"):
        import torchattacks

        ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=args.steps, random_start=True)
        if lib == "torchattacks":
            return lambda: ta(x, y)

        def attack_and_judge() -> Tensor:
            # What an evaluation does with the peer's output before it has advface's result:
            # round to 8 bits (what would be saved) and take the model's decisions on it.
            adv = to_grid(ta(x, y))
            with torch.no_grad():
                model(adv).argmax(1)
            return adv

        return attack_and_judge
    if lib == "art":
        import numpy as np
        from art.attacks.evasion import ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(
            model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
            nb_classes=bench.n_classes, clip_values=(0.0, 1.0), device_type="cpu",
        )
        art = ProjectedGradientDescent(
            clf, norm=np.inf, eps=eps, eps_step=alpha, max_iter=args.steps,
            num_random_init=1, batch_size=x.shape[0], verbose=False,
        )
        xn, yn = x.numpy(), y.numpy()
        return lambda: torch.from_numpy(art.generate(xn, yn))
    raise SystemExit(f"unknown library {lib!r}")


def worker(lib: str, batch: int, args: argparse.Namespace) -> dict[str, float]:
    torch.set_num_threads(args.threads)
    bench = build_bench(args, batch)
    run = attack_fn(lib, bench, args)
    with PeakRSS() as mem:
        adv = run()  # warm-up (allocator, oneDNN primitive caches)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            adv = run()
            times.append(time.perf_counter() - start)
    adv = to_grid(adv.detach().float())  # what would be saved
    with torch.no_grad():
        fooled = float((bench.model(adv).argmax(1) != bench.y).float().mean())
    return {
        "images_per_s": batch / statistics.median(times),
        "peak_rss_mib": mem.peak_mib,
        "rss_increase_mib": mem.increase_mib,
        "rss_method": mem.method,
        "fooled": fooled,
        "max_linf_255": float(((adv - bench.x).abs().amax() * 255).round()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eps255", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per process (median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per library")
    ap.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    ap.add_argument("--out", type=Path, nargs="?", const=RESULTS, default=None,
                    help=f"write attacks_vs_peers_<model>.csv/.md here (default {RESULTS})")
    ap.add_argument("--worker", nargs=2, metavar=("LIB", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args)))
        return

    torch.set_num_threads(args.threads)
    host = machine(args.threads)
    # Build once here: a missing data set, chip cache or checkpoint stops with its fix before
    # any worker starts, and the dlib gallery embeddings get cached for the workers.
    bench = build_bench(args, max(args.batch_sizes))
    with torch.no_grad():
        clean_err = float((bench.model(bench.x).argmax(1) != bench.y).float().mean())
    desc = bench.description
    del bench

    common = [
        *model_argv(args), "--steps", str(args.steps), "--eps255", str(args.eps255),
        "--repeats", str(args.repeats), "--threads", str(args.threads),
    ]
    rows: list[dict[str, Any]] = []
    for batch in args.batch_sizes:
        # Libraries take turns, round after round, so that load drifting on a shared machine
        # hits them alike; speed is the median over rounds, memory the maximum.
        runs: dict[str, list[dict[str, Any]]] = {lib: [] for lib in args.libraries}
        failed: dict[str, str] = {}
        for _ in range(args.rounds):
            for lib in args.libraries:
                if lib in failed:
                    continue
                cmd = [sys.executable, __file__, *common, "--worker", lib, str(batch)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    failed[lib] = (out.stderr.strip().splitlines() or ["?"])[-1]
                    continue
                runs[lib].append(json.loads(out.stdout.strip().splitlines()[-1]))
        speed = {
            lib: statistics.median(r["images_per_s"] for r in rs) for lib, rs in runs.items() if rs
        }
        base = speed.get("advface-same-work")
        for lib in args.libraries:
            row: dict[str, Any] = {"model": args.model, "library": lib, "batch": batch}
            if lib in failed:
                rows.append({**row, "error": failed[lib]})
                continue
            rs = runs[lib]
            rows.append({
                **row,
                "images_per_s": round(speed[lib], 2),
                "speed_vs_advface_same_work": round(speed[lib] / base, 3) if base else None,
                "peak_rss_mib": round(max(r["peak_rss_mib"] for r in rs), 1),
                "rss_increase_mib": round(max(r["rss_increase_mib"] for r in rs), 1),
                "fooled": round(rs[-1]["fooled"], 4),
                "max_linf_255": max(r["max_linf_255"] for r in rs),
                "processes": len(rs),
            })

    md = markdown(args, rows, host, clean_err, desc)
    print(md)
    if args.out is not None:
        write_tables(args.out, f"attacks_vs_peers_{args.model}", rows, md)


def markdown(args: argparse.Namespace, rows: list[dict[str, Any]], host: str,
             clean_err: float, bench_desc: str) -> str:
    lines = [
        f"# PGD L-inf: advface vs torchattacks vs ART ({args.model})",
        "",
        f"- Attack: untargeted (dodging) PGD L-inf eps={args.eps255:g}/255, {args.steps} steps, "
        "step eps/4, one random start for the peers and advface-same-work; advface-default: "
        "zero start + 1 random restart, per-image early stopping; torchattacks+judge: the "
        "peer plus rounding its output to 8 bits and one forward for its decisions (what "
        "advface returns)",
        f"- Model and inputs: {bench_desc}; clean error on the largest batch "
        f"{100 * clean_err:.0f}% (counted as fooled)",
        f"- Machine: {host}",
        f"- images/s: median over {args.rounds} fresh processes x {args.repeats} timed runs "
        "(after one warm-up run); peak RSS: the process's high-water mark during the runs "
        "(model and inputs included), increase: over the resident size before them, max over "
        "processes; fooled: on the 8-bit rounded output",
        "",
        "| library | batch | images/s | vs advface (same work) | peak RSS MiB | increase MiB "
        "| fooled | max L-inf /255 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['library']} | {r['batch']} | failed: {r['error']} "
                         "| | | | | |")
            continue
        ratio = "-" if r["speed_vs_advface_same_work"] is None else (
            f"{r['speed_vs_advface_same_work']:.2f}x")
        lines.append(
            f"| {r['library']} | {r['batch']} | {r['images_per_s']:.1f} | {ratio} | "
            f"{r['peak_rss_mib']:.0f} | {r['rss_increase_mib']:.0f} | "
            f"{100 * r['fooled']:.0f}% | {r['max_linf_255']:g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
