"""A headless Chromium driven over the DevTools protocol on a pipe, with the standard library only.

``--remote-debugging-pipe`` makes Chromium read commands on file descriptor 3 and write
replies on 4, each a JSON message ended by a NUL byte; no port, no websocket, no package.

    with Chromium() as browser:
        browser.open(Path("page/index.html").resolve().as_uri())
        count = browser.evaluate("document.querySelectorAll('.result').length")
        browser.screenshot(Path("page.png"))
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# No network, no first-run or background work: the page is read from disk and nothing else happens.
FLAGS = (
    "--headless",
    "--no-sandbox",  # CI containers run as root, where the sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)


def find_chromium() -> str | None:
    """Path of an installed Chromium (or Chrome), or None."""
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


class Chromium:
    """One headless browser with a fresh profile and one page; use as a context manager."""

    def __init__(self, width: int = 1200, height: int = 900, timeout: float = 30.0) -> None:
        executable = find_chromium()
        if executable is None:
            raise FileNotFoundError("no chromium on the PATH")
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        commands_read, self._commands = os.pipe()  # we write commands; Chromium reads them on fd 3
        self._replies, replies_write = os.pipe()  # Chromium writes replies on fd 4; we read them

        def onto_three_and_four():
            # Move both ends above 4 first, so that neither dup2 overwrites the other's source.
            read_end = fcntl.fcntl(commands_read, fcntl.F_DUPFD, 10)
            write_end = fcntl.fcntl(replies_write, fcntl.F_DUPFD, 10)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        command = [executable, *FLAGS, f"--user-data-dir={self._profile}", f"--window-size={width},{height}"]
        self._process = subprocess.Popen(
            [*command, "about:blank"],
            preexec_fn=onto_three_and_four,
            pass_fds=(3, 4),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(commands_read)
        os.close(replies_write)
        self._buffer = b""
        self._last_id = 0
        try:
            page = next(t for t in self._call("Target.getTargets")["targetInfos"] if t["type"] == "page")
            attached = self._call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})
        except BaseException:
            self.close()
            raise
        self._session = attached["sessionId"]

    def _call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._last_id += 1
        message = {"id": self._last_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" not in self._buffer:
                readable, _, _ = select.select([self._replies], [], [], max(0.0, deadline - time.monotonic()))
                if not readable:
                    raise TimeoutError(f"chromium did not answer {method} within {self.timeout} s")
                chunk = os.read(self._replies, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"chromium exited (code {self._process.poll()}) during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._last_id:  # events and other sessions' messages are skipped
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises are awaited)."""
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        result = self._call("Runtime.evaluate", params, self._session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']['exception']['description']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        """Navigate and wait until the page has loaded (its scripts have run)."""
        self._call("Page.navigate", {"url": url}, self._session)
        loaded = f"location.href === {json.dumps(url)} && document.readyState === 'complete'"
        deadline = time.monotonic() + self.timeout
        while not self.evaluate(loaded):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not load within {self.timeout} s")
            time.sleep(0.05)

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        """Save the page as a PNG (the window, or the whole page when ``full_page``)."""
        params = {"format": "png", "captureBeyondViewport": full_page}
        path.write_bytes(base64.b64decode(self._call("Page.captureScreenshot", params, self._session)["data"]))
        return path

    def close(self) -> None:
        try:
            self._call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass  # already gone
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._commands)
        os.close(self._replies)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
