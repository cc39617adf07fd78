"""Aligned 150x150 chips for a whole data set, cached as lossless PNGs with a resumable index.

Aligning LFW takes minutes and every model, attack and report needs the same chips, so they are
computed once per set of alignment parameters (the *chipset*) and shared:

``cache_dir/chips/<chipset_id>/``
    ``params.json``     the :class:`AlignParams` the chips were made with
    ``index.jsonl``     one JSON line per finished chip, appended and flushed as chips finish
    ``problems.jsonl``  source images that could not be read (with the fix); a build re-judges
                        the records it is given and keeps the others' entries
    ``<key>.png``       the chip of record ``key`` (its suffix replaced by ``.png``)

A chip file is written atomically *before* its index line, so an index line always points at a
complete PNG; killing a build loses at most the chips in flight, and a rerun skips every key
already in the index. Concurrent builders of one chipset take turns (a file lock). The chipset
id hashes the alignment parameters and version, so changing either starts a separate cache
instead of mixing chips. Chips are keyed by the record key, which two data sets can share
(deep-funneled and original LFW, a user's folder reusing LFW names, an image replaced in place):
the index records each source's size, mtime and sha256, and every build checks the sources it is
given against them (a ``stat`` per file; the hash only when the mtime moved), re-aligning the
images whose content changed (:attr:`ChipIndex.replaced`) instead of handing back another
image's chip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from advface.align.dlib_align import AlignParams, DlibAligner
from advface.data._atomic import atomic_open
from advface.data.images import load_rgb, save_png
from advface.data.records import ImageRecord
from advface.errors import DataError

INDEX_NAME = "index.jsonl"
PROBLEMS_NAME = "problems.jsonl"
PARAMS_NAME = "params.json"


def chipset_id(params: AlignParams) -> str:
    """Short stable hash of the alignment parameters (version string included)."""
    blob = json.dumps(params.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def chip_relpath(key: str) -> str:
    """Where a key's chip lives inside the chipset folder: the key with a ``.png`` suffix."""
    p = Path(key)
    if p.is_absolute() or ".." in p.parts:
        raise DataError(
            f"record key {key!r} is not a relative path inside the data set",
            fix="keys must look like Identity_Name/Identity_Name_0001.jpg",
        )
    return p.with_suffix(".png").as_posix()


def chipset_dir(cache_dir: str | Path, params: AlignParams) -> Path:
    """Folder holding one chipset's PNGs and index."""
    return Path(cache_dir) / "chips" / chipset_id(params)


@dataclass(frozen=True)
class ChipProblem:
    """A source image that produced no chip, why, and what to do about it."""

    key: str
    path: str
    reason: str
    fix: str

    def __str__(self) -> str:
        return f"{self.key} ({self.path}): {self.reason} (fix: {self.fix})"


