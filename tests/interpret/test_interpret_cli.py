"""`advface interpret ...` commands on a small random ad-hoc model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from advface.cli.interpret import app
from advface.data.images import load_png, save_png
from advface.models.adhoc import AdHocArch, AdHocNet, save_adhoc

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    arch = AdHocArch(n_classes=3, head="softmax", widths=(4,), blocks=(1,), internal_size=16,
                     embedding_dim=8, input_size=32)
    model = AdHocNet(arch, ["Ada_Quill", "Bruno_Rowe", "Chloe_Sato"]).eval()
    out = tmp_path_factory.mktemp("model")
    save_adhoc(model, out / "model.safetensors")
    return out


@pytest.fixture(scope="module")
def face(tmp_path_factory) -> Path:
    g = torch.Generator().manual_seed(1)
    path = tmp_path_factory.mktemp("img") / "face.png"
    save_png(path, torch.rand(3, 40, 40, generator=g))
    return path


@pytest.mark.parametrize("method", ["vanilla", "smoothgrad", "ig"])
def test_saliency_writes_an_overlay(checkpoint: Path, face: Path, tmp_path: Path,
                                    method: str) -> None:
    out = tmp_path / f"{method}.png"
    res = runner.invoke(app, ["saliency", "--checkpoint", str(checkpoint), "--image", str(face),
                              "--method", method, "--samples", "2", "--steps", "4",
                              "--target", "Bruno_Rowe", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert load_png(out).shape == (3, 32, 32)  # centre-cropped to the model's input
    assert "centre-cropped 40x40 -> 32x32" in res.output and "Bruno_Rowe" in res.output


def test_saliency_methods_differ_and_each_is_reproducible(checkpoint: Path, face: Path,
                                                          tmp_path: Path) -> None:
    """--method reaches the computation (a method ignored would give equal overlays), and the
    same call twice gives the same overlay (seeded SmoothGrad noise)."""
    def overlay(method: str, name: str) -> torch.Tensor:
        out = tmp_path / name
        res = runner.invoke(app, ["saliency", "--checkpoint", str(checkpoint), "--image",
                                  str(face), "--method", method, "--samples", "3", "--steps",
                                  "4", "--seed", "3", "--out", str(out)])
        assert res.exit_code == 0, res.output
        return load_png(out)

    maps = {m: overlay(m, f"{m}.png") for m in ("vanilla", "smoothgrad", "ig")}
    assert not torch.equal(maps["vanilla"], maps["ig"])
    assert not torch.equal(maps["vanilla"], maps["smoothgrad"])
    assert torch.equal(maps["smoothgrad"], overlay("smoothgrad", "again.png"))


def test_identity_writes_an_image(checkpoint: Path, face: Path, tmp_path: Path) -> None:
    out = tmp_path / "id.png"
    res = runner.invoke(app, ["identity", "--checkpoint", str(checkpoint), "--identity",
                              "Chloe_Sato", "--from-image", str(face), "--steps", "5",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert load_png(out).shape == (3, 32, 32)
    assert "p(Chloe_Sato)" in res.output


def test_unknown_identity_is_a_clear_error(checkpoint: Path, face: Path) -> None:
    res = runner.invoke(app, ["saliency", "--checkpoint", str(checkpoint), "--image", str(face),
                              "--target", "Chloe_Sat"])
    assert res.exit_code != 0
    assert "Chloe_Sato" in str(res.exception)


def test_saliency_writes_to_the_working_directory_by_default(
        checkpoint: Path, face: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not beside the image: there it would become one more photo of that person."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = sorted(face.parent.iterdir())
    res = runner.invoke(app, ["saliency", "--checkpoint", str(checkpoint), "--image", str(face),
                              "--method", "vanilla"])
    assert res.exit_code == 0, res.output
    assert load_png(work / "face_vanilla.png").shape == (3, 32, 32)
    assert sorted(face.parent.iterdir()) == before


def test_saliency_help_names_the_default_output() -> None:
    import typer

    command = typer.main.get_command(app).commands["saliency"]  # type: ignore[attr-defined]
    (out,) = [p for p in command.params if p.name == "out"]
    assert "current directory" in (out.help or "")


def test_saliency_refuses_an_out_that_is_not_png(checkpoint: Path, face: Path,
                                                 tmp_path: Path) -> None:
    from advface.errors import AdvfaceError

    out = tmp_path / "overlay.jpg"
    res = runner.invoke(app, ["saliency", "--checkpoint", str(checkpoint), "--image", str(face),
                              "--method", "vanilla", "--out", str(out)])
    assert isinstance(res.exception, AdvfaceError), res.output
    assert ".png" in str(res.exception) and res.exception.path == out
    assert not out.exists()


@pytest.mark.parametrize(("option", "value"), [("--alpha", "1.5"), ("--alpha", "-0.1"),
                                               ("--smooth", "-1"), ("--samples", "0"),
                                               ("--steps", "0"), ("--noise", "-0.1")])
def test_saliency_bounds_its_numbers(checkpoint: Path, face: Path, tmp_path: Path,
                                     option: str, value: str) -> None:
    out = tmp_path / "o.png"
    res = runner.invoke(app, ["saliency", "--checkpoint", str(checkpoint), "--image", str(face),
                              "--method", "vanilla", "--out", str(out), option, value])
    assert res.exit_code == 2, res.output
    assert option in res.output and not out.exists()
