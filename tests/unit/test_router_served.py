"""served.py: a router of several workers names a config only when every worker serves it."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.router.served import digest_document, forget_worker, report_served, served_by_all


def test_no_digest_is_named_until_every_worker_reported_the_same(tmp_path: Path) -> None:
    report_served("aaa", folder=tmp_path, pid=11)
    assert served_by_all(2, folder=tmp_path) == (None, ["aaa"])
    report_served("bbb", folder=tmp_path, pid=12)
    assert served_by_all(2, folder=tmp_path)[0] is None
    report_served("aaa", folder=tmp_path, pid=12)
    assert served_by_all(2, folder=tmp_path) == ("aaa", ["aaa", "aaa"])
    assert json.loads(digest_document(2, folder=tmp_path)) == {
        "digest": "aaa",
        "workers": ["aaa", "aaa"],
    }


def test_a_dead_workers_report_is_forgotten_and_leaves_no_file_behind(tmp_path: Path) -> None:
    report_served("aaa", folder=tmp_path, pid=11)
    report_served("old", folder=tmp_path, pid=12)
    forget_worker(12, folder=tmp_path)
    assert served_by_all(1, folder=tmp_path) == ("aaa", ["aaa"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["11"]
