"""A whole epsilon curve: one PGD run per eps vs advface's one-pass sweep and minimal-eps search.

Why: robustness is reported as success (or robust accuracy) over a grid of budgets, and running
the attack from scratch at every eps repeats work: an image fooled at eps ``e`` stays fooled at
every larger eps (the same adversarial is inside the larger ball). ``advface.attacks.sweep``
attacks only the images still standing, warm-started from their best adversarial so far;
``minimal_eps(strategy="bisect")`` finds each image's smallest fooling grid eps in about
log2(grid) attacks. The goal (issue "Performance and scale"): the curve >= 3x faster than one run
per eps, at equal or better success.

Methods (all dodging PGD L-inf, ``--steps`` steps, advface's default PGD settings: zero start +
1 random restart, step max(2.5 eps / steps, 1/255), per-image early stopping; seed 0):

``per-eps``       (i) one independent ``PGD.run`` per grid eps (the baseline for the speed-up)
``sweep``         (ii) ``sweep``: one pass over the increasing grid, carrying fooled images
``minimal-eps``   (iii) ``minimal_eps(strategy="bisect")``; success at eps = min_eps <= eps
``per-eps-no-es`` reference: (i) without early stopping (every image runs every step, as
                  peer libraries do)
``per-eps-1start``, ``sweep-1start`` (i) and (ii) with one start per eps (``random_restarts=0``:
                  the zero start, warm in the sweep), as many starts as the peer makes
``torchattacks-per-eps`` the peer's way: one ``torchattacks.PGD`` run per grid eps (same steps
                  and step size, one random start, no early stopping, no best-iterate
                  tracking): the "one PGD run per epsilon" a user would otherwise write

Success is re-judged here, outside the timed region, on the 8-bit rounded images each method
returns (checked to lie within the eps ball) with the model's own decision. Each (method, round)
runs in a fresh process (peak RSS in isolation, see ``_models.PeakRSS``); time is the median of
``--repeats`` runs after a one-batch forward/backward warm-up. Gradient and forward counts are
images through the model (machine-independent cost).

Full runs (models and inputs as ``attacks_vs_peers.py``: see ``benchmarks/_models.py``)::

    export ADVFACE_DATA=/work/shared/data/lfw ADVFACE_CACHE=/tmp/advface-cache
    python benchmarks/eps_curve.py --model dlib --batch 32 --threads 2 --out
    python benchmarks/eps_curve.py --model adhoc --batch 32 --threads 2 --out

``--out`` writes ``benchmarks/results/eps_curve_<model>.{csv,md}`` (or into ``--out DIR``).
Smoke test: ``--model tiny --batch 8 --repeats 1 --rounds 1``.
"""

from __future__ import annotations

import argparse
import json
import math
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
    Counting,
    PeakRSS,
    add_model_args,
    build_bench,
    machine,
    model_argv,
    write_tables,
)
from torch import Tensor, nn

from advface.attacks.base import to_grid

METHODS = ("per-eps", "sweep", "minimal-eps", "per-eps-no-es", "per-eps-1start", "sweep-1start",
           "torchattacks-per-eps")
BASELINE = "per-eps"
PEER = "torchattacks-per-eps"
GRID255 = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)


def method_fn(method: str, model: nn.Module, bench: Bench, grid: list[float],
              steps: int) -> Callable[[], dict[float, Tensor]]:
    """A no-argument callable running ``method`` and returning ``{eps: adversarial batch}``.

    An image the method did not fool at an eps may be returned as anything in the ball; the
    judge below decides success from the model, never from the method's own flags.
    """
    from advface.attacks import PGD, Budget, Dodging
    from advface.attacks.sweep import minimal_eps, sweep

    x, goal = bench.x, Dodging(bench.y)

    restarts = 0 if method.endswith("-1start") else 1  # 1: advface's default

    def factory(budget: Budget) -> PGD:
        return PGD(budget, steps=steps, random_restarts=restarts,
                   early_stop=method != "per-eps-no-es")

    if method == PEER:
        import torchattacks

        def peer() -> dict[float, Tensor]:
            torch.manual_seed(0)  # torchattacks draws its random start from the global RNG
            out = {}
            for e in grid:
                alpha = factory(Budget("linf", e)).step_size  # advface's default step
                out[e] = torchattacks.PGD(model, eps=e, alpha=alpha, steps=steps,
                                          random_start=True)(x, bench.y)
            return out

        return peer
    if method in ("per-eps", "per-eps-no-es", "per-eps-1start"):
        return lambda: {e: factory(Budget("linf", e)).run(model, x, goal, seed=0).adv
                        for e in grid}
    if method in ("sweep", "sweep-1start"):
        return lambda: {e: r.adv for e, r in sweep(factory, model, x, goal, grid,
                                                   seed=0).items()}
    if method == "minimal-eps":
        def run() -> dict[float, Tensor]:
            res = minimal_eps(factory, model, x, goal, grid, strategy="bisect", seed=0)
            return {e: torch.where(res.success_at(e)[:, None, None, None], res.adv, x)
                    for e in grid}

        return run
    raise SystemExit(f"unknown method {method!r}")


