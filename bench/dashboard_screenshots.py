"""The README's dashboard screenshots (docs/dashboard-overview.png, docs/dashboard-endpoint.png),
made again from the code of this checkout: a repository in a temporary folder with two
endpoints (blue/green at 50/50 with a mirrored, autoscaled shadow; a single deployment) is
applied twice on the in-memory target, status written, then `reconcile ui`'s pages are shot
in headless Chromium 1280 pixels wide, each as tall as its content.

    .venv/bin/python bench/dashboard_screenshots.py [--out docs]

Needs Debian's chromium and chromium-driver. Not a benchmark: `make bench` does not run it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from repo_builder import RepoBuilder
from status_fixtures import apply_head
from webdriver import chromium, chromium_binary, driver_binary

from reconciler import logs
from reconciler.gitsource import DEFAULT_STATUS_BRANCH, GitSource
from reconciler.targets.memory import MemoryTarget
from reconciler.ui.server import UiOptions, start
from reconciler.ui.source import GitStatusSource

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _repository(root: Path, target: MemoryTarget) -> RepoBuilder:
    """Two commits, each applied: the timeline shows what the second moved."""
    repo = RepoBuilder(root)
    repo.basics()
    repo.model(version=2, weights="2")
    search = {
        "description": "Ranks search results; green runs the retrained model.",
        "tags": {"team": "search"},
    }
    repo.endpoint("my-endpoint", traffic={"blue": 90, "green": 10}, **search)
    repo.deployment("my-endpoint", "blue", instance_count=3)
    repo.deployment("my-endpoint", "green", model="azureml:sklearn-regression:2", instance_count=2)
    repo.endpoint("fraud-scoring", traffic={"main": 100})
    repo.deployment("fraud-scoring", "main")
    repo.commit("blue and green")
    apply_head(repo, target)
    repo.endpoint("my-endpoint", traffic={"blue": 50, "green": 50}, mirror={"shadow": 20}, **search)
    repo.deployment(
        "my-endpoint",
        "shadow",
        model="azureml:sklearn-regression:2",
        scale_settings={
            "type": "target_utilization",
            "min_instances": 1,
            "max_instances": 4,
            "target_utilization_percentage": 70,
        },
    )
    repo.commit("green to half the traffic; shadow mirrors 20%")
    apply_head(repo, target)
    return repo


def _shoot(base: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with chromium(javascript=True, width=1280, height=900) as browser:
        for path, name in (("/", "overview"), ("/endpoints/my-endpoint", "endpoint")):
            browser.open(base + path)
            browser.resize(1280, 300)  # scrollHeight is at least the window's: start small
            # The window's height is the page's plus what the window keeps for itself.
            height = int(
                browser.run(
                    "return document.documentElement.scrollHeight"
                    " + window.outerHeight - window.innerHeight"
                )
            )
            browser.resize(1280, height)
            browser.screenshot(out / f"dashboard-{name}.png")
            browser.resize(1280, 900)
            print(f"{out / f'dashboard-{name}.png'}: {base}{path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    if chromium_binary() is None or driver_binary() is None:
        raise SystemExit("needs Debian's chromium and chromium-driver")
    logs.configure(fmt="json", level="warning")
    with tempfile.TemporaryDirectory() as tmp:
        repo = _repository(Path(tmp) / "repo", MemoryTarget())
        source = GitStatusSource(GitSource(repo.root), branch=DEFAULT_STATUS_BRANCH)
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        box: dict[str, str] = {}

        def serve() -> None:
            asyncio.set_event_loop(loop)
            _, url = loop.run_until_complete(
                start(source, host="127.0.0.1", port=0, options=UiOptions())
            )
            box["url"] = url.rstrip("/")
            ready.set()
            loop.run_forever()

        threading.Thread(target=serve, daemon=True).start()
        assert ready.wait(30), "the dashboard did not start"
        _shoot(box["url"], args.out)
        loop.call_soon_threadsafe(loop.stop)


if __name__ == "__main__":
    main()
