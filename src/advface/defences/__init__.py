"""advface.defences: defences against adversarial faces, and their honest evaluation.

* :mod:`advface.defences.adversarial_training` — PGD (Madry) and FGSM-RS (Wong et al.)
  adversarial training of the ad-hoc model on the standard training pipeline.
* :mod:`advface.defences.transforms` — JPEG, bit-depth, median and random resize-and-pad input
  transforms around a score module, with BPDA (straight-through) gradients and EOT.
* :mod:`advface.defences.detector` — feature-squeezing detection (Xu et al.).
* :mod:`advface.defences.evaluate` — clean, naive and adaptive robust accuracy side by side.
"""
