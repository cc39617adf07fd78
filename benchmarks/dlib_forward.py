"""CPU cost of the dlib ResNet port (forward, forward+input-gradient) against dlib-bin itself.

Why: attack sweeps run the descriptor thousands of times per image, so its cost sets what an
experiment can afford. Prints a Markdown table of ms/image (median over repeats).

    python benchmarks/dlib_forward.py [--threads 2] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from advface.models.dlib_format import dlib_model_path
from advface.models.dlib_resnet import DlibResNet, load_dlib_resnet


def ms_per_image(fn: Callable[[], object], batch: int, repeats: int) -> str:
    """'median / min' ms per image; the min is the better estimate when other jobs share the CPU."""
    fn()  # warm-up: allocator, oneDNN primitive caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return f"{1000 * statistics.median(times) / batch:.1f} / {1000 * min(times) / batch:.1f}"


def torch_row(model: DlibResNet, label: str, batch: int, repeats: int) -> str:
    x = torch.rand(batch, 3, 150, 150, generator=torch.Generator().manual_seed(0))

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def forward_backward() -> None:
        # What an attack step does: loss on the descriptor, gradient w.r.t. the pixels.
        xr = x.detach().requires_grad_(True)
        model(xr).sum().backward()

    fwd = ms_per_image(forward, batch, repeats)
    fb = ms_per_image(forward_backward, batch, repeats)
    return f"| {label} | {batch} | {fwd} | {fb} |"


def dlib_row(batch: int, repeats: int) -> str:
    import dlib

    net = dlib.face_recognition_model_v1(str(dlib_model_path()))
    rng = np.random.default_rng(0)
    chips = [rng.integers(0, 256, (150, 150, 3), dtype=np.uint8) for _ in range(batch)]
    if batch == 1:
        ms = ms_per_image(lambda: net.compute_face_descriptor(chips[0]), 1, repeats)
    else:
        ms = ms_per_image(lambda: net.compute_face_descriptor(chips), batch, repeats)
    return f"| dlib-bin compute_face_descriptor | {batch} | {ms} | n/a |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    default = load_dlib_resnet()  # weights frozen: only input gradients
    trainable = load_dlib_resnet(trainable=True)
    variants = [
        ("DlibResNet (default: frozen weights)", default),
        ("DlibResNet, trainable weights", trainable),
    ]
    rows = [
        "| implementation | batch | forward ms/img (median / min) | forward+backward ms/img |",
        "|---|---:|---:|---:|",
    ]
    for batch in args.batches:
        for label, model in variants:
            rows.append(torch_row(model, label, batch, args.repeats))
        rows.append(dlib_row(batch, args.repeats))
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats}, "
        f"load average at the end {load} (other processes inflate the numbers)\n"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