@dataclass
class ChipIndex:
    """The finished chips of one chipset: metadata per key and loaders for the pixels."""

    root: Path
    params: AlignParams
    entries: dict[str, dict[str, Any]]
    problems: list[ChipProblem] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    """Keys re-aligned by the build that returned this index because their source changed."""

    @property
    def chipset_id(self) -> str:
        return chipset_id(self.params)

    @property
    def keys(self) -> list[str]:
        """Keys with a chip, sorted (a stable order for caches and reports)."""
        return sorted(self.entries)

    @property
    def methods(self) -> dict[str, str]:
        """``key -> "dlib" | "dlib-cnn" | "fallback"``."""
        return {k: e["method"] for k, e in self.entries.items()}

    def replaced_note(self) -> str | None:
        """The line to tell the user when this build re-aligned images, else None."""
        if not self.replaced:
            return None
        return (f"re-aligned {len(self.replaced):,} image(s) whose file is not the one their "
                f"cached chip was made from (e.g. {self.replaced[0]}); give each data set its "
                "own cache to keep both")

    def content_id(self, key: str) -> str:
        """What a key's chip was made from (its source's sha256): caches of anything computed
        from chips key their rows by it, so a re-aligned image never meets a stale row."""
        entry = self.entries.get(key)
        if entry is None:
            self.path(key)  # raises the "no aligned chip" error with its fix
        digest = entry.get("source_sha256") if entry else None
        if not isinstance(digest, str):
            digest = hashlib.sha256(self.path(key).read_bytes()).hexdigest()
        return digest[:16]

    def content_hash(self, keys: Iterable[str]) -> str:
        """One id for what a set of keys' images are (order-free): a run records it and refuses
        to continue, or to be reloaded, on other pixels under the same names."""
        pairs = [[k, self.content_id(k)] for k in sorted(set(keys))]
        return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]

    def missing_error(self, missing: list[str], root: Path, *, what: str = "images") -> DataError:
        """The error for keys without a chip: the first files with their full path and why
        they could not be read or aligned (a key with no recorded problem is named as is)."""
        why = {p.key: f"{Path(p.path).resolve()} ({p.reason})" for p in self.problems}
        shown = "; ".join(why.get(k, k) for k in sorted(missing)[:3])
        return DataError(f"{len(missing)} {what} could not be aligned or read: {shown}",
                         path=root, fix="replace or delete them (`advface data validate "
                         "--verify-images` lists all)")

    def ensure_images_of_run(self, keys: Iterable[str], recorded: str | None, *, path: Path,
                             fix: str, why: str = "") -> str:
        """``content_hash(keys)``, refusing it when a run recorded another one (``recorded``
        None: a run from before the hash, nothing to compare with)."""
        current = self.content_hash(keys)
        if recorded is not None and recorded != current:
            raise DataError("these are not the images this run was made on (same names, other "
                            f"pixels){why}", path=path, fix=fix)
        return current

    @property
    def fallback_count(self) -> int:
        """How many chips are the fixed fallback crop because dlib found no face."""
        return sum(1 for e in self.entries.values() if e["method"] == "fallback")

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def path(self, key: str) -> Path:
        """PNG file of a key's chip; unknown keys are an error that says how to make them."""
        if key not in self.entries:
            raise DataError(
                f"no aligned chip for {key!r} in chipset {self.chipset_id}",
                path=self.root,
                fix="run `advface model align` on the data set containing this image",
            )
        return self.root / chip_relpath(key)

    def load_uint8(self, keys: Sequence[str]) -> np.ndarray:
        """Chips exactly as stored: uint8 ``(N, size, size, 3)`` RGB."""
        size = self.params.size
        out = np.empty((len(keys), size, size, 3), dtype=np.uint8)
        for i, key in enumerate(keys):
            arr = load_rgb(self.path(key))
            if arr.shape != (size, size, 3):
                raise DataError(
                    f"chip has shape {arr.shape}, expected {(size, size, 3)}",
                    path=self.path(key),
                    fix="delete the file and its line in index.jsonl, then rerun the alignment",
                )
            out[i] = arr
        return out

    def load(self, keys: Sequence[str]) -> torch.Tensor:
        """Chips as float32 ``(N, 3, size, size)`` RGB in [0, 1] (the project image convention)."""
        arr = self.load_uint8(keys)
        return torch.from_numpy(arr).permute(0, 3, 1, 2).to(torch.float32).div_(255.0).contiguous()

    def subset(self, keys: Iterable[str]) -> ChipIndex:
        """The same chipset restricted to ``keys`` (those without a chip are left out)."""
        wanted = set(keys)
        return ChipIndex(
            root=self.root,
            params=self.params,
            entries={k: e for k, e in self.entries.items() if k in wanted},
            problems=[p for p in self.problems if p.key in wanted],
        )

    @classmethod
    def open(cls, cache_dir: str | Path, params: AlignParams | None = None) -> ChipIndex:
        """Read whatever chips a (possibly unfinished) build has left; computes nothing."""
        params = params or AlignParams()
        root = chipset_dir(cache_dir, params)
        entries = _read_index(root / INDEX_NAME, repair=False)
        entries = {k: e for k, e in entries.items() if (root / chip_relpath(k)).is_file()}
        return cls(root=root, params=params, entries=entries, problems=_read_problems(root))


