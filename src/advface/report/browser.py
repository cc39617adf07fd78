"""Open a report in headless Chromium and collect what a reader's browser would complain about.

Chromium is driven over the DevTools protocol on a *pipe* (`--remote-debugging-pipe`: file
descriptors 3 and 4, NUL-separated JSON messages), not over a websocket: nothing listens on a
port, no third-party client library is needed, and the events are exact rather than scraped from
logs. Collected: console errors (`console.error`/assert), uncaught exceptions, Log-domain errors
(failed resource loads, CSP violations), network requests that leave the file itself (a
self-contained report makes none), images that did not decode (`naturalWidth == 0`), and a
full-page screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advface.errors import AdvfaceError

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "chromium",
                       "chromium-browser", "google-chrome")

_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
    "--remote-debugging-pipe",
)

_BROKEN_IMAGES_JS = """
Array.from(document.images)
  .filter(i => !i.complete || i.naturalWidth === 0)
  .map(i => (i.alt || i.src).slice(0, 120))
"""


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None ($ADVFACE_CHROMIUM overrides the search)."""
    env = os.environ.get("ADVFACE_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for cand in CHROMIUM_CANDIDATES:
        found = shutil.which(cand) if "/" not in cand else (cand if Path(cand).is_file()
                                                            else None)
        if found:
            return found
    return None


@dataclass
class BrowserCheck:
    """What Chromium saw while loading a page."""

    url: str
    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    n_images: int = 0
    page_height: int = 0
    screenshot: Path | None = None

    @property
    def problems(self) -> list[str]:
        """Everything that should not happen on a self-contained report, one line each."""
        return ([f"console error: {m}" for m in self.console_errors]
                + [f"uncaught exception: {m}" for m in self.exceptions]
                + [f"browser log error: {m}" for m in self.log_errors]
                + [f"external request: {m}" for m in self.external_requests]
                + [f"broken image: {m}" for m in self.broken_images])

    @property
    def ok(self) -> bool:
        return not self.problems


class _Pipe:
    """The DevTools protocol over Chromium's pipe: send commands, collect events."""

    def __init__(self, proc: _Process, to_fd: int, from_fd: int, log: Path):
        self.proc, self.to_fd, self.from_fd, self.log = proc, to_fd, from_fd, log
        self.buf = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any] | None:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.from_fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(self.from_fd, 1 << 20)
            if not chunk:
                tail = self.log.read_text(errors="replace")[-1500:] if self.log.is_file() else ""
                raise AdvfaceError("Chromium closed the DevTools pipe (it crashed or exited); "
                                   f"its output ends with:\n{tail}")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self.to_fd, data):]
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply is None:
                raise AdvfaceError(f"Chromium did not answer {method} within {timeout:.0f} s")
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise AdvfaceError(f"Chromium refused {method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float) -> bool:
        """Collect events until `method` arrives (True) or the timeout passes (False)."""
        if any(e.get("method") == method for e in self.events):
            return True
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read_message(deadline)
            if msg is None:
                return False
            self.events.append(msg)
            if msg.get("method") == method:
                return True

    def drain(self, quiet: float) -> None:
        """Collect events until none arrives for `quiet` seconds (late errors, image decodes)."""
        while (msg := self._read_message(time.monotonic() + quiet)) is not None:
            self.events.append(msg)


def _high_fd(fd: int) -> int:
    """Move an fd to a number >= 10, so the dup2s onto 3 and 4 cannot clobber a source."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class _Process:
    """The Chromium child: its pid, and waiting for or ending exactly that process."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.wait(10)


def _launch(chromium: str, user_dir: Path, log: Path) -> tuple[_Process, int, int]:
    """Start Chromium with its DevTools pipe on fds 3 (commands in) and 4 (replies out).

    posix_spawn's file actions place the pipe ends on exactly fds 3 and 4 in the child, which
    subprocess cannot do (pass_fds keeps fd numbers as they are), with no shell in between.
    """
    cmd_r, cmd_w = (_high_fd(fd) for fd in os.pipe())
    res_r, res_w = (_high_fd(fd) for fd in os.pipe())
    log_fd = _high_fd(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    null_fd = _high_fd(os.open(os.devnull, os.O_RDONLY))
    args = [chromium, *_FLAGS, f"--user-data-dir={user_dir}", "about:blank"]
    try:
        pid = os.posix_spawn(chromium, args, os.environ, file_actions=[
            (os.POSIX_SPAWN_DUP2, null_fd, 0), (os.POSIX_SPAWN_DUP2, log_fd, 1),
            (os.POSIX_SPAWN_DUP2, log_fd, 2), (os.POSIX_SPAWN_DUP2, cmd_r, 3),
            (os.POSIX_SPAWN_DUP2, res_w, 4)])
    except OSError:
        for fd in (cmd_w, res_r):
            os.close(fd)
        raise
    finally:
        for fd in (cmd_r, res_w, log_fd, null_fd):
            os.close(fd)
    return _Process(pid), cmd_w, res_r


def check_page(html_path: str | Path, screenshot: str | Path | None = None,
               chromium: str | None = None, width: int = 1280, timeout: float = 60.0,
               ) -> BrowserCheck:
    """Load a local HTML file in headless Chromium; report errors and save a full-page PNG."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise AdvfaceError("Chromium not found",
                           fix="apt-get install -y chromium, or set ADVFACE_CHROMIUM")
    html_path = Path(html_path).resolve()
    url = html_path.as_uri()
    result = BrowserCheck(url=url)
    with tempfile.TemporaryDirectory(prefix="advface-chromium-") as tmp:
        log = Path(tmp) / "chromium.log"
        proc, to_fd, from_fd = _launch(chromium, Path(tmp) / "profile", log)
        pipe = _Pipe(proc, to_fd, from_fd, log)
        try:
            pipe.call("Browser.getVersion", timeout=timeout)
            target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.call("Target.attachToTarget",
                                {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Network", "Page"):
                pipe.call(f"{domain}.enable", session=session)
            pipe.call("Emulation.setDeviceMetricsOverride", {
                "width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                session=session)
            pipe.events.clear()
            pipe.call("Page.navigate", {"url": url}, session=session)
            if not pipe.wait_for("Page.loadEventFired", timeout):
                raise AdvfaceError(f"the page did not finish loading within {timeout:.0f} s",
                                   path=html_path)
            pipe.drain(0.5)
            value = pipe.call("Runtime.evaluate", {"expression": _BROKEN_IMAGES_JS,
                                                   "returnByValue": True}, session=session)
            result.broken_images = list(value.get("result", {}).get("value") or [])
            count = pipe.call("Runtime.evaluate", {"expression": "document.images.length",
                                                   "returnByValue": True}, session=session)
            result.n_images = int(count.get("result", {}).get("value") or 0)
            metrics = pipe.call("Page.getLayoutMetrics", session=session)
            size = metrics.get("cssContentSize") or metrics.get("contentSize") or {}
            result.page_height = int(size.get("height", 0))
            if screenshot is not None:
                shot = pipe.call("Page.captureScreenshot", {
                    "format": "png", "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": width,
                             "height": max(1, result.page_height), "scale": 1}},
                    session=session, timeout=timeout)
                path = Path(screenshot)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(base64.b64decode(shot["data"]))
                result.screenshot = path
            pipe.drain(0.2)
        finally:
            with contextlib.suppress(AdvfaceError, OSError):
                pipe.call("Browser.close", timeout=5)
            if not proc.wait(10):
                proc.kill()
            os.close(to_fd)
            os.close(from_fd)
    _collect(pipe.events, result)
    return result


def _collect(events: list[dict[str, Any]], result: BrowserCheck) -> None:
    for ev in events:
        method, params = ev.get("method"), ev.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in {"error", "assert"}:
            args = params.get("args", [])
            result.console_errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                                  for a in args))
        elif method == "Runtime.exceptionThrown":
            det = params.get("exceptionDetails", {})
            desc = (det.get("exception") or {}).get("description") or det.get("text", "")
            result.exceptions.append(str(desc))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                result.log_errors.append(f"{entry.get('text', '')} {entry.get('url', '')}"
                                         .strip())
        elif method == "Network.requestWillBeSent":
            req_url = params.get("request", {}).get("url", "")
            if not req_url.startswith("data:") and req_url != result.url:
                result.external_requests.append(req_url[:200])
