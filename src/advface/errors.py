"""One error type for everything a user can fix: it names the file and the fix.

The CLI prints these as a single clear message (no traceback); anything else is a bug.
"""

from __future__ import annotations

from pathlib import Path


class AdvfaceError(Exception):
    """A problem with the user's input, naming the offending file and how to fix it."""

    def __init__(self, message: str, *, path: str | Path | None = None, fix: str | None = None):
        self.message = message
        self.path = Path(path) if path is not None else None
        self.fix = fix
        super().__init__(self.__str__())

    def __str__(self) -> str:
        parts = [self.message]
        if self.path is not None:
            parts.append(f"  file: {self.path}")
        if self.fix:
            parts.append(f"  fix: {self.fix}")
        return "\n".join(parts)


class DataError(AdvfaceError):
    """Bad or missing data: images, archives, protocol files."""


class ConfigError(AdvfaceError):
    """A malformed or ill-typed configuration file."""


class CheckpointError(AdvfaceError):
    """A model file that is missing, corrupt, untrusted or not the expected network."""
