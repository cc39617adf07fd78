"""The benchmark scripts still run, and what their tables claim holds on a tiny model.

Why: ``benchmarks/`` is run by hand, so a refactor of the library (or of the scripts' shared
``_models.py``) could break it unseen until the next measurement. These run each attack
benchmark on its ``tiny`` model (a random CNN on random images, seconds) and check the claims
the committed tables rest on: budgets kept, work counted as done, success of the one-pass
curve at least that of one run per eps.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--model", "tiny", "--threads", "1",
         *args, "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_gpu_pgd_counts_the_work_each_variant_does(tmp_path: Path) -> None:
    """Same-work advface and torchattacks take batch x steps gradient passes; early stopping
    takes fewer; autocast rows re-take each step's decision in fp32 (a forward per gradient
    pass); the peak is the measured matrix product's, and no row claims more than ~the roof."""
    _run("gpu_pgd.py", "--device", "cpu", "--batch-sizes", "4", "--warmup", "0", "--repeats",
         "1", "--peak-gemm", "--amp", "bf16", out=tmp_path)
    rows = {(r["variant"], r["precision"]): r for r in _rows(tmp_path / "gpu_pgd_tiny_cpu.csv")}
    assert set(rows) == {("advface-same-work", "fp32"), ("advface-default", "fp32"),
                         ("torchattacks", "fp32"), ("advface-same-work", "bf16-autocast"),
                         ("advface-default", "bf16-autocast")}
    full = 4 * 10
    assert int(rows["advface-same-work", "fp32"]["grad_images"]) == full
    assert int(rows["torchattacks", "fp32"]["grad_images"]) == full
    assert 0 < int(rows["advface-default", "fp32"]["grad_images"]) <= full
    for kind in ("advface-same-work", "advface-default"):
        amp = rows[kind, "bf16-autocast"]
        assert int(amp["forward_images"]) >= int(amp["grad_images"]) > 0
    for r in rows.values():
        assert r["peak_source"] == "measured GEMM"
        assert 0 < float(r["fraction_of_peak"]) < 1.5  # timing noise aside, not above the roof
        assert 0.0 <= float(r["fooled"]) <= 1.0
    assert "measured: the best TFLOP/s" in (tmp_path / "gpu_pgd_tiny_cpu.md").read_text()


def test_eps_curve_one_pass_methods_never_fool_fewer(tmp_path: Path) -> None:
    """The sweep and the minimal-eps search succeed at every eps at least as often as one
    advface PGD run per eps, and do fewer gradient passes than running every eps in full."""
    _run("eps_curve.py", "--batch", "8", "--repeats", "1", "--rounds", "1", out=tmp_path)
    rows = {r["method"]: r for r in _rows(tmp_path / "eps_curve_tiny.csv")}
    assert not any(r.get("error") for r in rows.values())
    for method in ("sweep", "minimal-eps", "sweep-1start"):
        assert rows[method]["success_ge_per_eps"] == "True", rows[method]
        assert int(rows[method]["grad_images"]) < int(rows["per-eps-no-es"]["grad_images"])


def test_attacks_vs_peers_keeps_every_budget(tmp_path: Path) -> None:
    """Every library's PGD output stays within 8/255 and each library has its row."""
    _run("attacks_vs_peers.py", "--batch-sizes", "2", "--repeats", "1", "--rounds", "1",
         out=tmp_path)
    rows = _rows(tmp_path / "attacks_vs_peers_tiny.csv")
    assert {r["library"] for r in rows} == {"advface-same-work", "advface-default",
                                             "torchattacks", "torchattacks+judge", "art"}
    for r in rows:
        assert not r.get("error"), r
        assert float(r["max_linf_255"]) <= 8.0 + 1e-6, r
