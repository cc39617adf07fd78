"""PGD L-inf throughput and peak memory: advface vs torchattacks vs ART, same model and inputs.

Why: attack sweeps dominate experiment cost, so the engine must not be slower than the
libraries people would otherwise use, and its extra guarantees (budget-safe quantisation, keep
best per image, success judged on saved images) must be cheap. Each (library, batch) runs in a
fresh subprocess so peak RSS (``resource.getrusage``; torch's CPU allocator is invisible to
tracemalloc) is measured in isolation. Prints a Markdown table.

    python benchmarks/attacks_vs_peers.py --model tiny [--size 64] [--batch-sizes 1 32]
        [--steps 10] [--eps255 8] [--repeats 3] [--rounds 3] [--threads 2]

advface is timed twice: "same work" (one random start, no early stopping: the same number of
gradient steps as the peers, plus one clean and one final forward pass) and "default"
(zero start + one random restart, per-image early stopping: what experiments use).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

LIBRARIES = ("advface-same-work", "advface-default", "torchattacks", "art")


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


def build_model(name: str) -> nn.Module:
    """Score module for ``--model``; real face models (dlib, adhoc) plug in here."""
    if name == "tiny":
        torch.manual_seed(0)
        return BenchCNN().eval()
    raise SystemExit(f"unknown --model {name!r}; available: tiny")


def make_inputs(model: nn.Module, batch: int, size: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (batch, 3, size, size), generator=g).float() / 255
    with torch.no_grad():
        return x, model(x).argmax(1)


def attack_fn(lib: str, model: nn.Module, x: Tensor, y: Tensor, args) -> Callable[[], Tensor]:
    """A no-argument callable running one PGD attack and returning the adversarial batch."""
    eps = args.eps255 / 255
    alpha = eps / 4
    if lib.startswith("advface"):
        from advface.attacks import PGD, Budget, Dodging

        budget = Budget.from_8bit("linf", args.eps255)
        if lib == "advface-same-work":
            attack = PGD(budget, steps=args.steps, step_size=alpha, zero_start=False,
                         random_restarts=1, early_stop=False)
        else:
            attack = PGD(budget, steps=args.steps, step_size=alpha)
        goal = Dodging(y)
        return lambda: attack.run(model, x, goal, seed=0).adv
    if lib == "torchattacks":
        import torchattacks

        ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=args.steps, random_start=True)
        return lambda: ta(x, y)
    if lib == "art":
        import numpy as np
        from art.attacks.evasion import ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(
            model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
            nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu",
        )
        art = ProjectedGradientDescent(
            clf, norm=np.inf, eps=eps, eps_step=alpha, max_iter=args.steps,
            num_random_init=1, batch_size=x.shape[0], verbose=False,
        )
        xn, yn = x.numpy(), y.numpy()
        return lambda: torch.from_numpy(art.generate(xn, yn))
    raise SystemExit(f"unknown library {lib!r}")


def worker(lib: str, batch: int, args) -> dict[str, float]:
    torch.set_num_threads(args.threads)
    model = build_model(args.model)
    x, y = make_inputs(model, batch, args.size)
    run = attack_fn(lib, model, x, y, args)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    adv = run()  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        adv = run()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    adv = (adv * 255).round() / 255  # judge what would be saved, as advface does
    with torch.no_grad():
        fooled = float((model(adv).argmax(1) != y).float().mean())
    return {
        "images_per_s": batch / statistics.median(times),
        "peak_mib": (peak - before) / 1024,
        "fooled": fooled,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--size", type=int, default=64, help="image side (dlib chips are 150)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eps255", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per library")
    ap.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    ap.add_argument("--worker", nargs=2, metavar=("LIB", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args)))
        return

    common = [
        "--model", args.model, "--size", str(args.size), "--steps", str(args.steps),
        "--eps255", str(args.eps255), "--repeats", str(args.repeats),
        "--threads", str(args.threads),
    ]
    print(f"PGD L-inf eps={args.eps255:g}/255, {args.steps} steps, alpha=eps/4, model "
          f"{args.model} {args.size}x{args.size}, {args.threads} threads, median of "
          f"{args.rounds} processes x {args.repeats} timed runs\n")
    print("| library | batch | images/s | vs advface (same work) | peak RSS increase MiB "
          "| fooled |")
    print("|---|---:|---:|---:|---:|---:|")
    for batch in args.batch_sizes:
        # Libraries take turns, round after round, so that load drifting on a shared machine
        # hits them alike; speed is the median over rounds, memory the maximum.
        runs: dict[str, list[dict[str, float]]] = {lib: [] for lib in args.libraries}
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
            if lib in failed:
                print(f"| {lib} | {batch} | failed: {failed[lib]} | | | |")
                continue
            ratio = f"{speed[lib] / base:.2f}x" if base else "-"
            peak = max(r["peak_mib"] for r in runs[lib])
            fooled = runs[lib][-1]["fooled"]
            print(f"| {lib} | {batch} | {speed[lib]:.1f} | {ratio} | {peak:.1f} | "
                  f"{100 * fooled:.0f}% |")


if __name__ == "__main__":
    main()
