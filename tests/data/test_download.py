"""Resumable, verified downloads against a local HTTP server that supports Range requests."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from advface.data import download as dl
from advface.errors import DataError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, not trivially compressible into a wrong answer
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server:
    """Serves PAYLOAD at /file.bin; can cut the first N transfers short or ignore Range."""

    def __init__(self) -> None:
        self.cut_after: list[int] = []  # byte counts at which successive responses are cut
        self.honour_range = True
        self.ranges: list[str | None] = []
        self.payload = PAYLOAD
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path != "/file.bin":
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                data, start = outer.payload, 0
                if rng and outer.honour_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut_after:
                    body = body[: outer.cut_after.pop(0)]
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file.bin"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


def test_plain_download_verifies_checksum(server: _Server, tmp_path: Path) -> None:
    dest = dl.download(server.url, tmp_path / "f.bin", SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "f.bin.part").exists()
    assert server.ranges == [None]


def test_interrupted_transfer_resumes_on_next_call(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    server.cut_after = [300_000]
    with pytest.raises(DataError) as info:
        dl.download(server.url, dest, SHA, progress=False, retries=0)
    part = tmp_path / "f.bin.part"
    assert part.stat().st_size == 300_000 and not dest.exists()
    assert "interrupted" in info.value.message and "resumed" in (info.value.fix or "")
    dl.download(server.url, dest, SHA, progress=False, retries=0)
    assert server.ranges == [None, "bytes=300000-"]
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_interrupted_transfer_resumes_within_one_call(server: _Server, tmp_path: Path) -> None:
    server.cut_after = [100_000, 50_000]
    dest = dl.download(server.url, tmp_path / "f.bin", SHA, progress=False, retries=2)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges == [None, "bytes=100000-", "bytes=150000-"]


def test_server_ignoring_range_restarts_cleanly(server: _Server, tmp_path: Path) -> None:
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:1000])
    server.honour_range = False
    dest = dl.download(server.url, tmp_path / "f.bin", SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_file_is_finished_via_416(server: _Server, tmp_path: Path) -> None:
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    dest = dl.download(server.url, tmp_path / "f.bin", SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD and server.ranges == [f"bytes={len(PAYLOAD)}-"]


def test_checksum_mismatch_keeps_bad_file_aside(server: _Server, tmp_path: Path) -> None:
    server.payload = PAYLOAD[:-1] + b"X"
    dest = tmp_path / "f.bin"
    with pytest.raises(DataError, match="wrong checksum") as info:
        dl.download(server.url, dest, SHA, progress=False)
    assert not dest.exists() and not (tmp_path / "f.bin.part").exists()
    bad = tmp_path / "f.bin.bad"
    assert bad.read_bytes() == server.payload and info.value.path == bad
    assert str(dest) in (info.value.fix or "")


def test_existing_files(server: _Server, tmp_path: Path) -> None:
    good = tmp_path / "good.bin"
    good.write_bytes(PAYLOAD)
    assert dl.download(server.url, good, SHA, progress=False) == good
    assert server.ranges == []  # nothing fetched
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(b"user data")
    with pytest.raises(DataError, match="expected checksum"):
        dl.download(server.url, wrong, SHA, progress=False)
    assert wrong.read_bytes() == b"user data"  # never destroyed


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_says_where_to_put_the_file(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/lfw/pairs.txt"
    dest = tmp_path / "pairs.txt"
    with pytest.raises(DataError) as info:
        dl.download(url, dest, SHA, progress=False, retries=0, timeout=5)
    assert "cannot reach" in info.value.message
    assert str(dest) in (info.value.fix or "") and SHA in (info.value.fix or "")


def test_http_404_is_not_retried(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="HTTP 404"):
        dl.download(server.url.replace("file.bin", "nope"), tmp_path / "x", SHA,
                    progress=False, retries=3)


def test_download_lfw_reports_every_missing_file(tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{_closed_port()}/lfw/"
    with pytest.raises(DataError) as info:
        dl.download_lfw(tmp_path, ["pairs.txt", "people.txt"], base_url=base, progress=False,
                        retries=0, timeout=5)
    fix = info.value.fix or ""
    assert "2 LFW file(s)" in info.value.message and str(tmp_path) in fix
    assert dl.LFW_FILES["pairs.txt"].sha256 in fix and "people.txt" in fix


def test_lfw_table_matches_official_names() -> None:
    assert dl.LFW_URL_BASE == "http://vis-www.cs.umass.edu/lfw/"
    assert set(dl.LFW_REQUIRED) <= set(dl.LFW_FILES)
    for f in dl.LFW_FILES.values():
        assert f.url == dl.LFW_URL_BASE + f.name and len(f.sha256) == 64


def test_a_full_disk_is_named_as_such_not_as_the_server(server: _Server, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    class Full:
        def __init__(self, *args: object) -> None:
            self.calls = 0

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def write(self, chunk: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dl, "open", Full, raising=False)
    with pytest.raises(DataError, match=r"cannot write the download \(No space left") as info:
        dl.download(server.url, tmp_path / "file.bin", SHA, progress=False, retries=3)
    assert info.value.path == tmp_path / "file.bin.part" and "free disk space" in info.value.fix
    assert "cannot reach" not in info.value.message
