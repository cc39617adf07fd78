"""Open LFW (or any LFW-shaped data set) from a folder or an archive, extracting it once.

``open_lfw`` accepts what users actually have: the official ``lfw-deepfunneled.tgz`` next to the
protocol files, an already-extracted ``lfw*/Person/...`` tree, or the archive path itself.
Archives are extracted safely and atomically into the cache, keyed by their content hash, so
every later call costs one folder scan (well under a second for LFW).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath, PureWindowsPath

from advface.data._atomic import atomic_open
from advface.data.download import LFW_FILES, LFW_REQUIRED, download_lfw, sha256_file
from advface.data.folder import IMAGE_SUFFIXES, Problem, scan_identity_folder
from advface.data.protocols import Pair, read_names, read_pairs, read_people
from advface.data.records import ImageRecord, lfw_key
from advface.errors import DataError
from advface.paths import default_cache_dir, default_data_dir

#: Archive names tried, in order, inside a data directory (then any other ``lfw*`` archive).
ARCHIVE_NAMES = ("lfw-deepfunneled.tgz", "lfw.tgz")
_ARCHIVE_GLOBS = ("lfw*.tgz", "lfw*.tar.gz", "lfw*.tar")
#: Extracted tree names tried, in order (then any other ``lfw*`` folder holding person folders).
TREE_NAMES = ("lfw-deepfunneled", "lfw")
MARKER = ".advface-complete.json"
CHECKSUM_FILE = "SHA256SUMS"
_PROTOCOL_FILES = tuple(n for n in LFW_REQUIRED if n.endswith(".txt"))
#: Files an LFW folder may hold next to its person folders (official files, their variants, our
#: checksum list and extraction marker): not images, and not problems either.
KNOWN_DATA_FILES = (*LFW_FILES, CHECKSUM_FILE, MARKER, "pairs*.txt", "people*.txt")
_STALE_TMP_SECONDS = 6 * 3600


# --------------------------------------------------------------------------- hashing


def cached_sha256(path: Path, cache_dir: Path) -> str:
    """SHA-256 of ``path``, remembered in ``cache_dir/hashes.json`` by (size, mtime) so a 100 MB
    archive is hashed once, not on every command."""
    path = Path(path).resolve()
    st = path.stat()
    index_path = Path(cache_dir) / "hashes.json"
    try:
        index = json.loads(index_path.read_text())
        if not isinstance(index, dict):
            index = {}
    except (OSError, ValueError):
        index = {}
    entry = index.get(str(path))
    if (isinstance(entry, dict) and entry.get("size") == st.st_size
            and entry.get("mtime_ns") == st.st_mtime_ns and isinstance(entry.get("sha256"), str)):
        return entry["sha256"]
    digest = sha256_file(path)
    index[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    with contextlib.suppress(OSError):  # a read-only cache only costs re-hashing next time
        _write_json_atomic(index_path, index)
    return digest


def _write_json_atomic(path: Path, obj: object) -> None:
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)


def read_checksums(path: Path) -> dict[str, str]:
    """Parse a ``sha256sum``-style file (``<hex>  <name>`` per line) as name -> hex digest."""
    sums: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        digest = parts[0].lower()
        if len(parts) != 2 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise DataError(
                f"line {lineno}: expected '<sha256 hex>  <file name>', got {line!r}",
                path=path, fix="restore the file or regenerate it with `sha256sum * > SHA256SUMS`",
            )
        # `sha256sum ./*` writes "./name": the same file as "name".
        sums[PurePosixPath(parts[1].strip().lstrip("*").replace("\\", "/")).as_posix()] = digest
    return sums


# --------------------------------------------------------------------------- layout


def _looks_like_image_root(folder: Path, probe: int = 20) -> bool:
    """True when some of the first ``probe`` sub-folders hold image files directly."""
    try:
        subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError:
        return False
    for sub in subdirs[:probe]:
        try:
            if any(f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() for f in sub.iterdir()):
                return True
        except OSError:
            continue
    return False


def _find_tree(folder: Path) -> Path | None:
    """An ``lfw*`` sub-folder laid out as ``Person/image`` (preferring deep-funneled)."""
    candidates = [folder / n for n in TREE_NAMES]
    candidates += sorted(p for p in folder.glob("lfw*") if p not in candidates)
    for cand in candidates:
        if cand.is_dir() and _looks_like_image_root(cand):
            return cand
    return None


def _find_archive(folder: Path) -> Path | None:
    for name in ARCHIVE_NAMES:
        if (folder / name).is_file():
            return folder / name
    for pattern in _ARCHIVE_GLOBS:
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if found:
            return found[0]
    return None


def _archive_stem(archive: Path) -> str:
    name = archive.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return archive.stem


# --------------------------------------------------------------------------- extraction


def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    """Why a member must not be extracted (checked before tarfile's own ``data`` filter)."""
    name = member.name
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "path escapes the extraction folder ('..')"
    if member.isdev() or member.isfifo():
        return "device or FIFO entry"
    if member.issym() or member.islnk():
        # LFW archives hold no links. Checking a link's target by its text is not enough (a
        # chain of links from the same archive can climb out while its text stays inside),
        # and tarfile's own filter has had bypasses of that kind (CVE-2025-4517): refuse all.
        return f"link entry ({member.linkname!r}); image archives need none"
    return None


def extract_archive(archive: Path, cache_dir: Path, digest: str) -> Path:
    """Extract ``archive`` once into ``cache_dir/extracted/<stem>-<sha12>`` and return its
    image root. Unsafe members are refused; extraction goes to a temporary folder renamed into
    place with a completion marker, so an interrupted run never leaves a half tree in use."""
    base = Path(cache_dir) / "extracted"
    final = base / f"{_archive_stem(archive)}-{digest[:12]}"
    marker = final / MARKER
    if marker.is_file():
        try:
            info = json.loads(marker.read_text())
            root = final / info["image_root"]
            if root.is_dir():
                return root
        except (OSError, ValueError, KeyError, TypeError):
            pass
    if final.exists():  # no valid marker: our own leftover, safe to redo
        shutil.rmtree(final, ignore_errors=True)
    base.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(base)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=base))
    try:
        n_files = _safe_extract(archive, tmp)
        root = _image_root_in(tmp, archive)
        (tmp / MARKER).write_text(json.dumps({
            "archive": archive.name, "sha256": digest, "files": n_files,
            "image_root": root.relative_to(tmp).as_posix(),
        }, indent=1))
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / MARKER).is_file():  # not a concurrent winner: a real failure
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info = json.loads((final / MARKER).read_text())
    return final / info["image_root"]


