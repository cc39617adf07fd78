"""PGD on an accelerator: images/s and achieved FLOP/s, fp32 vs bf16/fp16 autocast, channels_last,
torch.compile; advface vs torchattacks on the same model and batch.

Why: the issue "Performance and scale" asks, when a GPU machine is lent, for images/s of the
attack loop and an estimate of the achieved FLOP/s against the device's peak. FLOPs are counted,
not guessed: ``torch.utils.flop_counter.FlopCounterMode`` records one forward + backward and one
forward of the score module at batch 1 (convolutions and matrix products, the work that
matters), and an untimed run of each variant counts the images it sends through the model with
and without a gradient (early stopping and evaluation forwards included), so a variant that
stops early is credited only with the work it did.

Variants (each after ``--warmup`` untimed runs, median of ``--repeats``):

``advface-same-work``  ``PGD(zero_start=False, random_restarts=1, early_stop=False)``: the work
                       of one torchattacks run plus advface's evaluation forwards
``advface-default``    advface's default PGD (zero start + 1 restart, per-image early stop)
``torchattacks``       ``torchattacks.PGD(random_start=True)``
each in fp32 and, with ``--amp [bf16] [fp16]`` (bf16 when no value is given), with advface's
autocast for the gradient passes (fp16 loss-scaled; decisions re-taken in fp32; torchattacks has
no such switch and runs fp32 only). ``--channels-last`` puts
the inputs in channels_last, ``--compile`` wraps the score module in ``torch.compile``.

Run on the lent GPU (models and inputs as in ``attacks_vs_peers.py``, see ``_models.py``)::

    python benchmarks/gpu_pgd.py --model dlib --device cuda --batch-sizes 32 256 --amp bf16 fp16 \\
        --channels-last --out
    python benchmarks/gpu_pgd.py --model dlib --device cuda --batch-sizes 256 --compile --out

``--peak-tflops`` gives the device's peak for the ratio (default: looked up for known GPUs, e.g.
H100 SXM 989 dense bf16 / 67 fp32 TFLOP/s; none on a CPU). ``--peak-gemm`` measures a practical
peak instead: the TFLOP/s of a large square matrix product on the same device and threads, in the
variant's precision (on a CPU, whose data-sheet peak depends on clocks a virtual machine does not
show, this is the honest roof). Smoke test on a CPU::

    python benchmarks/gpu_pgd.py --model tiny --device cpu --batch-sizes 4 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
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
    write_tables,
)
from attacks_vs_peers import attack_fn
from torch import Tensor, nn

from advface.attacks.base import to_grid

#: Dense peak TFLOP/s (bf16/fp16 tensor cores, fp32 non-tensor) from the vendors' data sheets.
PEAKS = {"H100 80GB HBM3": (989.0, 67.0), "H100 SXM": (989.0, 67.0), "H100 PCIe": (756.0, 51.0),
         "H200": (989.0, 67.0), "A100": (312.0, 19.5)}


def peak_tflops(device: torch.device, bf16: bool, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (p16, p32) in PEAKS.items():
        if key in name:
            return p16 if bf16 else p32
    return None


def gemm_tflops(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 10
                ) -> float:
    """Best TFLOP/s of an ``n`` x ``n`` matrix product in ``dtype`` over ``repeats``: the
    practical roof (the best, not the median: a roof is what the device can do, and on a
    shared machine other jobs only ever slow a product down)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    times = []
    for i in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        if i:  # the first product warms up
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e12


def flops_per_image(model: nn.Module, x: Tensor) -> tuple[float, float]:
    """FLOPs of one forward + backward and of one forward of ``model`` for one image (counted,
    batch 1)."""
    from torch.utils.flop_counter import FlopCounterMode

    xi = x[:1].clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        model(xi).float().sum().backward()
    with torch.no_grad(), FlopCounterMode(display=False) as forward:
        model(x[:1])
    return float(counter.get_total_flops()), float(forward.get_total_flops())


