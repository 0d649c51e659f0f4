"""A minimal W3C WebDriver client over HTTP for Debian's chromium-driver: enough to open
pages in a real headless Chromium, with or without JavaScript, read what it shows, resize
the window and save screenshots. No selenium needed: the protocol is JSON over HTTP."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

CHROMIUM_PATHS = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")


def chromium_binary() -> str | None:
    for path in CHROMIUM_PATHS:
        if Path(path).is_file():
            return path
    return None


def driver_binary() -> str | None:
    return shutil.which("chromedriver")


class Browser:
    """One WebDriver session."""

    def __init__(self, base: str, session: str) -> None:
        self.base = f"{base}/session/{session}"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["value"]

    def open(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def source(self) -> str:
        return str(self._call("GET", "/source"))

    def run(self, script: str, *args: Any) -> Any:
        """Runs in the page through the driver (works with the page's JavaScript off)."""
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def texts(self, css: str) -> list[str]:
        """The visible texts of the elements `css` selects. A live page may swap its content
        between finding the elements and reading them (the driver answers 404, a stale
        element): then they are found again."""
        for attempt in range(10):
            found = self._call("POST", "/elements", {"using": "css selector", "value": css})
            try:
                return [
                    str(self._call("GET", f"/element/{next(iter(e.values()))}/text")) for e in found
                ]
            except urllib.error.HTTPError as err:
                if err.code != 404 or attempt == 9:
                    raise
                time.sleep(0.1)
        raise AssertionError("unreachable")

    def resize(self, width: int, height: int) -> None:
        self._call("POST", "/window/rect", {"width": width, "height": height})

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self._call("GET", "/screenshot")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def chromium(*, javascript: bool, width: int = 1280, height: int = 900) -> Iterator[Browser]:
    """A headless Chromium driven by chromedriver; JavaScript off by the content setting
    (as a user turns it off), which leaves the driver's own scripts working."""
    driver, binary = driver_binary(), chromium_binary()
    assert driver and binary
    port = _free_port()
    process = subprocess.Popen(
        [driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/status", timeout=5) as r:
                    if json.loads(r.read())["value"]["ready"]:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "chromedriver did not start"
            time.sleep(0.1)
        prefs = {} if javascript else {"profile.managed_default_content_settings.javascript": 2}
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": binary,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            f"--window-size={width},{height}",
                        ],
                        "prefs": prefs,
                    },
                }
            }
        }
        request = urllib.request.Request(
            base + "/session",
            data=json.dumps(caps).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            session = json.loads(response.read())["value"]["sessionId"]
        browser = Browser(base, session)
        try:
            yield browser
        finally:
            with suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                browser._call("DELETE", "")
    finally:
        process.terminate()
        process.wait(timeout=30)
