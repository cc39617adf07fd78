"""Resumable, checksum-verified downloads of the LFW files (urllib only).

LFW is ~110 MB from a server that is often slow or down: a broken transfer resumes from its
``.part`` file (HTTP Range), and nothing is used until its SHA-256 matches the published value.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from advface.errors import DataError

#: Where the LFW authors historically published the files (UMass Amherst).
LFW_URL_BASE = "http://vis-www.cs.umass.edu/lfw/"
#: Environment variable naming a mirror to use instead of :data:`LFW_URL_BASE`.
LFW_URL_ENV = "ADVFACE_LFW_URL"

_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """A published file: its name, where it lives, and its expected SHA-256."""

    name: str
    url: str
    sha256: str


def _lfw_file(name: str, sha256: str) -> RemoteFile:
    return RemoteFile(name, LFW_URL_BASE + name, sha256)


#: The official LFW files (deep-funneled images + protocol files) and their SHA-256.
LFW_FILES: dict[str, RemoteFile] = {
    f.name: f
    for f in (
        _lfw_file("lfw-deepfunneled.tgz",
                  "7aab03b4f722d115ef746a2ce9bdbfeedd4ec51cbd97ec40fb39a907d121018c"),
        _lfw_file("pairs.txt", "ea42330c62c92989f9d7c03237ed5d591365e89b3e649747777b70e692dc1592"),
        _lfw_file("people.txt",
                  "bc8fa2b7f25c895cf7efb6de4f4fc27ca8b8d1cfa63350ad8b96eae2b198d365"),
        _lfw_file("pairsDevTrain.txt",
                  "1d454dada7dfeca0e7eab6f65dc4e97a6312d44cf142207be28d688be92aabfa"),
        _lfw_file("pairsDevTest.txt",
                  "7cb06600ea8b2814ac26e946201cdb304296262aad67d046a16a7ec85d0ff87c"),
        _lfw_file("peopleDevTrain.txt",
                  "2e58df13ba4cc143189336e001cc2c195f1dfa5b29a6475c02857be353c2a2fa"),
        _lfw_file("peopleDevTest.txt",
                  "c3ed1f90499473401542101a56c14c1d82396bb8218c67a356d7460601047555"),
        _lfw_file("lfw-names.txt",
                  "403cd39411ee297f99f69241959bd8f0496b44377711913a76ccdd8562874164"),
        _lfw_file("README.txt",
                  "34c6fba9b6d7303d65623d3a65457059ffe129ffc5c1ee27cd35762a155980b7"),
    )
}

#: Files :func:`advface.data.lfw.open_lfw` needs: images and the protocol files.
LFW_REQUIRED = (
    "lfw-deepfunneled.tgz", "pairs.txt", "people.txt", "pairsDevTrain.txt", "pairsDevTest.txt",
    "peopleDevTrain.txt", "peopleDevTest.txt", "lfw-names.txt",
)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks (archives do not fit comfortably in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _Interrupted(Exception):
    """A transfer stopped early; the .part file holds what arrived."""


class _LocalWriteError(Exception):
    """Writing the .part file failed on this machine (not a network problem)."""


def _fetch(url: str, part: Path, resume: bool, progress: bool, timeout: float) -> None:
    """One HTTP request appending to (or restarting) ``part``."""
    offset = part.stat().st_size if (resume and part.exists()) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "advface"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to send: the .part may be complete
            return
        raise
    with response:
        status = response.status
        if offset and status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                raise _Interrupted(f"server answered an unexpected range {content_range!r}")
            mode = "ab"
        else:  # full body (server ignores Range, or a fresh start)
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        total = offset + expected if expected is not None else None
        received = 0
        try:
            with open(part, mode) as fh, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, desc=part.name[:-5],
                disable=not progress, leave=False,
            ) as bar:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (http.client.HTTPException, OSError) as err:  # the network's side
                        raise _Interrupted(str(err) or type(err).__name__) from err
                    if not chunk:
                        break
                    fh.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except OSError as err:  # opening, writing or closing the .part: this machine's side
            raise _LocalWriteError(err) from err
        if expected is not None and received < expected:
            raise _Interrupted(f"connection closed after {received} of {expected} bytes")


def download(
    url: str,
    dest: str | Path,
    sha256: str,
    *,
    resume: bool = True,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` unless it is already there with the right checksum.

    Bytes go to ``dest + '.part'``; an interrupted transfer resumes from it with an HTTP Range
    request (up to ``retries`` times here, or on the next call). On success the checksum is
    verified and the file renamed into place. A checksum mismatch moves the download aside to
    ``dest + '.bad'`` and raises :class:`DataError`; so does an unreachable server, with
    instructions for placing the file by hand.
    """
    dest = Path(dest)
    sha256 = sha256.lower()
    if dest.exists():
        actual = sha256_file(dest)
        if actual == sha256:
            return dest
        raise DataError(
            f"existing {dest.name} does not have the expected checksum "
            f"(sha256 {actual[:12]}..., expected {sha256[:12]}...)",
            path=dest,
            fix=f"delete or rename it so it can be downloaded again from {url}",
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if not resume:
        part.unlink(missing_ok=True)
    last_error = ""
    for _attempt in range(retries + 1):
        try:
            _fetch(url, part, resume=True, progress=progress, timeout=timeout)
        except _LocalWriteError as err:
            # Disk full, file too large, read-only or forbidden: retrying or fetching "by
            # other means" into the same folder cannot help.
            cause = err.args[0]
            raise DataError(
                f"cannot write the download ({getattr(cause, 'strerror', None) or cause})",
                path=part, fix="free disk space or make the folder writable, or download into "
                "another folder (--data / $ADVFACE_DATA); a partial download is kept and "
                "resumes") from None
        except _Interrupted as err:
            last_error = f"transfer interrupted: {err}"
            continue
        except urllib.error.HTTPError as err:
            last_error = f"HTTP {err.code} {err.reason}"
            if 400 <= err.code < 500:
                break  # retrying will not help
            continue
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as err:
            reason = getattr(err, "reason", err)
            last_error = f"cannot reach the server ({reason})"
            continue
        return _finish(part, dest, sha256, url)
    raise DataError(
        f"could not download {dest.name} from {url}: {last_error}",
        path=dest,
        fix=f"download {url} by other means (or from a mirror) and place it at {dest}; "
        f"expected sha256 {sha256}"
        + (f". The partial download {part.name} is kept and will be resumed"
           if part.exists() and part.stat().st_size else ""),
    )


def _finish(part: Path, dest: Path, sha256: str, url: str) -> Path:
    actual = sha256_file(part) if part.exists() else hashlib.sha256(b"").hexdigest()
    if actual != sha256:
        bad = dest.with_name(dest.name + ".bad")
        if part.exists():
            os.replace(part, bad)
        raise DataError(
            f"downloaded {dest.name} has the wrong checksum (sha256 {actual}, expected {sha256})",
            path=bad,
            fix=f"the file was moved aside to {bad.name} and is not used; retry the download "
            f"or fetch {url} from a mirror and place it at {dest}",
        )
    os.replace(part, dest)
    return dest


def download_lfw(
    dest_dir: str | Path,
    names: Iterable[str] = LFW_REQUIRED,
    *,
    base_url: str | None = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
) -> list[Path]:
    """Fetch the named :data:`LFW_FILES` that are missing from ``dest_dir``.

    The base URL is ``base_url``, else ``$ADVFACE_LFW_URL``, else :data:`LFW_URL_BASE`. All files
    are attempted; failures are reported together in one :class:`DataError` listing exactly which
    files to place in ``dest_dir`` by hand.
    """
    dest_dir = Path(dest_dir)
    base = base_url or os.environ.get(LFW_URL_ENV) or LFW_URL_BASE
    if not base.endswith("/"):
        base += "/"
    paths: list[Path] = []
    failed: list[tuple[str, DataError]] = []
    for name in names:
        try:
            remote = LFW_FILES[name]
        except KeyError:
            raise ValueError(f"{name!r} is not an LFW file; known: {sorted(LFW_FILES)}") from None
        target = dest_dir / name
        try:
            paths.append(download(base + name, target, remote.sha256, progress=progress,
                                  retries=retries, timeout=timeout))
        except DataError as err:
            failed.append((name, err))
    if failed:
        listing = "; ".join(f"{name} (sha256 {LFW_FILES[name].sha256})" for name, _ in failed)
        first = failed[0][1].message
        raise DataError(
            f"could not download {len(failed)} LFW file(s): {first}",
            path=dest_dir,
            fix=f"place these files in {dest_dir}: {listing}. They are published at {base} "
            f"(set ${LFW_URL_ENV} to use a mirror)",
        )
    return paths
