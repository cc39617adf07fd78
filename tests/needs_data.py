"""Skipping a test that needs the real LFW archive, without letting CI skip it silently."""

from __future__ import annotations

import os

import pytest


def skip_without_lfw(reason: str) -> None:
    """Skip, or fail where the data must be there: CI sets ADVFACE_REQUIRE_DATA=1, so the
    dlib reference check and the real-chip tests never disappear from a green run."""
    if os.environ.get("ADVFACE_REQUIRE_DATA") == "1":
        pytest.fail(f"ADVFACE_REQUIRE_DATA=1 but {reason}")
    pytest.skip(f"{reason}; set ADVFACE_REQUIRE_DATA=1 to make this a failure")
