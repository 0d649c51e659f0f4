"""A page's load time in a real browser: Debian's headless Chromium through chromium-driver
(tests/integration/webdriver.py), from the start of the navigation to the end of the load
event (the HTML, the stylesheet and the script fetched and run), as the browser's own
Navigation Timing reports it. Used by bench/ui.py and bench/ui_daemon.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from webdriver import chromium, chromium_binary, driver_binary

_LOAD_MS = (
    "const n = performance.getEntriesByType('navigation')[0];"
    "return n ? n.loadEventEnd - n.startTime : null;"
)


def missing() -> str | None:
    """Why no browser can be used here; None when one can."""
    if chromium_binary() is None or driver_binary() is None:
        return "needs Debian's chromium and chromium-driver"
    return None


def load_times(urls: list[str], repeat: int) -> dict[str, tuple[float, list[float]]]:
    """Per URL: the first load's milliseconds (nothing cached) and those of `repeat` later
    loads, in one browser with JavaScript on, 1280 pixels wide."""
    found: dict[str, tuple[float, list[float]]] = {}
    with chromium(javascript=True) as browser:
        for url in urls:
            times: list[float] = []
            for _ in range(repeat + 1):
                browser.open(url)
                value = browser.run(_LOAD_MS)
                assert isinstance(value, (int, float)) and value > 0, value
                times.append(float(value))
            found[url] = (times[0], times[1:])
    return found
