"""Identity visualisation of a run's models: what each classifier thinks a person looks like.

For every model of a run directory (rebuilt as the runner built it,
:mod:`advface.experiments.reload`), a few of the run's identities are visualised by gradient
ascent on the input (:mod:`advface.interpret.identity_viz`):

* a **softmax** model maximises the identity's logit from noise, and its log-probability from
  another person's face (only the change toward the target counts there);
* a **gallery** model (an embedding model such as dlib) maximises the similarity of the
  embedding to the centroid of the identity's gallery embeddings -- cosine, or minus the
  Euclidean distance for Euclidean models -- from noise and from another person's face.

The start faces are the run's own saved clean probes, so the figure shows what an unbounded,
visible impersonation of one enrolled person by another looks like, next to the bounded ones
of the attacks. Written into ``RUN_DIR/interpret/`` (docs/run_dir.md), per model:

* ``identity_<model>.png`` -- one row per identity: a probe photo of the identity | the image
  grown from noise | another person's probe | that face pushed toward the identity | the
  change (signed, amplified);
* ``identity_<model>.json`` -- settings, and per identity the objective before and after and
  the model's decision on both results (is the visualised identity what the model now sees?).

The report includes them in its Interpretability section.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advface.errors import AdvfaceError
from advface.interpret.identity_viz import VizConfig
from advface.interpret.run_figures import _atomic_write, _short, _u8, safe_name


@dataclass(frozen=True)
class IdentitySettings:
    """How many identities per model, the seed, and the ascent's settings and priors (``viz``;
    its ``prior_on`` is set per start: the image from noise, the change from a face)."""

    n: int = 4
    seed: int = 0
    viz: VizConfig = field(default_factory=VizConfig)

    def __post_init__(self) -> None:
        if self.n < 2:
            raise AdvfaceError(f"need at least 2 identities (each row starts from another "
                               f"one's face), got n={self.n}", fix="use --n 2 or more")


def settings_json(s: IdentitySettings) -> dict[str, Any]:
    """The settings as the JSON document records them (flat; ``prior_on`` varies per start)."""
    viz = {k: v for k, v in dataclasses.asdict(s.viz).items() if k != "prior_on"}
    return {"n": s.n, "seed": s.seed, **viz}


def probe_keys_by_identity(run: Any) -> dict[str, str]:
    """The first saved clean probe of each identity of the run (identity -> record key)."""
    from advface.report.load import split_keys

    out: dict[str, str] = {}
    for key in split_keys(run.split, "probe"):
        name = key.split("/", 1)[0]
        if name not in out and run.clean_image_path(key) is not None:
            out[name] = key
    return out


def choose_identities(run: Any, counts: dict[str, int], n: int) -> list[str]:
    """``n`` identities with a saved probe, most gallery images first (ties by name).

    Well-photographed people give the most recognisable prototypes; the choice depends only on
    the run, so every model of a run shows the same people.
    """
    probes = probe_keys_by_identity(run)
    ranked = sorted(probes, key=lambda name: (-counts.get(name, 0), name))
    if len(ranked) < 2:
        raise AdvfaceError(f"the run has saved clean probes of {len(ranked)} identities; "
                           "identity visualisation needs 2 or more", path=run.run_dir / "images",
                           fix="use a run with at least two probes")
    return ranked[:n]


def _gallery_counts(run: Any) -> dict[str, int]:
    from advface.report.load import split_keys

    counts: dict[str, int] = {}
    for key in split_keys(run.split, "gallery"):
        name = key.split("/", 1)[0]
        counts[name] = counts.get(name, 0) + 1
    return counts


def objectives(scorer: nn.Module, model: nn.Module, targets: Tensor
               ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], str]:
    """(from-noise objective, from-face objective, description) for one model of a run."""
    from advface.identify.embeddings import prepare_input
    from advface.identify.gallery import GalleryScorer
    from advface.interpret.identity_viz import identity_objective

    if not isinstance(scorer, GalleryScorer):
        return (identity_objective(scorer, targets, "score"),
                identity_objective(scorer, targets, "log_softmax"),
                "softmax head: the identity's logit from noise, its log-probability from a face")
    centroids = scorer.gallery.centroids[targets]
    metric = scorer.gallery.metric
    size = scorer.input_size

    def similarity(x: Tensor) -> Tensor:
        emb = model(prepare_input(x, size))
        c = centroids.to(emb)
        if metric == "euclidean":
            return -(emb - c).norm(dim=1)
        return F.cosine_similarity(emb, c, dim=1)

    what = ("minus the Euclidean distance" if metric == "euclidean" else "cosine similarity")
    return similarity, similarity, f"embedding model: {what} to the identity's gallery centroid"


def identity_figure(ref: Tensor, noise: Tensor, start: Tensor, pushed: Tensor,
                    heads: list[list[str]], labels: list[str], title: str):
    """The per-model figure (a matplotlib Figure, Agg): one row per identity."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = ref.shape[0]
    delta = (pushed - start).abs().amax()
    gain = max(1, int(127.0 / max(float(delta) * 255.0, 1e-6)))
    cols = 5
    fig = Figure(figsize=(1.6 * cols, 1.75 * n + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, cols, squeeze=False)
    for i in range(n):
        d = _u8(pushed[i]).astype(np.int16) - _u8(start[i]).astype(np.int16)
        panels = [_u8(ref[i]), _u8(noise[i]), _u8(start[i]), _u8(pushed[i]),
                  np.clip(128 + d * gain, 0, 255).astype(np.uint8)]
        for j, (ax, panel) in enumerate(zip(axes[i], panels, strict=True)):
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(heads[i][j], fontsize=6)
        axes[i][0].set_ylabel(labels[i], fontsize=7)
    for j, head in enumerate(["probe photo", "from noise", "start: another person",
                              "pushed toward the identity", f"change ×{gain} (grey: 0)"]):
        axes[0][j].set_title(head, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def model_identity(run: Any, name: str, scorer: nn.Module, model: nn.Module,
                   s: IdentitySettings, out_dir: Path, *, progress: bool = False,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Visualise ``s.n`` identities of one model of the run; writes and returns its document."""
    from advface import __version__
    from advface.data.images import load_png
    from advface.interpret.identity_viz import noise_start, visualise_identity

    started = time.monotonic()
    chosen = choose_identities(run, _gallery_counts(run), s.n)
    probes = probe_keys_by_identity(run)
    index = {nm: i for i, nm in enumerate(run.identity_names)}
    unknown = [nm for nm in chosen if nm not in index]
    if unknown:
        raise AdvfaceError(f"identities {unknown[:3]} are not in the run's identity list",
                           path=run.run_dir / "run.json", fix="the run directory is "
                           "inconsistent; rerun it")
    n = len(chosen)
    targets = torch.tensor([index[nm] for nm in chosen])
    ref = torch.stack([load_png(run.clean_image_path(probes[nm])) for nm in chosen]).float()
    # Row i starts from the probe of the next chosen identity: always another person.
    others = [chosen[(i + 1) % n] for i in range(n)]
    start = torch.roll(ref, -1, dims=0)
    from_noise, from_face, what = objectives(scorer, model, targets)
    size = tuple(ref.shape[-2:])
    res_noise = visualise_identity(from_noise, noise_start(n, size, seed=s.seed),  # type: ignore[arg-type]
                                   dataclasses.replace(s.viz, prior_on="image"), seed=s.seed,
                                   progress=progress,
                                   model=scorer)
    res_face = visualise_identity(from_face, start, dataclasses.replace(s.viz, prior_on="change"),  # type: ignore[arg-type]
                                  seed=s.seed, progress=progress, model=scorer)
    with torch.no_grad():
        dec = {k: scorer(v).float().argmax(1).tolist()
               for k, v in (("ref", ref), ("noise", res_noise.images), ("start", start),
                            ("pushed", res_face.images))}
    items, heads = [], []
    for i, nm in enumerate(chosen):
        ids = {k: run.identity_name(v[i]) for k, v in dec.items()}
        items.append({
            "identity": nm, "probe_key": probes[nm], "start_identity": others[i],
            "start_key": probes[others[i]],
            "objective_noise": [float(res_noise.objective[0, i]),
                                float(res_noise.final_objective[i])],
            "objective_face": [float(res_face.objective[0, i]),
                               float(res_face.final_objective[i])],
            "decision_probe": ids["ref"], "decision_noise": ids["noise"],
            "decision_start": ids["start"], "decision_pushed": ids["pushed"],
            "noise_is_identity": ids["noise"] == nm, "pushed_is_identity": ids["pushed"] == nm,
            "change_linf255": round(float((res_face.images[i] - start[i]).abs().amax()) * 255, 1),
        })
        heads.append([f"→ {_short(ids['ref'], 14)}", f"→ {_short(ids['noise'], 14)}",
                      f"{_short(others[i], 14)}\n→ {_short(ids['start'], 14)}",
                      f"→ {_short(ids['pushed'], 14)}",
                      f"L-inf {items[-1]['change_linf255']:.0f}/255"])
    stem = f"identity_{safe_name(name)}"
    fig = identity_figure(ref, res_noise.images, start, res_face.images, heads,
                          [_short(nm) for nm in chosen],
                          f"{name}: identity visualisation\n{what}; under each image: "
                          "the model's decision")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    _atomic_write(out_dir / f"{stem}.png", buf.getvalue())
    doc = {
        "kind": "identity", "model": name, "figure": f"{stem}.png", "objective": what,
        "settings": settings_json(s), "n_items": n, "items": items,
        "noise_is_identity": sum(it["noise_is_identity"] for it in items),
        "pushed_is_identity": sum(it["pushed_is_identity"] for it in items),
        "seconds": round(time.monotonic() - started, 2), "advface_version": __version__,
        **(extra or {}),
    }
    _atomic_write(out_dir / f"{stem}.json", (json.dumps(doc, indent=2) + "\n").encode())
    return doc


def run_identity(run_dir: str | Path, models: list[str] | None = None,
                 settings: IdentitySettings | None = None, *, head: str = "run",
                 data_dir: Path | None = None, cache_dir: Path | None = None,
                 progress: bool = False, log: Callable[[str], None] = print
                 ) -> list[dict[str, Any]]:
    """Write RUN_DIR/interpret/identity_<model>.{png,json} per model (default: all).

    ``head="run"`` visualises each model through the decision the run used; ``"softmax"``
    through the softmax head of the models that have one (``identity_<model>-softmax.*``; the
    others are skipped with a message), e.g. an ad-hoc model the run compared by gallery.
    """
    if head not in ("run", "softmax"):
        raise AdvfaceError(f"unknown head {head!r}", fix="use 'run' or 'softmax'")
    from advface.experiments.reload import load_run_config, load_run_models
    from advface.report.load import load_run

    s = settings or IdentitySettings()
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    cfg = load_run_config(run_dir)
    names = list(models) if models else [m.name for m in cfg.models]
    loaded = load_run_models(run_dir, names, data_dir=data_dir, cache_dir=cache_dir,
                             progress=progress)
    docs = []
    for name in names:
        lm = loaded.models[name]
        scorer, label = lm.scorer, name
        if head == "softmax":
            from advface.experiments.models import SoftmaxScorer

            if getattr(lm.model, "head", None) is None or not hasattr(lm.model, "class_names"):
                log(f"{name}: skipped, no softmax head")
                continue
            scorer, label = SoftmaxScorer(lm.model, loaded.identity_names).eval(), f"{name}-softmax"
        doc = model_identity(run, label, scorer, lm.model, s, run_dir / "interpret",
                             progress=progress,
                             extra={"fingerprint": lm.fingerprint,
                                    "fingerprint_matches_run": loaded.fingerprint_matches.get(
                                        name)})
        log(f"{name}: {doc['n_items']} identities; recognised as the identity from noise "
            f"{doc['noise_is_identity']}/{doc['n_items']}, from another face "
            f"{doc['pushed_is_identity']}/{doc['n_items']}; {doc['seconds']:.1f}s -> "
            f"{run_dir / 'interpret' / doc['figure']}")
        docs.append(doc)
    return docs