def images_through(name: str, amp: str | bool, bench: Bench, args: argparse.Namespace
                   ) -> tuple[int, int]:
    """Images one run of the variant sends through ``bench.model`` with and without a gradient
    (counted on the plain model; a compiled one runs the same algorithm)."""
    # eval(): a peer's (recursive) restore of the wrapper's mode must not reach the model
    counting = Counting(bench.model).eval()
    attack_fn(name, Bench(counting, bench.x, bench.y, bench.description), args, amp=amp)()
    return counting.grad_images, counting.forward_images


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(run: Callable[[], Tensor], device: torch.device, warmup: int, repeats: int
            ) -> tuple[float, Tensor, float | None]:
    """Median seconds, the last output, peak memory of the timed runs in MiB: memory allocated
    on a CUDA device, the process's resident high-water mark (model and inputs included) on a
    CPU."""
    for _ in range(warmup):
        run()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, out = [], None
    with PeakRSS() as rss:
        for _ in range(repeats):
            start = time.perf_counter()
            out = run()
            _sync(device)
            times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else rss.peak_mib)
    assert out is not None
    return statistics.median(times), out, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eps255", type=float, default=8.0)
    ap.add_argument("--amp", nargs="*", choices=("bf16", "fp16"), default=None,
                    help="also run advface under autocast (no value: bf16)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the score module")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (CPU runs)")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--peak-gemm", action="store_true",
                    help="peak: best TFLOP/s of a 2048x2048 matrix product, per precision")
    ap.add_argument("--out", type=Path, nargs="?", const=RESULTS, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible\n"
                         "  fix: run on the lent GPU machine, or --device cpu for a smoke test")

    gemm: dict[str, float] = {}
    if args.peak_gemm:
        for kind in ["fp32", *([] if args.amp is None else args.amp or ["bf16"])]:
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[kind]
            gemm[kind] = gemm_tflops(device, dtype)
        print("measured GEMM TFLOP/s:", {k: round(v, 3) for k, v in gemm.items()}, flush=True)
    rows: list[dict[str, Any]] = []
    desc = ""
    for batch in args.batch_sizes:
        bench: Bench = build_bench(args, min(batch, 62) if args.model != "tiny" else batch)
        desc = bench.description
        x, y = bench.x, bench.y
        if x.shape[0] < batch:  # the LFW split has 62 probes: tile them to the batch size
            reps = -(-batch // x.shape[0])
            x, y = x.repeat(reps, 1, 1, 1)[:batch], y.repeat(reps)[:batch]
        model = bench.model.to(device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        x, y = x.to(device), y.to(device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        flops, forward_flops = flops_per_image(model, x)
        scored: nn.Module = torch.compile(model) if args.compile else model
        variants: list[tuple[str, str | bool]] = [
            ("advface-same-work", False), ("advface-default", False), ("torchattacks", False)]
        for kind in ([] if args.amp is None else args.amp or ["bf16"]):
            variants += [("advface-same-work", kind), ("advface-default", kind)]
        for name, amp in variants:
            grad_images, forward_images = images_through(name, amp, Bench(model, x, y, desc), args)
            run = attack_fn(name, Bench(scored, x, y, desc), args, amp=amp)
            seconds, adv, peak = measure(run, device, args.warmup, args.repeats)
            q = to_grid(adv.detach().float())
            with torch.no_grad():
                fooled = float((model(q).argmax(1) != y).float().mean())
            work = flops * grad_images + forward_flops * forward_images
            tflops = work / seconds / 1e12
            # The roof for this mix of work: gradient passes in the variant's precision,
            # forwards (autocast rows re-take decisions in fp32) at the fp32 peak; the fraction
            # is the time the roofs would need over the time taken.
            grad_peak = (gemm[str(amp) if amp else "fp32"] if gemm
                         else peak_tflops(device, bool(amp), args.peak_tflops))
            fwd_peak = (gemm["fp32"] if gemm
                        else peak_tflops(device, False, args.peak_tflops))
            peak_t = None
            if grad_peak is not None and fwd_peak is not None:
                roof_seconds = (flops * grad_images / grad_peak
                                + forward_flops * forward_images / fwd_peak) / 1e12
                peak_t = work / 1e12 / roof_seconds
            rows.append({
                "model": args.model, "device": str(device), "batch": batch, "variant": name,
                "precision": f"{amp}-autocast" if amp else "fp32",
                "channels_last": args.channels_last, "compiled": args.compile,
                "images_per_s": round(batch / seconds, 2), "seconds": round(seconds, 4),
                "gflops_per_image_fwd_bwd": round(flops / 1e9, 3),
                "gflops_per_image_fwd": round(forward_flops / 1e9, 3),
                "grad_images": grad_images, "forward_images": forward_images,
                "achieved_tflops": round(tflops, 3),
                "peak_tflops_for_this_mix": None if peak_t is None else round(peak_t, 3),
                "peak_source": ("measured GEMM" if gemm else "given" if args.peak_tflops
                                else "data sheet" if peak_t is not None else None),
                "fraction_of_peak": None if peak_t is None else round(tflops / peak_t, 4),
                "peak_mem_mib": None if peak is None else round(peak, 1),
                "fooled": round(fooled, 4),
            })
            print(rows[-1], flush=True)

    dev_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else machine(args.threads))
    md = [f"# PGD L-inf {args.eps255:g}/255, {args.steps} steps on {dev_name} ({args.model})", "",
          f"- Model and inputs: {desc} (tiled to the batch size)",
          f"- {args.warmup} warm-up runs, median of {args.repeats}; channels_last "
          f"{args.channels_last}, torch.compile {args.compile}; FLOPs counted by "
          "torch.utils.flop_counter (one forward+backward, one forward, per image) times the "
          "images one run sends through the model with and without a gradient (counted in an "
          "untimed run: early stopping and evaluation forwards included; autocast rows re-take "
          "each step's decisions in fp32, their forward images)",
          "- Peak: " + ("measured: the best TFLOP/s of a 2048x2048 matrix product (of 10) on the "
                        "same device and threads, per precision (" + ", ".join(
                            f"{k} {v:.3f}" for k, v in gemm.items()) + " TFLOP/s)" if gemm
                        else f"given, {args.peak_tflops} TFLOP/s" if args.peak_tflops
                        else "the data sheet's dense TFLOP/s for this device (bf16/fp16 tensor "
                        "cores for autocast rows, fp32 otherwise)")
          + "; \"of peak\" is the time these roofs would need for the row's work (gradient "
          "passes at the row's precision, forwards at fp32) over the time taken",
          "- Peak mem: " + ("CUDA memory allocated during the timed runs" if device.type == "cuda"
                            else "the process's resident high-water mark during the timed runs, "
                            "model and inputs included"), "",
          "| variant | precision | batch | images/s | grad / fwd images | achieved TFLOP/s "
          "| of peak | peak mem MiB | fooled |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        frac = "-" if r["fraction_of_peak"] is None else f"{100 * r['fraction_of_peak']:.1f}%"
        mem = "-" if r["peak_mem_mib"] is None else f"{r['peak_mem_mib']:.0f}"
        md.append(f"| {r['variant']} | {r['precision']} | {r['batch']} | {r['images_per_s']} | "
                  f"{r['grad_images']} / {r['forward_images']} | "
                  f"{r['achieved_tflops']} | {frac} | {mem} | {100 * r['fooled']:.0f}% |")
    text = "\n".join(md) + "\n"
    print(text)
    if args.out is not None:
        stem = f"gpu_pgd_{args.model}_{device.type}" + ("_compiled" if args.compile else "")
        write_tables(args.out, stem, rows, text)


if __name__ == "__main__":
    main()
