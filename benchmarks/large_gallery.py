"""MegaFace-style test: LFW closed-set identification with a million synthetic distractors.

Why: a face-identification system is deployed against galleries far larger than LFW's 11.5k
images, and every extra enrolled face is one more way for a probe (clean or adversarial) to be
misidentified. This measures what 1M distractors do to rank-1, and what exact vs approximate
FAISS search (advface.identify.search.GalleryIndex) costs and loses.

Real embeddings: dlib descriptors of the LFW chips from the embeddings cache
(``$ADVFACE_CACHE/embeddings/<fingerprint>/*.safetensors``, written by ``advface`` runs). When
none are cached the script says so and falls back to synthetic "real-like" embeddings (identity
centres plus per-image noise at dlib's distance scale, LFW's images-per-person counts).

Distractors: a full-covariance Gaussian fitted to the gallery embeddings (mean and 128x128
covariance), one image per distractor identity. The script checks that fit by comparing
nearest-neighbour distance distributions (quantiles and the Kolmogorov-Smirnov distance) on
equal-sized sets: probe -> nearest impostor gallery image vs probe -> nearest distractor, and
gallery image -> nearest other-identity gallery image vs distractor -> nearest other distractor.

    python benchmarks/large_gallery.py [--distractors 1000000] [--threads 2]

Writes ``benchmarks/results/large_gallery.{md,csv}`` and prints the Markdown.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from advface.data.records import ImageRecord, identity_of
from advface.data.splits import make_closed_set_split
from advface.identify.search import GalleryIndex, rank_agreement, true_ranks

RESULTS = Path(__file__).resolve().parent / "results"
# Separate random streams: numpy's default_rng(0) and default_rng([0, 0]) draw the same numbers,
# which once made the "independent" distractors copies of the synthetic identity centres.
SYNTHETIC_STREAM, DISTRACTOR_STREAM, SAMPLE_STREAM = 0x5E7, 0xD15, 0x5A3


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------- embeddings


def cached_dlib_embeddings(cache_dir: Path) -> tuple[dict[str, np.ndarray], str] | None:
    """The largest cached dlib embedding file: key -> 128-d descriptor, plus its path."""
    from safetensors import SafetensorError, safe_open

    best: tuple[int, Path] | None = None
    for path in sorted((cache_dir / "embeddings").glob("*/*.safetensors")):
        try:
            with safe_open(str(path), framework="np") as fh:
                meta = fh.metadata() or {}
        except (OSError, ValueError, SafetensorError):
            continue  # an unreadable cache file is just not a candidate
        if "Dlib" not in meta.get("model_class", ""):
            continue
        n = len(json.loads(meta.get("keys", "[]")))
        if best is None or n > best[0]:
            best = (n, path)
    if best is None:
        return None
    with safe_open(str(best[1]), framework="np") as fh:
        keys = json.loads(fh.metadata()["keys"])
        matrix = fh.get_tensor("embeddings")
    # Rows are keyed "key#<source hash>" (the hash keeps re-aligned images apart); keep the key.
    return ({k.split("#", 1)[0]: matrix[i].astype(np.float32) for i, k in enumerate(keys)},
            str(best[1]))


def synthetic_lfw(names_file: Path | None, seed: int) -> dict[str, np.ndarray]:
    """LFW-shaped fake dlib descriptors: LFW's people and counts, dlib's distance scale.

    dlib calls two descriptors the same person below Euclidean distance 0.6; typical distances
    are ~0.4 within and ~0.9 between people. In 128-d, N(0, s^2) noise gives pair distances of
    about 16 s, hence the within/between scales below.
    """
    rng = np.random.default_rng([SYNTHETIC_STREAM, seed])
    if names_file is not None and names_file.is_file():
        people = [(n, int(c)) for n, c in (ln.split("\t") for ln in
                                           names_file.read_text().split("\n") if ln.strip())]
    else:
        counts = np.minimum(rng.zipf(2.2, size=5749), 530)
        people = [(f"Person_{i:04d}", int(c)) for i, c in enumerate(counts)]
    dim, within, between = 128, 0.4 / 16, 0.9 / 16
    out = {}
    for name, count in people:
        centre = between * rng.standard_normal(dim)
        for j in range(1, count + 1):
            # Per-image spread varies (pose, light, blur): some images are hard to identify.
            spread = within * rng.lognormal(0.0, 0.35)
            out[f"{name}/{name}_{j:04d}.jpg"] = (centre + spread * rng.standard_normal(dim)
                                                ).astype(np.float32)
    return out


class GaussianDistractors:
    """Full-covariance Gaussian fitted to real embeddings; draws in seeded blocks."""

    def __init__(self, real: np.ndarray) -> None:
        x = real.astype(np.float64)
        self.mean = x.mean(axis=0)
        cov = np.cov(x, rowvar=False)
        # A touch of ridge keeps the Cholesky factor defined if a direction is degenerate.
        self.chol = np.linalg.cholesky(cov + 1e-9 * np.trace(cov) / cov.shape[0]
                                       * np.eye(cov.shape[0]))

    def draw(self, n: int, seed: int, block: int = 100_000) -> np.ndarray:
        out = np.empty((n, self.mean.shape[0]), dtype=np.float32)
        for b, start in enumerate(range(0, n, block)):
            rng = np.random.default_rng([DISTRACTOR_STREAM, seed, b])
            z = rng.standard_normal((min(block, n - start), self.mean.shape[0]))
            out[start : start + z.shape[0]] = self.mean + z @ self.chol.T
        return out


# --------------------------------------------------------------------------- NN-distance check


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, side="right") / a.size
                               - np.searchsorted(b, grid, side="right") / b.size)))


def nn_distance_check(gallery: np.ndarray, g_labels: np.ndarray, probes: np.ndarray,
                      p_labels: np.ndarray, distractors: np.ndarray, seed: int
                      ) -> list[dict[str, Any]]:
    """Nearest-impostor distances, real vs synthetic, on sets of equal size."""
    rng = np.random.default_rng([SAMPLE_STREAM, seed])
    sample = distractors[rng.choice(distractors.shape[0], gallery.shape[0], replace=False)]
    real_index = GalleryIndex(gallery, g_labels, "euclidean")
    syn_index = GalleryIndex(sample, np.arange(sample.shape[0]), "euclidean")

    def first_other(index: GalleryIndex, q: np.ndarray, own: np.ndarray) -> np.ndarray:
        s, ids = index.identity_rank_lists(q, 2)
        pick = np.where(ids[:, 0] == own, s[:, 1], s[:, 0])
        return -pick

    probe_real = first_other(real_index, probes, p_labels)
    probe_syn = -syn_index.search(probes, 1)[0][:, 0]
    gal_real = first_other(real_index, gallery, g_labels)
    gal_syn = -syn_index.search(sample, 2)[0][:, 1]  # [0] is the point itself
    rows = []
    for name, real, syn in (("probe -> nearest impostor", probe_real, probe_syn),
                            ("gallery -> nearest other identity", gal_real, gal_syn)):
        q = [5, 25, 50, 75, 95]
        rows.append({"comparison": name, "n": int(real.size),
                     "real_quantiles": np.percentile(real, q).round(4).tolist(),
                     "distractor_quantiles": np.percentile(syn, q).round(4).tolist(),
                     "ks": round(ks_distance(real, syn), 4)})
    return rows


# --------------------------------------------------------------------------- timing


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def evaluate(index: GalleryIndex, probes: np.ndarray, labels: np.ndarray, k: int
             ) -> tuple[np.ndarray, float]:
    """Identity rank lists and probes/s (median of 3 timed runs after a warm-up)."""
    index.identity_rank_lists(probes[:64], k)
    times, lists = [], None
    for _ in range(3):
        (_, lists), t = timed(lambda: index.identity_rank_lists(probes, k))
        times.append(t)
    assert lists is not None
    return lists, probes.shape[0] / float(np.median(times))


def rank_k(lists: np.ndarray, labels: np.ndarray, k: int) -> float:
    r = true_ranks(lists, labels)
    return float(np.mean((r >= 1) & (r <= k)))


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--distractors", type=int, default=1_000_000)
    ap.add_argument("--cache", type=Path,
                    default=Path(os.environ.get("ADVFACE_CACHE", "/tmp/advface-cache")))
    ap.add_argument("--names", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared/data/lfw/lfw-names.txt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--hnsw-m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=40)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--no-hnsw", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    t_start = time.perf_counter()
    load = os.getloadavg()

    found = cached_dlib_embeddings(args.cache)
    if found is not None:
        by_key, source = found
        source = f"real dlib embeddings from {source}"
    else:
        by_key = synthetic_lfw(args.names, args.seed)
        source = ("SYNTHETIC LFW-shaped embeddings (no dlib embeddings cached under "
                  f"{args.cache}/embeddings): the distractor effect is indicative only")
    print(f"embeddings: {source} ({len(by_key)} images)", flush=True)
    records = [ImageRecord(k, identity_of(k), Path(k)) for k in sorted(by_key)]
    split = make_closed_set_split(records, min_images=2, probes_per_person=1,
                                  distractors=True, seed=0)
    names = sorted({identity_of(k) for k in split.gallery})
    index_of = {n: i for i, n in enumerate(names)}
    gallery = np.stack([by_key[k] for k in split.gallery])
    g_labels = np.array([index_of[identity_of(k)] for k in split.gallery])
    probes = np.stack([by_key[k] for k in split.probes])
    p_labels = np.array([index_of[identity_of(k)] for k in split.probes])
    k = args.k
    print(f"split: {gallery.shape[0]} gallery images of {len(names)} identities, "
          f"{probes.shape[0]} probes", flush=True)

    fit = GaussianDistractors(gallery)
    distractors, t_draw = timed(lambda: fit.draw(args.distractors, args.seed))
    check = nn_distance_check(gallery, g_labels, probes, p_labels, distractors, args.seed)
    for row in check:
        print(row, flush=True)

    rows: list[dict[str, Any]] = []

    def record(name: str, n_distr: int, lists: np.ndarray, pps: float, build_s: float,
               exact_lists: np.ndarray | None) -> None:
        agree = rank_agreement(lists, exact_lists) if exact_lists is not None else None
        rows.append({
            "index": name, "distractors": n_distr, "probes_per_s": round(pps, 1),
            "build_s": round(build_s, 1),
            "rank1": round(rank_k(lists, p_labels, 1), 4),
            f"rank{k}": round(rank_k(lists, p_labels, k), 4),
            "rank1_agreement_vs_exact": None if agree is None else round(
                agree["rank1_agreement"], 4),
            f"recall@{k}_vs_exact": None if agree is None else round(agree["recall"], 4),
            "peak_rss_mb": round(peak_rss_mb()),
        })
        print(rows[-1], flush=True)

    def run_exact() -> np.ndarray:
        """Exact, without then with distractors; removing them must restore the first result."""
        exact, t = timed(lambda: GalleryIndex(gallery, g_labels, "euclidean", kind="exact"))
        base_lists, pps = evaluate(exact, probes, p_labels, k)
        record("exact (IndexFlatL2)", 0, base_lists, pps, t, None)
        ids, t = timed(lambda: exact.add_distractors(distractors))
        with_lists, pps = evaluate(exact, probes, p_labels, k)
        record("exact (IndexFlatL2)", args.distractors, with_lists, pps, t, None)
        exact.remove(ids)
        restored = exact.identity_rank_lists(probes, k)[1]
        assert np.array_equal(restored, base_lists), "removing the distractors changed ranks"
        return with_lists

    exact_lists = run_exact()

    def run_ivf() -> None:
        rng = np.random.default_rng([SAMPLE_STREAM, args.seed, 1])
        pick = rng.choice(distractors.shape[0], min(distractors.shape[0], 50 * args.nlist),
                          replace=False)
        train = np.concatenate([gallery, distractors[pick]])

        def build() -> GalleryIndex:
            index = GalleryIndex(gallery, g_labels, "euclidean", kind="ivf", nlist=args.nlist,
                                 train_vectors=train, seed=args.seed)
            index.add_distractors(distractors)
            return index

        ivf, t = timed(build)
        for nprobe in args.nprobe:
            ivf.nprobe = nprobe
            lists, pps = evaluate(ivf, probes, p_labels, k)
            record(f"IVF-Flat nlist={args.nlist} nprobe={nprobe}", args.distractors, lists,
                   pps, t, exact_lists)

    def run_hnsw() -> None:
        def build() -> GalleryIndex:
            index = GalleryIndex(gallery, g_labels, "euclidean", kind="hnsw",
                                 hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
            index.add_distractors(distractors)
            return index

        hnsw, t = timed(build)
        for ef in args.ef_search:
            hnsw.ef_search = ef
            lists, pps = evaluate(hnsw, probes, p_labels, k)
            record(f"HNSW-Flat M={args.hnsw_m} efC={args.ef_construction} efSearch={ef}",
                   args.distractors, lists, pps, t, exact_lists)

    run_ivf()
    if not args.no_hnsw:
        run_hnsw()

    write_results(args, rows, check, source, gallery.shape[0], len(names), probes.shape[0],
                  t_draw, load, time.perf_counter() - t_start)


def write_results(args: argparse.Namespace, rows: list[dict[str, Any]],
                  check: list[dict[str, Any]], source: str, n_gallery: int, n_ids: int,
                  n_probes: int, t_draw: float, load: tuple[float, float, float],
                  wall: float) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "large_gallery.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Large gallery (MegaFace-style): LFW closed set + synthetic distractors",
        "",
        f"- Embeddings: {source}",
        f"- Split: min_images=2, 1 probe per person, single-image people in the gallery: "
        f"{n_gallery} gallery images, {n_ids} identities, {n_probes} probes",
        f"- Distractors: {args.distractors:,} draws from a full-covariance Gaussian fitted to "
        f"the gallery embeddings (mean + 128x128 covariance), one identity each; drawn in "
        f"{t_draw:.1f} s",
        "- Metric: Euclidean on unnormalised descriptors (dlib's); identity score = best image",
        f"- Machine: {cpu_name()}, {os.cpu_count()} cores, FAISS {faiss.__version__} with "
        f"{args.threads} threads; load average at start {load[0]:.1f} (cores shared with "
        f"other jobs, so throughput is a lower bound); total wall {wall / 60:.1f} min",
        "- probes/s: end-to-end identity rank lists (top-"
        f"{args.k}), median of 3; build_s: index construction incl. adding the distractors "
        "(for exact rows: adding the distractors only); peak_rss_mb: process peak so far",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "---|" * len(rows[0]),
    ]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in r.values()) + " |"
              for r in rows]
    lines += ["", "## Do the distractors look like real faces? Nearest-neighbour distances",
              "", "Equal-sized sets (the distractor sample has as many images as the gallery). "
              "Quantiles 5/25/50/75/95 of Euclidean distance; KS = largest CDF gap (0 = same "
              "distribution).", "",
              "| comparison | n | real | distractors | KS |", "|---|---|---|---|---|"]
    lines += [f"| {c['comparison']} | {c['n']} | {c['real_quantiles']} | "
              f"{c['distractor_quantiles']} | {c['ks']} |" for c in check]
    text = "\n".join(lines) + "\n"
    (args.out / "large_gallery.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
