"""Identity visualisation: raises the identity's score, stays an image, is seeded."""

from __future__ import annotations

import torch
from interpret_models import SmoothNet, images

from advface.interpret.identity_viz import (
    VizConfig,
    centroid_objective,
    centroid_of,
    identity_objective,
    noise_start,
    total_variation,
    visualise_identity,
)

CFG = VizConfig(steps=40, lr=0.05, jitter=1, blur_every=5, blur_sigma=0.5, tv_weight=1e-3,
                l2_decay=0.01)


def test_from_noise_raises_the_identity_and_is_deterministic() -> None:
    torch.set_num_threads(1)
    model = SmoothNet().eval()
    start = noise_start(2, 16, seed=0)
    obj = identity_objective(model, 3, "log_softmax")
    a = visualise_identity(obj, start, CFG, seed=1, model=model)
    b = visualise_identity(obj, start, CFG, seed=1, model=model)
    torch.testing.assert_close(a.images, b.images)
    assert a.images.shape == start.shape
    assert a.images.min() >= 0 and a.images.max() <= 1
    assert (a.final_objective > a.objective[0] + 0.5).all()
    assert (model(a.images).argmax(1) == 3).all()
    assert a.objective.shape == (CFG.steps + 1, 2)


def test_from_another_face_turns_it_into_the_target() -> None:
    model = SmoothNet().eval()
    faces = images(3)
    with torch.no_grad():
        before = model(faces).argmax(1)
    target = int((before[0] + 1) % 4)
    res = visualise_identity(identity_objective(model, target), faces[:1], CFG, seed=0)
    assert int(model(res.images).argmax(1)) == target


def test_centroid_objective_for_an_embedding_model() -> None:
    model = SmoothNet(n_ids=6).eval()  # read its 6 outputs as an embedding
    person = images(3, seed=5)
    c = centroid_of(model, person)
    assert torch.isclose(c.norm(), torch.tensor(1.0))
    obj = centroid_objective(model, c)
    res = visualise_identity(obj, noise_start(1, 16, seed=2), CFG, seed=0)
    assert float(res.final_objective[0]) > float(res.objective[0, 0])
    assert float(res.final_objective[0]) > 0.99
    # The reported objective is the cosine to the centroid of the returned image.
    emb = model(res.images)
    torch.testing.assert_close(torch.nn.functional.cosine_similarity(emb, c[None])[0],
                               res.final_objective[0])


def test_tv_prior_makes_smoother_images() -> None:
    model = SmoothNet().eval()
    obj = identity_objective(model, 0)
    start = noise_start(1, 16, seed=3)
    free = VizConfig(steps=30, jitter=0, blur_every=0, tv_weight=0.0)
    smooth = VizConfig(steps=30, jitter=0, blur_every=0, tv_weight=0.5)
    a = visualise_identity(obj, start, free).images
    b = visualise_identity(obj, start, smooth).images
    assert float(total_variation(b)) < float(total_variation(a))


def test_priors_on_the_change_keep_the_start_face() -> None:
    model = SmoothNet().eval()
    face = images(1, seed=4)
    obj = identity_objective(model, 2, "log_softmax")
    cfg = VizConfig(steps=30, jitter=0, blur_every=2, blur_sigma=1.0, tv_weight=0.0)
    on_image = visualise_identity(obj, face, cfg).images
    on_change = visualise_identity(obj, face, VizConfig(**{**cfg.__dict__,
                                                           "prior_on": "change"})).images
    # Blurring the whole image erases the face; blurring only the edit keeps it.
    assert (on_change - face).abs().mean() < 0.5 * (on_image - face).abs().mean()


def test_the_callers_model_gets_no_parameter_gradients() -> None:
    """Only the pixels are differentiated: gradients left in the model's ``.grad`` would leak
    into its owner's next optimiser step (loss.backward() used to put them there)."""
    model = SmoothNet().eval()
    res = visualise_identity(identity_objective(model, 1), images(2), VizConfig(steps=3),
                             seed=0, model=model)
    assert all(p.grad is None for p in model.parameters())
    assert (res.final_objective > res.objective[0]).all()  # the pixels still moved uphill
