"""Readers for the LFW protocol files (pairs, people, names), strict about their format.

A silently mis-parsed pairs file would shift every fold of the verification benchmark, so any
line that does not match the documented format is an error naming the file and line.
Folds are numbered from 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from advface.data.records import lfw_key
from advface.errors import DataError

_FORMAT_FIX = (
    "restore the original file from the LFW distribution (see README.txt section 3 for the format)"
)


@dataclass(frozen=True)
class Pair:
    """A verification pair of image keys; ``same`` when both show one person; ``fold`` from 0."""

    key_a: str
    key_b: str
    same: bool
    fold: int


def _read_lines(path: Path) -> list[tuple[int, list[str]]]:
    """Non-empty lines as (1-based line number, whitespace-split fields)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"protocol file {path.name} not found",
            path=path,
            fix=f"place the LFW file {path.name} in {path.parent} "
            "(or open the data set with download=True / `advface data download`)",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path.name} is not a text file ({err})", path=path,
                        fix=_FORMAT_FIX) from err
    return [(i, line.split()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def _int(path: Path, lineno: int, value: str, what: str, minimum: int = 0) -> int:
    try:
        n = int(value)
    except ValueError:
        n = None
    if n is None or n < minimum:
        raise DataError(
            f"line {lineno}: expected {what} (an integer >= {minimum}), got {value!r}",
            path=path, fix=_FORMAT_FIX,
        )
    return n


def _bad_line(path: Path, lineno: int, fields: list[str], expected: str) -> DataError:
    return DataError(
        f"line {lineno}: expected '{expected}', got {' '.join(fields)!r}",
        path=path, fix=_FORMAT_FIX,
    )


def read_pairs(path: str | Path) -> list[Pair]:
    """Read ``pairs.txt`` (header ``<folds> <n>``) or a dev file (header ``<n>``, one fold).

    Each fold holds ``n`` same-person lines ``name n1 n2`` then ``n`` different-person lines
    ``name1 n1 name2 n2``.
    """
    path = Path(path)
    lines = _read_lines(path)
    if not lines:
        raise DataError(f"{path.name} is empty", path=path, fix=_FORMAT_FIX)
    lineno, header = lines[0]
    if len(header) == 2:
        folds = _int(path, lineno, header[0], "the number of folds", 1)
        per = _int(path, lineno, header[1], "the number of pairs per fold")
    elif len(header) == 1:
        folds, per = 1, _int(path, lineno, header[0], "the number of pairs")
    else:
        raise _bad_line(path, lineno, header, "<folds> <pairs per fold>' or '<pairs>")
    body = lines[1:]
    expected = folds * 2 * per
    if len(body) != expected:
        raise DataError(
            f"header (line {lineno}) announces {folds} fold(s) x 2 x {per} = {expected} pairs, "
            f"but the file has {len(body)} pair lines",
            path=path, fix=_FORMAT_FIX,
        )
    pairs: list[Pair] = []
    for idx, (lineno, fields) in enumerate(body):
        fold, within = divmod(idx, 2 * per)
        if within < per:
            if len(fields) != 3:
                raise _bad_line(path, lineno, fields, "name n1 n2' (same-person pair")
            name = fields[0]
            a = _int(path, lineno, fields[1], "an image number", 1)
            b = _int(path, lineno, fields[2], "an image number", 1)
            pairs.append(Pair(lfw_key(name, a), lfw_key(name, b), True, fold))
        else:
            if len(fields) != 4:
                raise _bad_line(path, lineno, fields, "name1 n1 name2 n2' (different-person pair")
            a = _int(path, lineno, fields[1], "an image number", 1)
            b = _int(path, lineno, fields[3], "an image number", 1)
            pairs.append(Pair(lfw_key(fields[0], a), lfw_key(fields[2], b), False, fold))
    return pairs


def _person_line(path: Path, lineno: int, fields: list[str]) -> tuple[str, int]:
    if len(fields) != 2:
        raise _bad_line(path, lineno, fields, "name count")
    return fields[0], _int(path, lineno, fields[1], "an image count", 1)


def read_people(path: str | Path) -> list[list[tuple[str, int]]]:
    """Read ``people.txt`` (``<folds>`` then per fold ``<n>`` and ``n`` lines ``name count``) or a
    dev people file (``<n>`` then ``n`` lines: a single fold)."""
    path = Path(path)
    lines = _read_lines(path)
    if not lines:
        raise DataError(f"{path.name} is empty", path=path, fix=_FORMAT_FIX)
    lineno, header = lines[0]
    if len(header) != 1:
        raise _bad_line(path, lineno, header, "<number of folds or people>")
    first = _int(path, lineno, header[0], "a count")
    multi = len(lines) > 1 and len(lines[1][1]) == 1
    if not multi:  # dev file: header is the number of people
        body = lines[1:]
        if len(body) != first:
            raise DataError(
                f"header (line {lineno}) announces {first} people, the file lists {len(body)}",
                path=path, fix=_FORMAT_FIX,
            )
        return [[_person_line(path, n, f) for n, f in body]]
    folds: list[list[tuple[str, int]]] = []
    pos = 1
    for _ in range(first):
        if pos >= len(lines):
            raise DataError(
                f"header announces {first} folds but the file ends after {len(folds)}",
                path=path, fix=_FORMAT_FIX,
            )
        lineno, fields = lines[pos]
        if len(fields) != 1:
            raise _bad_line(path, lineno, fields, "<number of people in this fold>")
        n = _int(path, lineno, fields[0], "the number of people in this fold")
        block = lines[pos + 1 : pos + 1 + n]
        if len(block) != n:
            raise DataError(
                f"line {lineno}: fold announces {n} people but the file ends after {len(block)}",
                path=path, fix=_FORMAT_FIX,
            )
        folds.append([_person_line(path, ln, f) for ln, f in block])
        pos += 1 + n
    if pos != len(lines):
        lineno, fields = lines[pos]
        raise DataError(
            f"line {lineno}: unexpected content after the last fold: {' '.join(fields)!r}",
            path=path, fix=_FORMAT_FIX,
        )
    return folds


def read_names(path: str | Path) -> dict[str, int]:
    """Read ``lfw-names.txt`` (``name count`` per line) as name -> number of images."""
    path = Path(path)
    names: dict[str, int] = {}
    for lineno, fields in _read_lines(path):
        name, count = _person_line(path, lineno, fields)
        if name in names:
            raise DataError(f"line {lineno}: {name} is listed twice", path=path, fix=_FORMAT_FIX)
        names[name] = count
    if not names:
        raise DataError(f"{path.name} is empty", path=path, fix=_FORMAT_FIX)
    return names