def _remove_stale_tmp(base: Path) -> None:
    now = time.time()
    for old in base.glob(".tmp-*"):
        try:
            if now - old.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            continue


def _safe_extract(archive: Path, dest: Path) -> int:
    redownload = (
        "delete it and download the archive again (official LFW: lfw-deepfunneled.tgz, "
        f"sha256 {LFW_FILES['lfw-deepfunneled.tgz'].sha256})"
    )
    n_files = 0

    def check(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        nonlocal n_files
        reason = _unsafe_reason(member)
        if reason is None:
            try:
                member = tarfile.data_filter(member, path)
            except tarfile.FilterError as err:
                reason = str(err)
        if reason is not None:
            raise DataError(
                f"archive member {member.name!r} is unsafe ({reason}); refusing to extract",
                path=archive, fix=f"this is not a trustworthy LFW archive: {redownload}",
            )
        n_files += member.isfile()
        return member

    try:
        with tarfile.open(archive, mode="r:*") as tf:
            tf.extractall(dest, filter=check)
    except DataError:
        raise
    except OSError as err:
        if getattr(err, "errno", None) == 28:  # ENOSPC
            raise DataError(
                f"no space left while extracting into {dest.parent}", path=archive,
                fix="free disk space or point $ADVFACE_CACHE / --cache to a larger disk",
            ) from err
        raise DataError(
            f"cannot read archive {archive.name} ({err})", path=archive,
            fix=f"the archive is corrupt, truncated or not a tar file: {redownload}",
        ) from err
    except (tarfile.TarError, EOFError, zlib.error, ValueError) as err:
        raise DataError(
            f"cannot read archive {archive.name} ({type(err).__name__}: {err})", path=archive,
            fix=f"the archive is corrupt, truncated or not a tar file: {redownload}",
        ) from err
    if n_files == 0:
        raise DataError(
            f"archive {archive.name} contains no files", path=archive,
            fix=f"the archive is empty or truncated: {redownload}",
        )
    return n_files


def _image_root_in(extracted: Path, archive: Path) -> Path:
    """The folder of person folders inside an extracted archive."""
    tree = _find_tree(extracted)
    if tree is not None:
        return tree
    dirs = [p for p in extracted.iterdir() if p.is_dir()]
    if len(dirs) == 1 and _looks_like_image_root(dirs[0]):
        return dirs[0]
    if _looks_like_image_root(extracted):
        return extracted
    raise DataError(
        f"archive {archive.name} does not contain an LFW-shaped tree "
        "(a folder of <Person_Name>/<image>.jpg folders)",
        path=archive,
        fix="use the official lfw-deepfunneled.tgz (or lfw.tgz), or an archive of your own data "
        "with one folder per person",
    )


# --------------------------------------------------------------------------- reports


@dataclass
class ValidationReport:
    """How the images found compare with ``lfw-names.txt`` (who and how many there should be).

    A plain identity folder has no name list: then ``expected_*`` are None and only the folder
    itself (stray files, empty or nested folders, unreadable images) is checked.
    """

    names_file: Path
    expected_people: int | None
    expected_images: int | None
    found_people: int
    found_images: int
    missing_people: list[str] = field(default_factory=list)
    extra_people: list[str] = field(default_factory=list)
    missing_images: list[str] = field(default_factory=list)
    extra_images: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing_people or self.extra_people or self.missing_images
                    or self.extra_images or self.problems)

    @property
    def names_checked(self) -> bool:
        """False for a plain identity folder: it has no LFW name list to compare with."""
        return self.expected_people is not None and self.expected_images is not None

    def _head(self) -> str:
        if self.expected_people is None or self.expected_images is None:
            return (f"{self.found_people:,} people, {self.found_images:,} images; LFW name list "
                    f"not checked: {self.names_file.parent} has no {self.names_file.name}")
        return (f"{self.found_people:,}/{self.expected_people:,} people, "
                f"{self.found_images:,}/{self.expected_images:,} images vs {self.names_file.name}")

    def summary(self) -> str:
        """One line for `advface data info`."""
        head = self._head()
        if self.ok:
            return f"OK ({head})"
        bits = [f"{len(v):,} {k}" for k, v in (
            ("missing people", self.missing_people), ("extra people", self.extra_people),
            ("missing images", self.missing_images), ("extra images", self.extra_images),
            ("problems", self.problems)) if v]
        return f"NOT OK ({head}; {', '.join(bits)})"

    def lines(self) -> list[str]:
        """The full report, one finding per line."""
        out = [f"validation: {self.summary()}"]
        for title, items in (("missing people", self.missing_people),
                             ("extra people (not in names file)", self.extra_people),
                             ("missing images", self.missing_images),
                             ("extra images (not in names file)", self.extra_images)):
            if items:
                out.append(f"{title} ({len(items):,}):")
                out += [f"  {x}" for x in items]
        if self.problems:
            out.append(f"problems ({len(self.problems):,}):")
            out += [f"  {p}" for p in self.problems]
        return out


