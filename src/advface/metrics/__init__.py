"""advface.metrics: pure functions turning scores and images into reported numbers.

``identification`` (ranks, CMC, precision/recall, random baselines), ``verification`` (ROC, EER,
TAR@FAR, LFW 10-fold), ``perturbation`` (L0/L2/L-inf, PSNR, SSIM) and ``attack`` (success rate,
robust accuracy, Wilson intervals). Import the submodule you need: this package imports nothing,
so numpy-only users do not pay for torch.
"""
