"""Checks of command-line options that more than one command shares."""

from __future__ import annotations

import typer


def positive_minutes(value: float | None) -> float | None:
    """--time-budget callback: 0 or less would read as 'no budget' (unlimited) and be saved
    into a run's config.yaml, which then no longer loads."""
    if value is not None and not 0 < value < float("inf"):
        raise typer.BadParameter(f"must be a positive number of minutes, got {value:g}")
    return value