@dataclass(frozen=True)
class ChecksumEntry:
    """One file's expected and actual SHA-256 (``actual`` is None when the file is absent)."""

    name: str
    expected: str
    actual: str | None

    @property
    def ok(self) -> bool:
        return self.actual == self.expected


@dataclass
class ChecksumReport:
    """Result of :meth:`LFW.verify_checksums`; ``source`` is the SHA256SUMS file or None when
    the built-in official checksums were used."""

    source: Path | None
    entries: list[ChecksumEntry]

    @property
    def mismatched(self) -> list[ChecksumEntry]:
        return [e for e in self.entries if e.actual is not None and not e.ok]

    @property
    def missing(self) -> list[ChecksumEntry]:
        return [e for e in self.entries if e.actual is None]

    @property
    def ok(self) -> bool:
        """No present file differs from its published checksum (absent files are not errors:
        an extracted tree needs no archive)."""
        return not self.mismatched

    def lines(self) -> list[str]:
        src = self.source if self.source is not None else "built-in LFW checksums"
        out = [f"checksums ({src}): {'OK' if self.ok else 'MISMATCH'}"]
        for e in self.entries:
            state = "missing" if e.actual is None else ("ok" if e.ok else "MISMATCH")
            out.append(f"  {e.name}: {state}")
        return out


# --------------------------------------------------------------------------- the data set


