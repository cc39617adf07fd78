"""Registry, config construction and the `advface attack` commands."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from advface.attacks import PGD, Budget, DeepFool, registry
from advface.cli.main import app
from advface.errors import AdvfaceError, ConfigError

REQUIRED = {"fgsm", "bim", "pgd", "mifgsm", "cw", "deepfool", "square", "universal", "noise"}


def test_registry_names_and_creation() -> None:
    assert set(registry.available()) == REQUIRED
    budget = Budget.from_8bit("l2", 100)
    for name in REQUIRED:
        attack = registry.create(name, budget)
        assert attack.name == name and attack.budget == budget
    pgd = registry.create("PGD", Budget.from_8bit("linf", 8), steps=20, random_restarts=2)
    assert isinstance(pgd, PGD) and pgd.steps == 20 and pgd.random_restarts == 2


def test_registry_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="unknown attack"):
        registry.create("nope", Budget("linf", 0.01))
    with pytest.raises(ConfigError, match="no hyper-parameter"):
        registry.create("pgd", Budget("linf", 0.01), stepz=3)
    with pytest.raises(ConfigError, match="no hyper-parameter"):
        registry.factory("square", steps=3)
    with pytest.raises(ConfigError, match="whole number"):
        registry.factory("pgd", steps="ten")  # a sweep fails before its first eps, not inside
    with pytest.raises(AdvfaceError, match="norm"):
        registry.create("cw", Budget("linf", 0.01))


def test_from_config_and_factory() -> None:
    attack = registry.from_config({"name": "deepfool", "norm": "linf", "eps255": 4, "steps": 7})
    assert isinstance(attack, DeepFool) and attack.steps == 7
    assert attack.budget.eps == pytest.approx(4 / 255)
    with pytest.raises(ConfigError, match="eps"):
        registry.from_config({"name": "pgd", "norm": "linf"})
    build = registry.factory("pgd", steps=3)
    assert build(Budget("l2", 0.5)).steps == 3  # type: ignore[attr-defined]


def test_cli_list_and_show() -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["attack", "list"])
    assert listed.exit_code == 0, listed.output
    for name in REQUIRED:
        assert name in listed.output
    shown = runner.invoke(app, ["attack", "show", "pgd"])
    assert shown.exit_code == 0, shown.output
    assert "random_restarts = 1" in shown.output and "steps = 10" in shown.output
    bad = runner.invoke(app, ["attack", "show", "nope"])
    assert bad.exit_code != 0


def test_hyper_parameter_types_are_checked_when_the_attack_is_built() -> None:
    budget = Budget.from_8bit("linf", 4)
    # A whole float count (YAML 10.0, a CLI k=v) is that count; a fraction is refused.
    assert registry.create("pgd", budget, steps=10.0).steps == 10
    assert isinstance(registry.create("square", budget, max_queries=100.0).max_queries, int)
    for bad in ({"steps": 10.5}, {"steps": "ten"}, {"steps": True}, {"early_stop": "yes"},
                {"momentum": "0.9"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            registry.create("pgd", budget, **bad)
    assert registry.create("pgd", budget, amp="bf16").amp == "bf16"  # bool | str stays free
    # eps255 None: the unbounded budget of minimum-norm attacks; a word is refused.
    unbounded = registry.from_config({"name": "cw", "norm": "l2", "eps255": None})
    assert unbounded.budget.eps == float("inf")
    with pytest.raises(ConfigError, match="eps255 must be a number"):
        registry.from_config({"name": "pgd", "norm": "linf", "eps255": "eight"})


@pytest.mark.parametrize(("name", "hyper"), [
    ("pgd", {"step_size": -0.01}), ("pgd", {"step_size": float("nan")}),
    ("bim", {"step_size": 0.0}), ("pgd", {"temperature": 0.0}), ("fgsm", {"kappa": -1.0}),
    ("mifgsm", {"momentum": -1.0}), ("pgd", {"ti_kernel": -3}),
    ("pgd", {"input_diversity": -0.5}), ("universal", {"step_size": -1.0}),
    ("cw", {"lr": float("nan")}), ("cw", {"kappa": -1.0}),
    ("deepfool", {"overshoot": float("nan")}),
])
def test_settings_that_would_understate_an_attack_are_refused(name: str, hyper: dict) -> None:
    """A negative or NaN step, a zero temperature, a negative kappa or momentum would let the
    attack find less than it can, and the model look more robust than it is: refused when the
    attack is built (from a config: when the config is read)."""
    norm = "l2" if name in ("cw", "deepfool") else "linf"
    with pytest.raises(AdvfaceError):
        registry.create(name, Budget.from_8bit(norm, 8), **hyper)


def test_a_single_step_attack_at_eps_zero_is_the_clean_point() -> None:
    """eps 0 (an epsilon curve's clean point) is a budget, not a bad step size."""
    fgsm = registry.create("fgsm", Budget("linf", 0.0))
    assert fgsm.step_size == 0.0
