"""Shared fixtures: one fabricated run with its report, built once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from advface.report.build import ReportPaths, build_report
from advface.report.fixtures import make_fake_run


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete fabricated run directory. Tests must not modify it (make their own)."""
    return make_fake_run(tmp_path_factory.mktemp("run") / "run", seed=0)


@pytest.fixture
def fresh_run(fake_run: Path, tmp_path: Path) -> Path:
    """A private copy of `fake_run` (without its report) that a test may damage."""
    dest = tmp_path / "run"
    shutil.copytree(fake_run, dest, ignore=shutil.ignore_patterns("report"))
    return dest


@pytest.fixture(scope="session")
def built(fake_run: Path) -> ReportPaths:
    """The HTML report and figures of `fake_run` (the notebook is tested on its own)."""
    return build_report(fake_run, notebook=False)