@dataclass
class LFW:
    """An opened LFW-shaped data set: images (records) plus protocol files."""

    image_root: Path
    records: list[ImageRecord]
    protocol_dir: Path
    problems: list[Problem]
    cache_dir: Path
    archive: Path | None = None

    @cached_property
    def by_key(self) -> dict[str, ImageRecord]:
        return {r.key: r for r in self.records}

    def identities(self) -> list[str]:
        """Sorted names of the people with at least one image."""
        return sorted({r.identity for r in self.records})

    def path(self, key: str) -> Path:
        """File of an image key; an unknown key is a DataError (e.g. a split from other data)."""
        try:
            return self.by_key[key].path
        except KeyError:
            raise DataError(
                f"image {key!r} is not in this data set", path=self.image_root,
                fix="use the data set the split/pairs were made from, or re-extract it",
            ) from None

    def _protocol(self, name: str) -> Path:
        path = self.protocol_dir / name
        if not path.is_file():
            raise DataError(
                f"protocol file {name} not found", path=path,
                fix=f"place the LFW file {name} in {self.protocol_dir} "
                "(or run `advface data download`)",
            )
        return path

    def _check_pairs(self, pairs: list[Pair], source: Path) -> list[Pair]:
        missing = sorted({k for p in pairs for k in (p.key_a, p.key_b) if k not in self.by_key})
        if missing:
            raise DataError(
                f"{len(missing)} image(s) used by {source.name} are not in {self.image_root}: "
                + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""),
                path=source,
                fix="re-extract or re-download the images (`advface data validate` lists what is "
                "missing), or use the pairs file that belongs to this data set",
            )
        return pairs

    def pairs(self) -> list[Pair]:
        """The 10-fold verification pairs of ``pairs.txt``; every image must exist."""
        path = self._protocol("pairs.txt")
        return self._check_pairs(read_pairs(path), path)

    def dev_pairs(self, which: str = "train") -> list[Pair]:
        """View 1 pairs: ``pairsDevTrain.txt`` or ``pairsDevTest.txt`` (one fold, number 0)."""
        if which not in ("train", "test"):
            raise ValueError(f"which must be 'train' or 'test', got {which!r}")
        path = self._protocol(f"pairsDev{which.capitalize()}.txt")
        return self._check_pairs(read_pairs(path), path)

    def people(self) -> list[list[tuple[str, int]]]:
        """The 10 person-disjoint folds of ``people.txt`` as (name, image count) lists."""
        return read_people(self._protocol("people.txt"))

    def dev_people(self, which: str = "train") -> list[tuple[str, int]]:
        """View 1 people: ``peopleDevTrain.txt`` or ``peopleDevTest.txt``."""
        if which not in ("train", "test"):
            raise ValueError(f"which must be 'train' or 'test', got {which!r}")
        return read_people(self._protocol(f"peopleDev{which.capitalize()}.txt"))[0]

    def names(self) -> dict[str, int]:
        """``lfw-names.txt``: every person and how many images they should have."""
        return read_names(self._protocol("lfw-names.txt"))

    def has_protocol_files(self) -> bool:
        """Whether ``protocol_dir`` holds any LFW protocol file: an LFW copy (which must then
        be complete), not a plain folder of the user's own people."""
        return any((self.protocol_dir / name).is_file() for name in _PROTOCOL_FILES)

    def has_checksummed_files(self) -> bool:
        """Whether there is anything to check checksums of: a SHA256SUMS or an official file."""
        return any((self.protocol_dir / name).is_file() for name in (CHECKSUM_FILE, *LFW_FILES))

    def validate(self) -> ValidationReport:
        """Compare the images found with ``lfw-names.txt`` (LFW: 5,749 people, 13,233 images).

        A plain identity folder (no protocol file at all) works wherever LFW does, so it is not
        an error: its report lists the folder's problems and says the name list went unchecked.
        """
        if not self.has_protocol_files():
            return ValidationReport(
                names_file=self.protocol_dir / "lfw-names.txt", expected_people=None,
                expected_images=None, found_people=len(self.identities()),
                found_images=len(self.records), problems=list(self.problems))
        names_file = self._protocol("lfw-names.txt")
        names = read_names(names_file)
        expected = {lfw_key(n, i) for n, c in names.items() for i in range(1, c + 1)}
        found_people = set(self.identities())
        found = set(self.by_key)
        return ValidationReport(
            names_file=names_file,
            expected_people=len(names),
            expected_images=len(expected),
            found_people=len(found_people),
            found_images=len(found),
            missing_people=sorted(set(names) - found_people),
            extra_people=sorted(found_people - set(names)),
            missing_images=sorted(k for k in expected - found
                                  if k.split("/", 1)[0] in found_people),
            extra_images=sorted(k for k in found - expected if k.split("/", 1)[0] in names),
            problems=list(self.problems),
        )

    def verify_checksums(self) -> ChecksumReport:
        """Check files in ``protocol_dir`` against its ``SHA256SUMS`` (or, when that is absent,
        the official checksums in :data:`LFW_FILES`)."""
        sums_file = self.protocol_dir / CHECKSUM_FILE
        if sums_file.is_file():
            expected, source = read_checksums(sums_file), sums_file
        else:
            expected, source = {n: f.sha256 for n, f in LFW_FILES.items()}, None
        entries = []
        for name, digest in sorted(expected.items()):
            path = self.protocol_dir / name
            actual = cached_sha256(path, self.cache_dir) if path.is_file() else None
            entries.append(ChecksumEntry(name, digest, actual))
        return ChecksumReport(source, entries)


