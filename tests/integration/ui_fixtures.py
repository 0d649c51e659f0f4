"""Shared by the dashboard's tests: a real git repository whose status branch real passes
(the in-memory target) wrote, the dashboard served from it in a thread on 127.0.0.1, and
an HTTP GET."""

from __future__ import annotations

import asyncio
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from repo_builder import RepoBuilder
from status_fixtures import apply_head

from reconciler.gitsource import DEFAULT_STATUS_BRANCH, GitSource
from reconciler.status import render_status
from reconciler.targets.memory import MemoryTarget
from reconciler.ui.server import UiOptions, start
from reconciler.ui.source import GitStatusSource

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'
TOKEN = "s3cret-dashboard-token"
CLI = [sys.executable, "-c", "from reconciler.cli import main; main()"]


@dataclass
class Served:
    repo: RepoBuilder
    target: MemoryTarget
    first: str
    second: str


@pytest.fixture(name="served_repo")
def served_repo_fixture(repo: RepoBuilder) -> Served:
    """Blue/green at 90/10 applied, then 50/50 applied: two status commits for my-endpoint;
    an XSS attempt in the endpoint's description, a tag and the second commit's message."""
    repo.basics()
    repo.model(version=2, weights="2")
    repo.endpoint(
        "my-endpoint", traffic={"blue": 90, "green": 10}, description=XSS, tags={"team": XSS}
    )
    repo.deployment("my-endpoint", "blue")
    repo.deployment("my-endpoint", "green", model="azureml:sklearn-regression:2", instance_count=2)
    repo.endpoint("other-endpoint", traffic={"main": 100})
    repo.deployment("other-endpoint", "main")
    first = repo.commit("blue and green")
    target = MemoryTarget()
    apply_head(repo, target)
    repo.endpoint(
        "my-endpoint", traffic={"blue": 50, "green": 50}, description=XSS, tags={"team": XSS}
    )
    second = repo.commit(f"move traffic {XSS}")
    apply_head(repo, target)
    return Served(repo, target, first, second)


def rollout_block(reason: str) -> dict[str, object]:
    """A `rollout:` block as reconciler.rollouter writes it (Verdict.as_json inside)."""
    return {
        "state": "Progressing",
        "stable": "blue",
        "canary": "green",
        "step": 2,
        "steps": 4,
        "step_spec": "traffic 50%",
        "mode": "commit",
        "reason": reason,
        "start_commit": "b" * 40,
        "last_commit": "c" * 40,
        "analysis": {
            "outcome": "wait",
            "reason": "too few requests",
            "elapsed_s": 42.5,
            "canary": {
                "deployment": "green",
                "kind": "live",
                "requests": 37,
                "errors": 1,
                "p99_ms": 18.25,
            },
            "stable": {
                "deployment": "blue",
                "kind": "live",
                "requests": 40,
                "errors": 0,
                "p99_ms": None,
            },
            "shadow": None,
            "checks": [
                {"threshold": "error_rate", "state": "ok", "text": "2.7% <= 5%"},
                {"threshold": "min_requests", "state": "too few requests", "text": reason},
            ],
        },
    }


def record_rollout(repo: RepoBuilder, reason: str) -> None:
    """A status commit that adds rollout_block(reason) to my-endpoint's status file."""
    source = GitSource(repo.root)
    files = dict(source.find_status(DEFAULT_STATUS_BRANCH, fetch=False).files)
    path = "status/my-endpoint.yaml"
    doc = yaml.safe_load(files[path])
    doc["rollout"] = rollout_block(reason)
    files[path] = render_status(doc)
    source.write_status(files, message="rollout step 2")


@contextmanager
def serving(
    root: Path, *, token: str | None = None, poll_s: float = 0.2, **options: Any
) -> Iterator[str]:
    """The dashboard of a checkout on 127.0.0.1 (any free port), in a thread of its own;
    `options`: more fields of UiOptions."""
    source = GitStatusSource(GitSource(root), branch=DEFAULT_STATUS_BRANCH)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, str] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner, url = loop.run_until_complete(
            start(
                source,
                host="127.0.0.1",
                port=0,
                options=UiOptions(token=token, poll_s=poll_s, **options),
            )
        )
        box["url"] = url
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(20)
    try:
        yield box["url"].rstrip("/")
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(20)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()
