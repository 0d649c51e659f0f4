"""The dashboard in a real browser: Debian's headless Chromium driven by chromium-driver
(WebDriver over HTTP, tests/integration/webdriver.py), against a served repository with a
status branch. Skipped when Chromium or its driver is absent (`apt-get install chromium
chromium-driver`). Screenshots are saved in the test's temporary folder."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from status_fixtures import apply_head
from ui_fixtures import (  # noqa: F401  (fixture: served_repo)
    XSS,
    Served,
    record_rollout,
    served_repo_fixture,
    serving,
)
from waiting import wait_for
from webdriver import Browser, chromium, chromium_binary, driver_binary

pytestmark = pytest.mark.skipif(
    chromium_binary() is None or driver_binary() is None,
    reason="needs Debian's chromium and chromium-driver",
)


def _no_horizontal_scroll(browser: Browser) -> bool:
    return bool(browser.run("return document.documentElement.scrollWidth <= window.innerWidth"))


def test_overview_and_endpoint_page_render_without_javascript(
    served_repo: Served, tmp_path: Path
) -> None:
    with serving(served_repo.repo.root) as base, chromium(javascript=False) as browser:
        browser.open(base + "/")
        assert browser.texts("article h2") == [
            "my-endpoint Succeeded Healthy",
            "other-endpoint Succeeded Healthy",
        ]
        assert browser.texts("article[data-endpoint='my-endpoint'] .legend li") == [
            "blue 50%",
            "green 50%",
        ]
        # Bars drawn by the stylesheet: the segments' widths are the percentages.
        widths = browser.run(
            "return Array.from(document.querySelectorAll("
            "\"article[data-endpoint='my-endpoint'] .bar .seg\"))"
            ".map(s => Math.round(100 * s.offsetWidth / s.parentNode.clientWidth))"
        )
        assert widths == [50, 50]
        # Without JavaScript the live badge never shows.
        assert browser.run("return document.getElementById('live').hidden") is True
        assert _no_horizontal_scroll(browser)  # 1280 wide as well as 390
        browser.screenshot(tmp_path / "overview-1280-nojs.png")
        browser.resize(390, 844)
        assert _no_horizontal_scroll(browser)
        browser.screenshot(tmp_path / "overview-390-nojs.png")

        browser.open(base + "/endpoints/my-endpoint")
        assert browser.texts(".description") == [XSS]  # shown as text, not run
        assert browser.run("return document.querySelectorAll('img[src=\"x\"]').length") == 0
        assert browser.texts(".deployment h3") == ["blue", "green"]
        assert len(browser.texts(".timeline .event")) == 2
        assert _no_horizontal_scroll(browser)
        browser.screenshot(tmp_path / "endpoint-390-nojs.png")
    assert (tmp_path / "overview-1280-nojs.png").stat().st_size > 5000


def test_overview_follows_a_traffic_commit_without_reload(
    served_repo: Served, tmp_path: Path
) -> None:
    repo = served_repo.repo
    with serving(repo.root, poll_s=0.2) as base, chromium(javascript=True) as browser:
        browser.open(base + "/")
        mine = "article[data-endpoint='my-endpoint'] .legend li"
        assert browser.texts(mine) == ["blue 50%", "green 50%"]
        wait_for(
            lambda: browser.run("return document.getElementById('live').hidden") is False,
            60,
            "the live marker shown",
            interval=0.2,
        )
        # A mark a reload would erase.
        browser.run("window.__notReloaded = true")
        repo.endpoint(
            "my-endpoint", traffic={"blue": 10, "green": 90}, description=XSS, tags={"team": XSS}
        )
        repo.commit("most traffic to green")
        apply_head(repo, served_repo.target)
        wait_for(
            lambda: browser.texts(mine) == ["blue 10%", "green 90%"],
            60,
            "the traffic commit on the page",
            interval=0.2,
        )
        assert browser.run("return window.__notReloaded === true") is True
        browser.screenshot(tmp_path / "overview-1280-live.png")


def test_a_page_refused_a_live_stream_gets_one_once_a_slot_frees(served_repo: Served) -> None:
    """The server caps its event streams (503 beyond the cap); a browser does not retry a
    refused EventSource on its own, so live.js does, and the page goes live later."""
    with (
        serving(served_repo.repo.root, max_streams=1) as base,
        urllib.request.urlopen(base + "/api/events", timeout=20) as held,
    ):
        assert held.readline().startswith(b"event: status")
        with chromium(javascript=True) as browser:
            browser.open(base + "/")
            time.sleep(1.0)
            assert browser.run("return document.getElementById('live').hidden") is True
            held.close()
            wait_for(
                lambda: browser.run("return document.getElementById('live').hidden") is False,
                30,
                "the live marker shown again",
                interval=0.2,
            )


def test_the_rollout_block_fits_a_phone(served_repo: Served, tmp_path: Path) -> None:
    """A rollout's reason and checks of any length wrap at 390 pixels wide."""
    record_rollout(served_repo.repo, "waiting " + "x" * 120)
    with serving(served_repo.repo.root) as base, chromium(javascript=False) as browser:
        browser.resize(390, 844)
        browser.open(base + "/endpoints/my-endpoint")
        assert browser.texts("section.rollout h2") == ["Rollout Progressing"]
        browser.run("document.querySelector('section.rollout').scrollIntoView()")
        browser.screenshot(tmp_path / "rollout-390.png")
        assert _no_horizontal_scroll(browser)