def _read_index(path: Path, *, repair: bool) -> dict[str, dict[str, Any]]:
    """Entries of an index file; the last line of a killed run may be cut short.

    With ``repair`` a partial last line is cut off, so the next append starts on a fresh line.
    Later lines for a key win (a recomputed chip replaces the old entry).
    """
    if not path.is_file():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        data = data[:cut]
        if repair:
            with open(path, "r+b") as fh:
                fh.truncate(cut)
    entries: dict[str, dict[str, Any]] = {}
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a corrupt line: its key is simply recomputed
        if isinstance(entry, dict) and isinstance(entry.get("key"), str) and "method" in entry:
            entries[entry["key"]] = entry
    return entries


def _read_problems(root: Path) -> list[ChipProblem]:
    path = root / PROBLEMS_NAME
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(ChipProblem(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return out


# ---------------------------------------------------------------- worker side

_ALIGNER: DlibAligner | None = None
_ROOT: Path | None = None
_LOCK_FD: int | None = None  # the builder's lock, which forked workers must not keep alive


def _init_worker(params: AlignParams, root: str, pool_worker: bool = False) -> None:
    """Load the detector and landmark model once per process (about 0.1 s each)."""
    global _ALIGNER, _ROOT
    if pool_worker and _LOCK_FD is not None:
        # A forked worker shares the parent's lock; drop our reference so that an orphaned
        # worker (parent killed) cannot hold the chipset locked.
        with contextlib.suppress(OSError):
            os.close(_LOCK_FD)
    _ALIGNER = DlibAligner(params)
    _ROOT = Path(root)


def _align_one(job: tuple[str, str]) -> dict[str, Any]:
    """Align one source image and write its chip; returns the index entry or a problem."""
    key, src = job
    assert _ALIGNER is not None and _ROOT is not None, "worker not initialised"
    try:
        raw = Path(src).read_bytes()
        rgb = load_rgb(src)
    except (DataError, OSError) as err:
        reason = err.message if isinstance(err, DataError) else str(err)
        fix = (err.fix if isinstance(err, DataError) else None) or "check the file"
        return {"problem": {"key": key, "path": src, "reason": reason, "fix": fix}}
    try:
        result = _ALIGNER.align(rgb)
    except RuntimeError as err:  # dlib's own errors, e.g. an image it cannot process
        return {"problem": {"key": key, "path": src, "reason": f"dlib failed: {err}",
                            "fix": "inspect or replace the image"}}
    save_png(_ROOT / chip_relpath(key), result.chip)
    entry: dict[str, Any] = {"key": key, **result.meta()}
    entry.update(
        source_sha256=hashlib.sha256(raw).hexdigest(),
        source_bytes=len(raw),
        source_mtime_ns=_mtime_ns(src),
        source_width=int(rgb.shape[1]),
        source_height=int(rgb.shape[0]),
    )
    return entry


def _run_jobs(
    jobs: list[tuple[str, str]], params: AlignParams, root: Path, workers: int
) -> Iterator[dict[str, Any]]:
    if not jobs:
        return
    if workers <= 1 or len(jobs) <= 1:
        _init_worker(params, str(root))
        for job in jobs:
            yield _align_one(job)
        return
    # Load the models here first: a worker whose initializer fails is respawned forever by
    # Pool, so a missing model file must fail in the parent with a clear error instead.
    DlibAligner(params)
    # fork where available: workers never touch torch (PIL, numpy and dlib only), and spawn
    # would re-run the parent's __main__ (impossible for `python -` or notebooks).
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    chunk = max(1, min(16, len(jobs) // (workers * 8)))
    with ctx.Pool(workers, initializer=_init_worker, initargs=(params, str(root), True)) as pool:
        yield from pool.imap_unordered(_align_one, jobs, chunksize=chunk)


def build_chips(
    records: Iterable[ImageRecord],
    cache_dir: str | Path,
    *,
    size: int = 150,
    padding: float = 0.25,
    upsample: int = 1,
    second_detector: str = "none",
    workers: int = 2,
    progress: bool = True,
) -> ChipIndex:
    """Align every record (skipping chips already in the cache) and return their :class:`ChipIndex`.

    ``upsample`` is the HOG detector's pyramid upsampling: LFW faces are smallish, and 1 finds
    more of them at about 4x the cost of 0. ``second_detector="cnn"`` retries images without a
    usable HOG face with dlib's CNN detector (a separate chipset). Unreadable sources are listed in
    ``ChipIndex.problems`` (and ``problems.jsonl``), never silently dropped. The returned index
    covers exactly the requested records that have a chip.
    """
    params = AlignParams(size=size, padding=padding, upsample=upsample,
                         second_detector=second_detector)
    root = chipset_dir(cache_dir, params)
    root.mkdir(parents=True, exist_ok=True)
    params_path = root / PARAMS_NAME
    if not params_path.is_file():
        # A unique temporary name: two builders starting the same chipset must not collide.
        with atomic_open(params_path, "w") as fh:
            fh.write(json.dumps(params.to_dict(), indent=2, sort_keys=True) + "\n")

    wanted: dict[str, str] = {}
    chip_paths: dict[str, str] = {}
    for rec in records:
        rel = chip_relpath(rec.key)
        other = chip_paths.setdefault(rel, rec.key)
        if other != rec.key:
            raise DataError(
                f"records {other!r} and {rec.key!r} would share the chip file {rel}",
                fix="rename one of the two images (they differ only by extension)",
            )
        wanted[rec.key] = str(rec.path)

    with _build_lock(root, progress):
        index_path = root / INDEX_NAME
        done = _read_index(index_path, repair=True)
        done = {k: e for k, e in done.items() if (root / chip_relpath(k)).is_file()}
        replaced = _drop_changed_sources(done, wanted, index_path)
        jobs = sorted((k, p) for k, p in wanted.items() if k not in done)
        # Problems of other records stay listed; the requested ones are judged afresh.
        problems = {p.key: p for p in _read_problems(root) if p.key not in wanted}
        new_problems: list[ChipProblem] = []
        bar = tqdm(
            total=len(wanted),
            initial=len(wanted) - len(jobs),
            desc="align",
            unit="img",
            disable=not progress,
            dynamic_ncols=True,
        )
        try:
            with open(index_path, "a", encoding="utf-8") as index:
                jobs = _reuse_hog_chips(jobs, params, root, index, done, bar)
                for result in _run_jobs(jobs, params, root, workers):
                    if "problem" in result:
                        new_problems.append(ChipProblem(**result["problem"]))
                    else:
                        index.write(json.dumps(result, sort_keys=True) + "\n")
                        index.flush()
                        done[result["key"]] = result
                    bar.update(1)
        finally:
            bar.close()
            problems.update((p.key, p) for p in new_problems)
            _write_problems(root, list(problems.values()))
    chips = ChipIndex(root=root, params=params, entries=done, problems=list(problems.values()))
    out = chips.subset(wanted)
    out.replaced = replaced
    return out


def _mtime_ns(path: str | Path) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def source_matches(entry: dict[str, Any], path: str | Path) -> tuple[bool, bool]:
    """(is ``path`` still the image this chip was made from, was that settled by hashing).

    Size first, then the recorded mtime; only a moved mtime (a copied or re-extracted data
    set, an entry written before mtimes were recorded) costs reading and hashing the file.
    """
    try:
        st = os.stat(path)
    except OSError:
        return False, False
    if entry.get("source_bytes") != st.st_size:
        return False, False
    if entry.get("source_mtime_ns") == st.st_mtime_ns:
        return True, False
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return False, True
    return digest == entry.get("source_sha256"), True


def _drop_changed_sources(done: dict[str, dict[str, Any]], wanted: dict[str, str],
                          index_path: Path) -> list[str]:
    """Remove from ``done`` the wanted keys whose source is no longer the image their chip was
    made from (returned, sorted); sources confirmed by hash get their new mtime indexed."""
    changed: list[str] = []
    confirmed: list[dict[str, Any]] = []
    for key in sorted(set(wanted) & set(done)):
        same, hashed = source_matches(done[key], wanted[key])
        if not same:
            changed.append(key)
            del done[key]
            # Its index line stays (a later line wins); without the file it is not a chip.
            (index_path.parent / chip_relpath(key)).unlink(missing_ok=True)
        elif hashed:
            done[key] = {**done[key], "source_mtime_ns": _mtime_ns(wanted[key])}
            confirmed.append(done[key])
    if confirmed:
        with open(index_path, "a", encoding="utf-8") as index:
            index.writelines(json.dumps(e, sort_keys=True) + "\n" for e in confirmed)
    return changed


def _reuse_hog_chips(jobs: list[tuple[str, str]], params: AlignParams, root: Path,
                     index: Any, done: dict[str, dict[str, Any]], bar: Any
                     ) -> list[tuple[str, str]]:
    """Copy chips a second-detector chipset shares with its HOG-only sibling; return the rest.

    Where HOG found a usable face, the second detector never runs, so the chip is exactly the
    HOG-only chipset's (same size, padding, upsampling, centre rule and version). It is copied
    when that chipset has it and its recorded source still is the file now
    (:func:`source_matches`); everything else is aligned. Saves re-running HOG on all of LFW
    just to retry the ~70 images it misses.
    """
    if params.second_detector == "none" or not jobs:
        return jobs
    sibling = root.parent / chipset_id(dataclasses.replace(params, second_detector="none"))
    if not (sibling / INDEX_NAME).is_file():
        return jobs
    known = _read_index(sibling / INDEX_NAME, repair=False)
    rest = []
    for key, src in jobs:
        entry = known.get(key)
        chip = sibling / chip_relpath(key)
        if (entry is None or entry.get("method") != "dlib" or not chip.is_file()
                or not source_matches(entry, src)[0]):
            rest.append((key, src))
            continue
        entry = {**entry, "source_mtime_ns": _mtime_ns(src)}
        target = root / chip_relpath(key)
        # Atomic like every other chip write: an index line of another data set may still
        # vouch for this path, so a half-copied file must never appear under it.
        with atomic_open(target, "wb") as fh, chip.open("rb") as src_fh:
            shutil.copyfileobj(src_fh, fh)
        index.write(json.dumps(entry, sort_keys=True) + "\n")
        done[key] = entry
        bar.update(1)
    index.flush()
    return rest


@contextlib.contextmanager
def _build_lock(root: Path, progress: bool) -> Iterator[None]:
    """One builder per chipset at a time (others wait, then find the work done).

    An advisory ``flock`` on ``.lock``: released by the OS if the holder is killed, so a crash
    never leaves a stale lock. Where ``fcntl`` is missing (Windows) builds are not serialised;
    they would still be correct, only duplicate work.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield
        return
    global _LOCK_FD
    with open(root / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                tqdm.write(f"waiting for another process aligning into {root} ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        _LOCK_FD = fh.fileno()
        try:
            yield
        finally:
            _LOCK_FD = None
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_problems(root: Path, problems: list[ChipProblem]) -> None:
    tmp = root / (PROBLEMS_NAME + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for p in sorted(problems, key=lambda p: p.key):
            fh.write(json.dumps(p.__dict__, sort_keys=True) + "\n")
    os.replace(tmp, root / PROBLEMS_NAME)
