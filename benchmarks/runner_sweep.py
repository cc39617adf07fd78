"""`advface run` with an eps grid: plain per-eps cells vs swept cells (``sweep: true``).

Why: the eps-curve benchmark (``eps_curve.py``) times the attack functions alone; a study also
pays, per cell, for saving, re-reading and judging every adversarial PNG and for the perturbation
metrics. This measures what ``sweep: true`` saves on a whole run of the main job's PGD (both
models, dodging and impersonation, the LFW split of ``configs/lfw_default.yaml``) and checks that
success never drops: at the smallest eps the swept cell is the plain one (same seeds), above it
a probe fooled one step down keeps that image and the others restart from it.

Each variant runs as ``advface run`` in a fresh process into a fresh run directory, variants
taking turns round after round; a run with no attacks (models, split, clean evaluation) gives
the fixed cost that both pay. Needs the LFW data, the chip cache and the ad-hoc checkpoint::

    export ADVFACE_DATA=/work/shared/data/lfw
    python benchmarks/runner_sweep.py --rounds 2 --out

``--out`` writes ``benchmarks/results/runner_sweep.{csv,md}`` (or into ``--out DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _models import RESULTS, machine, write_tables

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("setup-only", "per-eps", "swept")


def config(variant: str, args: argparse.Namespace) -> str:
    attack = " []"
    if variant != "setup-only":
        sweep = f", sweep: {str(variant == 'swept').lower()}"  # explicit: the default sweeps
        attack = (f"\n  - {{name: pgd, params: {{steps: {args.steps}, random_restarts: 1}}, "
                  f"eps_8bit: [{', '.join(f'{e:g}' for e in args.eps)}], "
                  f"goals: [{', '.join(args.goals)}]{sweep}}}")
    return f"""name: runner_sweep_{variant}
seed: 0
data: {{min_images: 20, probes_per_person: 1, distractors: false, seed: 0}}
models:
  - {{name: dlib, source: dlib}}
  - {{name: adhoc, source: adhoc, checkpoint: {args.checkpoint.resolve()}}}
n_probes: {args.n_probes}
batch_size: {args.batch_size}
verification: false
attacks:{attack}
"""


def run_once(variant: str, work: Path, args: argparse.Namespace) -> float:
    cfg = work / f"{variant}.yaml"
    cfg.write_text(config(variant, args))
    run_dir = work / f"run_{variant}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "advface.cli.main", "run", str(cfg), "--out", str(run_dir),
           "--no-report", "--no-progress"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{variant}: advface run failed:\n{done.stderr[-3000:]}")
    return wall


def cells(run_dir: Path) -> dict[tuple[str, str, float], dict[str, Any]]:
    """(model, goal, eps/255) -> success rate, summed iterations, probes."""
    with sqlite3.connect(run_dir / "results.sqlite") as con:
        q = ("SELECT c.model, c.goal, c.eps, AVG(r.success), SUM(r.iterations), COUNT(*) "
             "FROM rows r JOIN cells c USING (cell_id) GROUP BY c.cell_id")
        return {(m, g, round(e * 255, 3)): {"success": s, "iterations": it, "n": n}
                for m, g, e, s, it, n in con.execute(q)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "models" / "adhoc_min20")
    ap.add_argument("--eps", type=float, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--goals", nargs="+", default=["dodging", "impersonation"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--n-probes", type=int, default=62)
    ap.add_argument("--batch-size", type=int, default=31)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="fresh runs per variant (median)")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    ap.add_argument("--out", type=Path, nargs="?", const=RESULTS, default=None,
                    help=f"write runner_sweep.csv/.md here (default {RESULTS})")
    args = ap.parse_args()
    if not (args.checkpoint / "model.safetensors").is_file():
        raise SystemExit(f"no ad-hoc checkpoint at {args.checkpoint}: train it with `advface "
                         "train adhoc --config configs/train_adhoc.yaml --out "
                         "runs/models/adhoc_min20`")
    host = machine(args.threads)
    with tempfile.TemporaryDirectory(prefix="runner_sweep_") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        walls: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(args.rounds):
            for v in VARIANTS:
                walls[v].append(run_once(v, work, args))
                print(f"round {r + 1}: {v} {walls[v][-1]:.1f} s", flush=True)
        plain, swept = cells(work / "run_per-eps"), cells(work / "run_swept")
    wall = {v: statistics.median(w) for v, w in walls.items()}
    attack_s = {v: wall[v] - wall["setup-only"] for v in ("per-eps", "swept")}
    rows: list[dict[str, Any]] = []
    for key in sorted(plain):
        m, g, e = key
        rows.append({"model": m, "goal": g, "eps255": e,
                     "success_per_eps": round(plain[key]["success"], 4),
                     "success_swept": round(swept[key]["success"], 4),
                     "iterations_per_eps": plain[key]["iterations"],
                     "iterations_swept": swept[key]["iterations"], "probes": plain[key]["n"]})
    it_plain = sum(r["iterations_per_eps"] for r in rows)
    it_swept = sum(r["iterations_swept"] for r in rows)
    never_lower = all(r["success_swept"] >= r["success_per_eps"] - 1e-9 for r in rows)
    summary = {"wall_s": wall, "attack_s": attack_s,
               "speedup_attack": attack_s["per-eps"] / attack_s["swept"],
               "speedup_wall": wall["per-eps"] / wall["swept"],
               "iterations": {"per-eps": it_plain, "swept": it_swept},
               "swept_never_lower": never_lower}
    md = markdown(args, rows, summary, host)
    print(md)
    print(json.dumps(summary))
    if args.out is not None:
        write_tables(args.out, "runner_sweep", rows, md)


def markdown(args: argparse.Namespace, rows: list[dict[str, Any]], s: dict[str, Any],
             host: str) -> str:
    w, a = s["wall_s"], s["attack_s"]
    lines = [
        "# `advface run` with an eps grid: per-eps cells vs `sweep: true`",
        "",
        f"- Study: PGD L-inf {args.steps} steps + 1 random restart, eps "
        f"{', '.join(f'{e:g}' for e in args.eps)} /255, {', '.join(args.goals)}; models dlib "
        f"(gallery-nearest) and the ad-hoc CNN {args.checkpoint.name} (gallery-nearest); "
        f"{args.n_probes} probes of the LFW split (min_images=20, 1 probe/person, seed 0), "
        f"batch {args.batch_size}; each cell saves, re-reads and judges its PNGs",
        f"- Machine: {host}",
        f"- Wall: `advface run` in a fresh process, median of {args.rounds} round(s): "
        f"setup only (models, split, clean evaluation) {w['setup-only']:.1f} s; per-eps "
        f"{w['per-eps']:.1f} s; swept {w['swept']:.1f} s. Attack cells (wall minus setup): "
        f"per-eps {a['per-eps']:.1f} s, swept {a['swept']:.1f} s: "
        f"**{s['speedup_attack']:.2f}x** ({s['speedup_wall']:.2f}x on the whole run)",
        f"- Gradient iterations over all cells: per-eps {s['iterations']['per-eps']}, swept "
        f"{s['iterations']['swept']}; swept success >= per-eps in every cell: "
        f"{'yes' if s['swept_never_lower'] else 'NO'}",
        "",
        "| model | goal | eps /255 | success per-eps | success swept | iterations per-eps "
        "| iterations swept |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['goal']} | {r['eps255']:g} | "
                     f"{100 * r['success_per_eps']:.1f}% | {100 * r['success_swept']:.1f}% | "
                     f"{r['iterations_per_eps']} | {r['iterations_swept']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
