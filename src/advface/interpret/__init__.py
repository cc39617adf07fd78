"""advface.interpret: why the models decide as they do, and what an attack changes.

* :mod:`advface.interpret.saliency` — vanilla gradient, SmoothGrad, Integrated Gradients for
  one identity's score; heat-map overlays; where a perturbation sits relative to saliency;
  clean-vs-adversarial figures.
* :mod:`advface.interpret.identity_viz` — gradient ascent on the input toward an identity
  (softmax logit or embedding centroid) with jitter, blur, total-variation and L2-decay priors.
* :mod:`advface.interpret.scoring` — turning a face model into a score module.

Submodules are imported on demand (matplotlib only when a figure or overlay is drawn).
"""
