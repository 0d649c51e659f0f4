"""The daemon's dashboard in a real browser (headless Chromium, tests/integration/
webdriver.py): the charts are drawn and follow new traffic without a reload, the test form
sends a request and shows the answer, the endpoint page fits a phone. Skipped when Chromium
or its driver is absent. Screenshots are saved in the test's temporary folder."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from repo_builder import RepoBuilder
from ui_daemon_fixtures import (  # noqa: F401  (fixture: serve)
    KEY,
    Served,
    blue_green,
    serve_fixture,
    wait_for,
)
from webdriver import chromium, chromium_binary, driver_binary

pytestmark = pytest.mark.skipif(
    chromium_binary() is None or driver_binary() is None,
    reason="needs Debian's chromium and chromium-driver",
)


def test_charts_follow_traffic_without_a_reload_and_the_test_form_answers(
    repo: RepoBuilder, serve: Callable[..., Served], tmp_path: Path
) -> None:
    blue_green(repo)
    s = serve()
    s.router.metrics.observe("blue", "live", 200, 0.02)
    with chromium(javascript=True) as browser:
        wait_for(lambda: s.daemon.recorder.finished_at(), what="a pass")
        browser.open(s.base + "/endpoints/my-endpoint")
        wait_for(
            lambda: browser.run(
                "return document.querySelectorAll('section.charts svg circle').length"
            ),
            what="a chart with points",
        )

        def titles() -> list[str]:
            """The points' titles of blue's charts (read in the page: no stale elements)."""
            found = browser.run(
                "return Array.from(document.querySelectorAll("
                "\"section.charts[data-deployment='blue'] circle title\"))"
                ".map(t => t.textContent)"
            )
            return [str(t) for t in found]

        # A mark on this page: a reload would lose it.
        browser.run("window.notReloaded = true")
        s.router.traffic()
        wait_for(
            lambda: "p50 17.5" in titles(),
            what="the burst drawn",
        )
        assert browser.run("return window.notReloaded === true") is True
        browser.run("document.querySelector('section.charts').scrollIntoView()")
        browser.screenshot(tmp_path / "endpoint-live-1280.png")
        browser.resize(390, 844)
        time.sleep(0.3)
        assert browser.run("return document.documentElement.scrollWidth <= window.innerWidth")
        browser.run("document.querySelector('section.charts').scrollIntoView()")
        browser.screenshot(tmp_path / "endpoint-live-390.png")
        browser.resize(1280, 900)

        browser.run(
            "document.querySelector('.test-form input[name=key]').value = arguments[0];"
            "document.querySelector('.test-form select').value = 'green';"
            "document.querySelector('.test-form form').submit();",
            KEY,
        )
        answered = wait_for(
            lambda: browser.run(
                "const a = document.querySelector('.answered-by'); return a && a.textContent"
            ),
            what="the answer of the test form",
        )
        assert answered == "green"
        assert s.router.received[-1]["authorization"] == f"Bearer {KEY}"
        assert KEY not in browser.source()
        browser.screenshot(tmp_path / "test-form-answer.png")
