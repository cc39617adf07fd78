"""An experiment config is checked when it is read: every mistake named with its line, before
any cell runs (a typo must not surface hours into a run, or silently drop a cell)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from advface.errors import ConfigError
from advface.experiments.config import load_experiment
from advface.experiments.runner import Runner

HEAD = """name: t
data: {data_dir: /nowhere, min_images: 2}
models:
  - {name: m, source: dlib}
"""


def _load(tmp_path: Path, body: str, *, quick: bool = False):
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + body)
    return load_experiment(path, quick=quick)


@pytest.mark.parametrize(("attack", "match"), [
    ("{name: x, attack: pgdd, eps_8bit: [2]}", r"unknown attack 'pgdd' \(did you mean 'pgd'"),
    ("{name: x, attack: pgd, params: {stepz: 3}, eps_8bit: [2]}", "no hyper-parameter.*stepz"),
    ("{name: x, attack: pgd, params: {steps: ten}, eps_8bit: [2]}", "steps must be a whole"),
    ("{name: x, attack: pgd, params: {steps: 10.5}, eps_8bit: [2]}", "steps must be a whole"),
    ("{name: x, attack: pgd, eps_8bit: [-2]}", "finite and >= 0"),
    ("{name: x, attack: pgd, eps_8bit: [.inf]}", "finite and >= 0"),
    ("{name: x, attack: pgd, eps_8bit: []}", "eps_8bit is empty"),
    ("{name: x, attack: pgd}", "needs eps_8bit: without it the attack would run unbounded"),
    ("{name: x, attack: cw, norm: linf}", "does not support norm 'linf'"),
    ("{name: x, attack: pgd, eps_8bit: [2], goals: []}", "non-empty list"),
    ("{name: x, attack: pgd, eps_8bit: [2], surfaces: []}", "non-empty list"),
    ("{name: x, attack: pgd, eps_8bit: [2], surfaces: [gallery], params: {momentum: 0.9}}",
     "gallery poisoning.*no hyper-parameter.*momentum"),
    ("{name: x, attack: cw, surfaces: [gallery]}", "gallery poisoning.*needs eps_8bit"),
    ("{name: ../x, attack: pgd, eps_8bit: [2]}", "without / or"),
])
def test_attack_mistakes_are_named_with_their_line_when_the_config_is_read(
        tmp_path: Path, attack: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        _load(tmp_path, f"attacks:\n  - {attack}\n")
    assert "line 6" in str(err.value) and "c.yaml" in str(err.value)


def test_minimum_norm_attacks_need_no_eps_and_whole_float_counts_are_counts(
        tmp_path: Path) -> None:
    cfg = _load(tmp_path, "attacks:\n  - {name: cw, norm: l2, params: {steps: 20.0}}\n"
                          "  - {name: pgd (strong), attack: pgd, params: {steps: 5}, "
                          "eps_8bit: [0, 2, 4]}\n")
    assert [a.name for a in cfg.attacks] == ["cw", "pgd (strong)"]  # spaces are fine


@pytest.mark.parametrize(("body", "match"), [
    ("models: []\n", "non-empty list"),
    ("device: cpux\n", "not a torch device"),
])
def test_top_level_mistakes(tmp_path: Path, body: str, match: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(HEAD.replace("models:\n  - {name: m, source: dlib}\n",
                                 "models:\n  - {name: m, source: dlib}\n" if "models" not in body
                                 else "") + body)
    with pytest.raises(ConfigError, match=match):
        load_experiment(path)


def test_an_onnx_input_size_is_positive(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(HEAD.replace("{name: m, source: dlib}",
                                 "{name: m, source: onnx, checkpoint: m.onnx, input_size: 0}"))
    with pytest.raises(ConfigError, match="input_size"):
        load_experiment(path)


@pytest.mark.parametrize(("quick", "match"), [
    ("{attacks: [fgsm, bimm]}", r"quick.attacks names unknown attack 'bimm' \(did you mean 'bim'"),
    ("{attack_overrides: {fgms: {eps_8bit: [1]}}}", "quick.attack_overrides names unknown"),
    ("{attack_overrides: [fgsm]}", "must map attack names"),
    ("{attacks: fgsm}", "must be a list"),
])
def test_quick_names_only_attacks_of_the_config(tmp_path: Path, quick: str, match: str) -> None:
    body = ("attacks:\n  - {name: fgsm, eps_8bit: [2, 8]}\n  - {name: bim, eps_8bit: [2]}\n"
            f"quick: {quick}\n")
    for fast in (True, False):  # named without --quick too: the full run must not hide it
        with pytest.raises(ConfigError, match=match):
            _load(tmp_path, body, quick=fast)


def test_a_typo_inside_quick_is_named_by_the_full_run(tmp_path: Path) -> None:
    body = "attacks:\n  - {name: fgsm, eps_8bit: [2, 8]}\nquick: {n_probe: 4}\n"
    with pytest.raises(ConfigError, match="n_probe"):
        _load(tmp_path, body)


@pytest.mark.parametrize(("body", "match"), [
    ("batch_size: true\n", "expected a number, got true"),
    ("attacks:\n  - {name: pgd, eps_8bit: [300]}\n", "above 255 grey levels"),
    ("models:\n  - {name: d, source: dlib, metric: euclidean}\n", "does not use metric"),
    ("models:\n  - {name: d, source: dlib, input_size: 112}\n", "does not use input_size"),
    ("models:\n  - {name: d, source: dlib, train_config: t.yaml}\n", "does not use train_config"),
])
def test_settings_that_would_be_ignored_or_misread_are_refused(tmp_path: Path, body: str,
                                                               match: str) -> None:
    path = tmp_path / "c.yaml"
    text = HEAD + body if "models" not in body else HEAD.split("models:")[0] + body
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_experiment(path)


def test_an_l2_budget_may_exceed_255(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "attacks:\n  - {name: pgd, norm: l2, eps_8bit: [256, 512]}\n")
    assert cfg.attacks[0].eps_8bit == [256, 512]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_lacks_is_refused_before_anything_runs(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "device: cuda:0\n")
    with pytest.raises(ConfigError, match="not available here"):
        Runner(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    from typer.testing import CliRunner

    from advface.cli.main import app

    res = CliRunner().invoke(app, ["run", str(tmp_path / "c.yaml"), "--out",
                                   str(tmp_path / "run")])
    assert isinstance(res.exception, ConfigError) and "c.yaml" in str(res.exception)
    assert not (tmp_path / "run").exists()


def test_a_dlib_model_reads_the_descriptor_file_its_checkpoint_names(tmp_path: Path) -> None:
    """checkpoint: for dlib is used (a copy of the descriptor file here), not ignored."""
    import shutil

    from advface.errors import AdvfaceError
    from advface.experiments.config import ModelSpec
    from advface.experiments.models import load_model
    from advface.models.dlib_format import dlib_model_path

    copy = tmp_path / "copy.dat"
    shutil.copy(dlib_model_path(), copy)
    default = load_model(ModelSpec(name="d", source="dlib"))
    mine = load_model(ModelSpec(name="d", source="dlib", checkpoint=copy))
    x = torch.rand(1, 3, 150, 150)
    with torch.no_grad():
        assert torch.equal(default(x), mine(x))
    copy.write_bytes(copy.read_bytes()[:1000])  # a broken file is named, not replaced
    with pytest.raises(AdvfaceError, match=r"copy\.dat|truncated|end"):
        load_model(ModelSpec(name="d", source="dlib", checkpoint=copy))