@torch.no_grad()
def judge(model: nn.Module, bench: Bench, advs: dict[float, Tensor]) -> dict[float, float]:
    """Success rate per eps on the 8-bit rounded images; a budget overrun is an error."""
    if model.training:
        raise AssertionError("judging a model in train mode (batch norm, dropout)")
    out = {}
    for eps, adv in advs.items():
        q = to_grid(adv.detach().float())
        levels = float(((q - bench.x).abs().amax() * 255).round()) if q.numel() else 0.0
        if levels > math.floor(eps * 255 + 1e-6):
            raise AssertionError(f"adversarial {levels:g}/255 from clean at eps "
                                 f"{eps * 255:g}/255")
        out[eps] = float((model(q).argmax(1) != bench.y).float().mean())
    return out


def worker(method: str, args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    bench = build_bench(args, args.batch)
    grid = [e / 255 for e in args.grid]
    # eval(): the attacks restore the mode they found, and a wrapper is built in train mode,
    # which would leave batch norm on batch statistics for the judge below.
    model = Counting(bench.model).eval()
    run = method_fn(method, model, bench, grid, args.steps)
    # Warm-up: one forward/backward of the batch (allocator, oneDNN primitive caches).
    xw = bench.x.clone().requires_grad_(True)
    bench.model(xw).sum().backward()
    times: list[float] = []
    with PeakRSS() as mem:
        for _ in range(args.repeats):
            model.grad_images = model.forward_images = 0
            start = time.perf_counter()
            advs = run()
            times.append(time.perf_counter() - start)
    success = judge(bench.model, bench, advs)
    return {
        "seconds": statistics.median(times),
        "grad_images": model.grad_images,
        "forward_images": model.forward_images,
        "peak_rss_mib": mem.peak_mib,
        "rss_increase_mib": mem.increase_mib,
        "success": {f"{e * 255:g}": s for e, s in success.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--grid", type=float, nargs="+", default=list(GRID255),
                    help="eps values in 8-bit units, increasing")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per process (median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="fresh processes per method")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--out", type=Path, nargs="?", const=RESULTS, default=None,
                    help=f"write eps_curve_<model>.csv/.md here (default {RESULTS})")
    ap.add_argument("--worker", metavar="METHOD", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if sorted(set(args.grid)) != args.grid:
        raise SystemExit("--grid must be strictly increasing")
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return

    torch.set_num_threads(args.threads)
    host = machine(args.threads)
    bench = build_bench(args, args.batch)  # fails early, with the fix, if anything is missing
    with torch.no_grad():
        clean_err = float((bench.model(bench.x).argmax(1) != bench.y).float().mean())
    desc = bench.description
    del bench

    common = [*model_argv(args), "--batch", str(args.batch), "--steps", str(args.steps),
              "--repeats", str(args.repeats), "--threads", str(args.threads),
              "--grid", *(f"{e:g}" for e in args.grid)]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
    failed: dict[str, str] = {}
    for _ in range(args.rounds):
        for method in args.methods:  # methods take turns, so load drift hits them alike
            if method in failed:
                continue
            cmd = [sys.executable, __file__, *common, "--worker", method]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                failed[method] = (out.stderr.strip().splitlines() or ["?"])[-1]
                continue
            runs[method].append(json.loads(out.stdout.strip().splitlines()[-1]))

    seconds = {m: statistics.median(r["seconds"] for r in rs) for m, rs in runs.items() if rs}
    base_s = seconds.get(BASELINE)
    peer_s = seconds.get(PEER)
    base_success = runs[BASELINE][-1]["success"] if runs.get(BASELINE) else None
    peer_success = runs[PEER][-1]["success"] if runs.get(PEER) else None

    def at_least(success: dict[str, float], ref: dict[str, float] | None) -> bool | None:
        return None if ref is None else all(success[k] >= ref[k] - 1e-9 for k in success)

    rows: list[dict[str, Any]] = []
    for m in args.methods:
        row: dict[str, Any] = {"model": args.model, "method": m, "batch": args.batch}
        if m in failed:
            rows.append({**row, "error": failed[m]})
            continue
        rs = runs[m]
        success = rs[-1]["success"]
        row.update({
            "seconds": round(seconds[m], 3),
            "speedup_vs_per_eps": round(base_s / seconds[m], 2) if base_s else None,
            "speedup_vs_torchattacks_per_eps": (round(peer_s / seconds[m], 2) if peer_s
                                                else None),
            "grad_images": rs[-1]["grad_images"],
            "forward_images": rs[-1]["forward_images"],
            "peak_rss_mib": round(max(r["peak_rss_mib"] for r in rs), 1),
            "rss_increase_mib": round(max(r["rss_increase_mib"] for r in rs), 1),
            "success_ge_per_eps": at_least(success, base_success),
            "success_ge_torchattacks": at_least(success, peer_success),
            "processes": len(rs),
        })
        row.update({f"success@{k}/255": round(v, 4) for k, v in success.items()})
        rows.append(row)

    md = markdown(args, rows, host, clean_err, desc)
    print(md)
    if args.out is not None:
        write_tables(args.out, f"eps_curve_{args.model}", rows, md)


def markdown(args: argparse.Namespace, rows: list[dict[str, Any]], host: str,
             clean_err: float, desc: str) -> str:
    keys = [f"{e:g}" for e in args.grid]
    lines = [
        f"# Epsilon curve: one PGD run per eps vs sweep vs minimal-eps search ({args.model})",
        "",
        f"- Grid: L-inf eps {', '.join(keys)} /255; dodging PGD, {args.steps} steps, advface "
        "defaults (zero start + 1 random restart, step max(2.5 eps/steps, 1/255), early "
        "stopping; per-eps-no-es: without early stopping; -1start: one start per eps, no "
        "random restart); torchattacks-per-eps: one torchattacks.PGD per eps (same steps and "
        "step, one random start); seed 0; >= per-eps / >= torchattacks: success at every eps "
        "at least that of per-eps / of the peer",
        f"- Model and inputs: {desc}; clean error {100 * clean_err:.0f}% (counted as fooled)",
        f"- Machine: {host}",
        f"- Time: whole curve, median of {args.repeats} runs per process, median over "
        f"{args.rounds} process(es); grad/fwd images: images through the model with/without "
        "gradient for one curve; peak RSS: high-water mark during the runs (model and inputs "
        "included), increase: over the resident size before them; success: re-judged on the "
        "8-bit rounded images, within budget",
        "",
        "| method | time s | speed-up vs per-eps | vs torchattacks per-eps | grad images "
        "| fwd images | peak RSS MiB | increase MiB | "
        + " | ".join(f"success @{k}" for k in keys) + " | >= per-eps | >= torchattacks |",
        "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(keys) + "---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} |")
            continue
        speed = "-" if r["speedup_vs_per_eps"] is None else f"{r['speedup_vs_per_eps']:.2f}x"
        vs_peer = r.get("speedup_vs_torchattacks_per_eps")
        speed += " | " + ("-" if vs_peer is None else f"{vs_peer:.2f}x")
        yes = {None: "-", True: "yes", False: "no"}
        ok = f"{yes[r['success_ge_per_eps']]} | {yes[r['success_ge_torchattacks']]}"
        lines.append(
            f"| {r['method']} | {r['seconds']:.2f} | {speed} | {r['grad_images']} | "
            f"{r['forward_images']} | {r['peak_rss_mib']:.0f} | {r['rss_increase_mib']:.0f} | "
            + " | ".join(f"{100 * r[f'success@{k}/255']:.0f}%" for k in keys) + f" | {ok} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
