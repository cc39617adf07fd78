"""Gallery-surface cells: poison enrolment images so that clean probes are misidentified.

Per chunk of probes the attacker may alter (within the budget) every gallery image of the
identities the goal names: the probes' own (dodging) or their targets' (impersonation). The
poisoned images are saved as PNG, re-read and re-embedded, and the *clean* probes are identified
against that gallery, so success is judged on what an attacker could really enrol. A row's
norms are the largest over that probe's poisoned identity's images; SSIM their mean, PSNR that of
their pooled mean squared error (an untouched image adds zero error, not an infinite PSNR).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from advface.data.images import load_png, save_png
from advface.errors import ConfigError
from advface.metrics.perturbation import perturbation_metrics

if TYPE_CHECKING:
    from advface.attacks.gallery_poisoning import GalleryPoisoning
    from advface.experiments.config import AttackSpec
    from advface.experiments.models import LoadedModel
    from advface.experiments.runner import Runner


def poisoning_attack(spec: AttackSpec, eps255: float | None) -> GalleryPoisoning:
    """The gallery-surface attack of ``spec``: its params go to gallery poisoning."""
    from advface.attacks.base import Budget
    from advface.attacks.gallery_poisoning import GalleryPoisoning
    from advface.attacks.registry import build

    if eps255 is None:
        raise ConfigError(f"gallery poisoning ({spec.name}) needs eps_8bit",
                          fix="give eps_8bit for attacks with surfaces: [gallery]")
    return build(GalleryPoisoning, Budget.from_8bit(spec.norm, eps255),
                 label=f"{spec.name} (gallery poisoning)", **spec.params)


def run_gallery_cell(runner: Runner, cid: str, spec: AttackSpec, lm: LoadedModel,
                     eps255: float | None, goal: str, label: str) -> None:
    from tqdm import tqdm

    from advface.experiments.runner import _chunks, _seed_for, key_png
    from advface.identify.gallery import Gallery

    st = runner._require_state()
    attack = poisoning_attack(spec, eps255)
    gallery_keys = sorted(st.split.gallery)
    labels = torch.tensor([st.label(k) for k in gallery_keys])
    clean_gallery = runner._images(gallery_keys)
    base_emb = lm.scorer.gallery.embeddings.clone()
    keys = runner._probe_keys_for(spec)
    done = st.store.done_items(cid)
    todo = [(i, c) for i, c in _chunks(keys, runner.cfg.batch_size) if not set(c) <= done]
    for i, chunk in tqdm(todo, desc=label, disable=not runner.progress, unit="batch"):
        probes = runner._images(chunk)
        goal_obj, targets = runner._goal_obj(goal, chunk)
        res = attack.run(lm.model, clean_gallery, labels, probes, goal_obj,
                         n_identities=len(st.identity_names), seed=_seed_for(cid, i))
        idx = res.poisoned.nonzero().flatten().tolist()
        reread = []
        for j in idx:
            rel = Path("images") / "adv" / cid / f"chunk{i:04d}" / key_png(gallery_keys[j])
            save_png(runner.run_dir / rel, res.gallery[j].cpu())
            reread.append(load_png(runner.run_dir / rel))
        emb = base_emb.clone()
        if idx:
            x = torch.stack(reread).to(clean_gallery.device)
            with torch.no_grad():
                new = torch.cat([lm.model(x[s:s + runner.cfg.batch_size]).float().cpu()
                                 for s in range(0, len(idx), runner.cfg.batch_size)])
            emb[idx] = new
            pm = perturbation_metrics(clean_gallery[idx].cpu(), x.cpu())
        poisoned_gallery = Gallery(emb, labels, st.identity_names, lm.model.metric)
        with torch.no_grad():
            probe_emb = lm.model(probes).float().cpu()
        mode = "centroid" if lm.spec.decision == "gallery-centroid" else "nearest"
        adv_pred = poisoned_gallery.identity_scores(probe_emb, mode=mode).argmax(1)
        clean_pred = lm.scorer.gallery.identity_scores(probe_emb, mode=mode).argmax(1)
        rows = []
        for n, k in enumerate(chunk):
            true = st.label(k)
            attacked_id = targets[n] if targets is not None else true
            mine = [m for m, j in enumerate(idx) if int(labels[j]) == attacked_id]
            success = (int(adv_pred[n]) == targets[n]) if targets is not None else (
                int(adv_pred[n]) != true)
            row = {"item_key": k, "clean_pred": int(clean_pred[n]),
                   "adv_pred": int(adv_pred[n]), "true_label": true,
                   "target_label": None if targets is None else int(targets[n]),
                   "success": bool(success), "iterations": int(res.iterations),
                   "adv_path": None, "linf": 0.0, "l2": 0.0, "l0": 0.0,
                   "ssim": 1.0, "psnr": math.inf}
            if mine:
                row.update(linf=float(max(pm["linf_8bit"][m] for m in mine)),
                           l2=float(max(pm["l2_8bit"][m] for m in mine)),
                           l0=float(max(pm["l0"][m] for m in mine)),
                           ssim=float(sum(pm["ssim"][m] for m in mine) / len(mine)),
                           psnr=_pooled_psnr([float(pm["psnr"][m]) for m in mine]))
            rows.append(row)
        st.store.put_rows(cid, rows)


def _pooled_psnr(psnrs: list[float]) -> float:
    """PSNR of the images' mean squared error (peak 1), from their per-image PSNRs."""
    mse = sum(10.0 ** (-p / 10.0) for p in psnrs) / len(psnrs)  # inf dB -> 0 error
    return math.inf if mse == 0 else -10.0 * math.log10(mse)