def holds_images(folder: Path) -> bool:
    """Whether :func:`open_lfw` finds images in ``folder``: an ``lfw*`` tree or archive, or
    person sub-folders holding images."""
    folder = Path(folder)
    return (_find_tree(folder) is not None or _find_archive(folder) is not None
            or _looks_like_image_root(folder))


def open_lfw(
    data_dir: Path | str | None = None,
    cache_dir: Path | str | None = None,
    *,
    download: bool = False,
    verify_images: bool = False,
) -> LFW:
    """Open LFW from a folder (extracted tree or archive inside) or an archive path.

    ``data_dir`` defaults to :func:`advface.paths.default_data_dir`, ``cache_dir`` to
    :func:`advface.paths.default_cache_dir`. With ``download``, missing official files are
    fetched into ``data_dir``. With ``verify_images`` every image is decoded and unreadable ones
    are moved from ``records`` to ``problems``.
    """
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    archive: Path | None = None
    tree: Path | None = None
    if data_dir.is_file():
        named = data_dir.name.lower().endswith((".tgz", ".tar.gz", ".tar"))
        if not named and not tarfile.is_tarfile(data_dir):
            # Not "corrupt archive: delete it": it may be pairs.txt or a user's own file.
            raise DataError(
                "not an image archive (a .tgz/.tar of <Person>/<image> folders)", path=data_dir,
                fix="pass the folder holding lfw-deepfunneled.tgz (or an extracted "
                "<Person>/<image> tree) as --data / $ADVFACE_DATA")
        archive, protocol_dir = data_dir, data_dir.parent
    elif data_dir.is_dir() or download:
        protocol_dir = data_dir
        if data_dir.is_dir():
            tree = _find_tree(data_dir)
            if tree is None:
                archive = _find_archive(data_dir)
            if tree is None and archive is None and _looks_like_image_root(data_dir):
                tree = data_dir
                here, parent = data_dir / "pairs.txt", data_dir.parent / "pairs.txt"
                if not here.is_file() and parent.is_file():
                    protocol_dir = data_dir.parent
        if download:
            wanted = [n for n in _PROTOCOL_FILES if not (protocol_dir / n).is_file()]
            if tree is None and archive is None:
                wanted.insert(0, "lfw-deepfunneled.tgz")
            if wanted:
                download_lfw(protocol_dir, wanted)
            if tree is None and archive is None:
                archive = protocol_dir / "lfw-deepfunneled.tgz"
        if tree is None and archive is None:
            raise DataError(
                "no LFW images found: neither an extracted lfw*/<Person>/ tree nor an lfw*.tgz "
                "archive",
                path=data_dir,
                fix="place lfw-deepfunneled.tgz and the protocol files "
                f"({', '.join(_PROTOCOL_FILES)}) in {data_dir}, point --data/$ADVFACE_DATA "
                "to the folder holding them, or run `advface data download`",
            )
    else:
        raise DataError(
            "data directory not found", path=data_dir,
            fix="pass --data (or set $ADVFACE_DATA) to the folder holding lfw-deepfunneled.tgz "
            "and the LFW protocol files",
        )
    if archive is not None:
        digest = cached_sha256(archive, cache_dir)
        sums_file = archive.parent / CHECKSUM_FILE
        if sums_file.is_file():
            listed = read_checksums(sums_file).get(archive.name)
            if listed is not None and listed != digest:
                raise DataError(
                    f"archive {archive.name} does not match {CHECKSUM_FILE} "
                    f"(sha256 {digest[:12]}..., expected {listed[:12]}...): truncated or corrupted",
                    path=archive,
                    fix="delete it and download it again (`advface data download`)",
                )
        tree = extract_archive(archive, cache_dir, digest)
    assert tree is not None
    scan = scan_identity_folder(tree, verify=verify_images, known_files=KNOWN_DATA_FILES)
    return LFW(image_root=tree, records=scan.records, protocol_dir=protocol_dir,
               problems=scan.problems, cache_dir=cache_dir, archive=archive)
