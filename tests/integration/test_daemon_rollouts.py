"""Rollouts run by the daemon against real git: a bare origin in a temporary folder the daemon
fetches from and pushes its step commits to, and a person's clone of it.

The router's metrics come from a real HTTP server on loopback serving Prometheus text the
test controls (the router's own metrics code, fed on every scrape as traffic feeds it). The
target is the in-memory one (reconciler.targets.memory) with the HasRouterMetrics
capability added: it reads that server over a real socket, as the Docker
target reads its router's metrics port. What is under test is the daemon's orchestration
(start, windows, judgement, commits, status, control commits), not a platform.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from git_remote_fixtures import on_push_once, racing_push, remote_git
from repo_builder import RepoBuilder
from rollout_fixtures import MetricsServer, MetricsTarget
from waiting import wait_for

from reconciler.cli import main
from reconciler.daemon import Daemon, RemoteSource, WatchOptions
from reconciler.gitsource import DEFAULT_STATUS_BRANCH
from reconciler.rollouts.machine import read_mark

ENDPOINT = "my-endpoint"
ENDPOINT_FILE = f"endpoints/{ENDPOINT}/endpoint.yml"


def traffic_edit(frm: tuple[int, int], to: tuple[int, int]) -> Callable[[RepoBuilder], None]:
    """A person's edit of the endpoint file: blue/green shares `frm` become `to`."""

    def edit(clone: RepoBuilder) -> None:
        path = clone.root / ENDPOINT_FILE
        text = path.read_text()
        text = text.replace(f"blue: {frm[0]}", f"blue: {to[0]}")
        path.write_text(text.replace(f"green: {frm[1]}", f"green: {to[1]}"))

    return edit


ENDPOINT_TEXT = """\
$schema: https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json
name: my-endpoint
auth_mode: key
# blue serves v1; a rollout moves these numbers, commit by commit
traffic:
  blue: 100   # the stable deployment
"""


@dataclass
class Setup:
    repo: RepoBuilder
    remote: Path
    clone: RepoBuilder  # a person's clone of the remote
    metrics: MetricsServer
    target: MetricsTarget
    daemon: Daemon

    def remote_git(self, *args: str) -> str:
        return remote_git(self.remote, *args)

    def rollout_commits(self) -> list[tuple[str, str]]:
        """(commit, message) of the remote main's rollout commits, oldest first."""
        out = self.remote_git("log", "--reverse", "-z", "--format=%H%x1f%B", "main")
        found = []
        for entry in out.split("\0"):
            sha, _, message = entry.strip("\n").partition("\x1f")
            if read_mark(message) is not None:
                found.append((sha, message))
        return found

    def remote_file(self, path: str = ENDPOINT_FILE) -> str:
        return self.remote_git("show", f"main:{path}")

    def status(self) -> dict[str, object]:
        try:
            text = self.remote_git("show", f"{DEFAULT_STATUS_BRANCH}:status/{ENDPOINT}.yaml")
        except subprocess.CalledProcessError:
            return {}
        doc = yaml.safe_load(text)
        assert isinstance(doc, dict)
        return doc

    def rollout_state(self) -> object:
        block = self.status().get("rollout")
        return block.get("state") if isinstance(block, dict) else None

    def person_push(self, message: str, edit: Callable[[RepoBuilder], None]) -> str:
        self.clone.git("pull", "-q", "--rebase", "origin", "main")
        edit(self.clone)
        sha = self.clone.commit(message)
        self.clone.git("push", "-q", "origin", "main")
        self.daemon.trigger("push", fetch=True)  # what a webhook does
        return sha


def reconciler_yaml(
    steps: list[object],
    *,
    error_rate: float = 0.05,
    mode: str = "commit",
    shadow_agreement: float | None = None,
) -> str:
    return yaml.safe_dump(
        {
            "rollouts": {
                "default": {
                    "steps": steps,
                    "interval": "300ms",
                    "thresholds": {
                        "error_rate": error_rate,
                        "min_requests": 5,
                        "shadow_agreement": shadow_agreement,
                    },
                    "mode": mode,
                }
            }
        },
        sort_keys=False,
    )


@pytest.fixture
def setup(repo: RepoBuilder, tmp_path: Path) -> Iterator[Callable[..., Setup]]:
    made: list[tuple[Setup, threading.Thread]] = []

    def make(steps: list[object], **policy: object) -> Setup:
        repo.basics()
        repo.model(version=2, weights="2")
        repo.write(ENDPOINT_FILE, ENDPOINT_TEXT)
        repo.deployment(ENDPOINT, "blue")
        repo.write("reconciler.yaml", reconciler_yaml(steps, **policy))  # type: ignore[arg-type]
        repo.commit("blue serves all traffic")
        remote = tmp_path / "remote.git"
        subprocess.run(["git", "clone", "-q", "--bare", str(repo.root), str(remote)], check=True)
        clone_root = tmp_path / "person"
        subprocess.run(["git", "clone", "-q", str(remote), str(clone_root)], check=True)
        clone = RepoBuilder.__new__(RepoBuilder)
        clone.root = clone_root
        clone.git("config", "user.email", "person@example.com")
        clone.git("config", "user.name", "Person")
        clone.git("config", "commit.gpgsign", "false")
        metrics = MetricsServer()
        target = MetricsTarget(metrics_url=metrics.url)
        source = RemoteSource(str(remote), branch="main", cache_dir=tmp_path / "cache")
        daemon = Daemon(source, target, WatchOptions(interval_s=60.0, progress_interval_s=0.1))
        thread = threading.Thread(target=daemon.run, daemon=True)
        thread.start()
        s = Setup(repo, remote, clone, metrics, target, daemon)
        made.append((s, thread))
        wait_for(lambda: s.status().get("commit") is not None, what="the first status")
        return s

    yield make
    for s, thread in made:
        s.daemon.stop()
        thread.join(timeout=30)
        s.metrics.close()
        assert not thread.is_alive()


def add_green(clone: RepoBuilder) -> None:
    clone.deployment(ENDPOINT, "green", model="azureml:sklearn-regression:2")


def at_step_1(s: Setup) -> Setup:
    """A person's push of a new green starts the rollout; back once step 1 is committed."""
    s.person_push("green: model v2", add_green)
    wait_for(lambda: len(s.rollout_commits()) == 1, what="step 1")
    return s


def test_a_healthy_canary_is_promoted_step_by_step_to_100_by_commits_with_figures(
    setup: Callable[..., Setup],
) -> None:
    s = setup([{"mirror": 20, "for": "600ms"}, {"traffic": 50, "for": "600ms"}, 100])
    start = s.person_push("green: model v2", add_green)

    wait_for(lambda: s.rollout_state() == "Succeeded", what="the rollout to succeed")
    commits = s.rollout_commits()
    marks = [read_mark(message) for _, message in commits]
    assert [(m.step, m.total, m.rollback) for m in marks if m] == [
        (1, 3, False),
        (2, 3, False),
        (3, 3, False),
    ]
    assert all(m and (m.stable, m.canary) == ("blue", "green") for m in marks)
    subjects = [message.splitlines()[0] for _, message in commits]
    assert subjects == [
        "rollout my-endpoint: step 1/3, green gets 20% of mirrored traffic",
        "rollout my-endpoint: step 2/3, green gets 50% of live traffic",
        "rollout my-endpoint: step 3/3, green gets 100% of live traffic",
    ]
    # The first commit carries the schedule; the others the figures of the step passed.
    assert "Starts the rollout of green (new)" in commits[0][1]
    assert "Schedule: mirror 20% for 600ms" in commits[0][1]
    assert "Step 1/3 (mirror 20% for 600ms) passed" in commits[1][1]
    assert "green (mirror):" in commits[1][1] and "0 errors (0.00%)" in commits[1][1]
    assert "Step 2/3 (traffic 50% for 600ms) passed" in commits[2][1]
    assert "green (live):" in commits[2][1]
    # The daemon's identity; each step's commit follows the previous one on main.
    for sha, _ in commits:
        assert (
            s.remote_git("log", "-1", "--format=%an <%ae>", sha)
            == "reconciler <reconciler@localhost>"
        )
    assert s.remote_git("merge-base", "--is-ancestor", start, commits[0][0]) == ""
    # Only the numbers changed, the comments stayed.
    text = s.remote_file()
    assert "# blue serves v1; a rollout moves these numbers, commit by commit" in text
    assert re.search(r"\n  blue: 0 +# the stable deployment\n", text)
    doc = yaml.safe_load(text)
    assert doc["traffic"] == {"blue": 0, "green": 100}
    assert doc.get("mirror_traffic", {}).get("green", 0) == 0
    # Git and the target agree; status tells the rollout's end with its last figures.
    wait_for(
        lambda: s.target.snapshot().traffic_of(ENDPOINT) == (("green", 100),),
        what="the target to serve green",
    )
    block = s.status()["rollout"]
    assert isinstance(block, dict)
    assert block["state"] == "Succeeded" and block["step"] == 3 and block["steps"] == 3
    assert block["analysis"]["outcome"] == "pass"
    assert block["analysis"]["canary"]["requests"] >= 5


def test_a_canary_failing_its_error_rate_is_rolled_back_by_a_commit_and_not_restarted(
    setup: Callable[..., Setup],
) -> None:
    s = setup([{"traffic": 20, "for": "2s"}, 100])
    s.metrics.errors["green"] = 0.5
    s.person_push("green: model v2", add_green)

    wait_for(lambda: s.rollout_state() == "Failed", what="the rollback")
    commits = s.rollout_commits()
    marks = [read_mark(message) for _, message in commits]
    assert [(m.step, m.rollback) for m in marks if m] == [(1, False), (1, True)]
    rollback = commits[-1][1]
    assert rollback.splitlines()[0] == "rollout my-endpoint: roll back green, all traffic to blue"
    assert "Step 1/2 (traffic 20% for 2s) failed: error_rate 50.00% > 5.00%" in rollback
    assert "Reconcile-Rollout: my-endpoint rollback at step 1/2" in rollback
    doc = yaml.safe_load(s.remote_file())
    assert doc["traffic"] == {"blue": 100, "green": 0}
    wait_for(
        lambda: s.target.snapshot().traffic_of(ENDPOINT) == (("blue", 100),),
        what="traffic back on blue",
    )
    block = s.status()["rollout"]
    assert isinstance(block, dict) and "error_rate" in str(block["reason"])
    assert block["analysis"]["outcome"] == "fail"
    # The rollback's values equal step 0: no second rollout starts from them.
    s.daemon.trigger("again", fetch=True)
    time.sleep(1.5)
    assert len(s.rollout_commits()) == 2
    assert s.rollout_state() == "Failed"


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_pause_resume_and_abort_are_commits_the_daemon_honours(
    setup: Callable[..., Setup],
) -> None:
    s = at_step_1(setup([{"traffic": 20, "for": "60s"}, 100]))
    wait_for(lambda: "analysis" in (s.status().get("rollout") or {}), what="a judgement")
    clone = str(s.clone.root)

    s.clone.git("pull", "-q", "--rebase", "origin", "main")
    code, out = run_cli("rollout", "pause", ENDPOINT, "--repo", clone, "--push", "--output", "json")
    assert code == 0, out
    paused = json.loads(out)
    assert paused["action"] == "pause" and paused["pushed"] is True
    s.daemon.trigger("push", fetch=True)
    wait_for(lambda: s.rollout_state() == "Paused", what="paused")
    message = s.remote_git("log", "-1", "--format=%B", "main")
    assert "Reconcile-Rollout-Control: my-endpoint pause" in message
    assert s.remote_git("log", "-1", "--format=%an", "main") == "Person"

    code, out = run_cli("rollout", "resume", ENDPOINT, "--repo", clone, "--push")
    assert code == 0, out
    s.daemon.trigger("push", fetch=True)
    wait_for(lambda: s.rollout_state() == "Progressing", what="resumed")

    code, out = run_cli("rollout", "abort", ENDPOINT, "--repo", clone, "--push")
    assert code == 0, out
    s.daemon.trigger("push", fetch=True)
    wait_for(lambda: s.rollout_state() == "Aborted", what="aborted")
    abort = s.remote_git("log", "-1", "--format=%B", "main")
    assert "Reconcile-Rollout: my-endpoint rollback at step 1/2" in abort
    assert "Reconcile-Rollout-Control: my-endpoint abort" in abort
    assert yaml.safe_load(s.remote_file())["traffic"] == {"blue": 100, "green": 0}
    wait_for(
        lambda: s.target.snapshot().traffic_of(ENDPOINT) == (("blue", 100),),
        what="traffic back on blue",
    )
    # Nothing of the daemon's after the person's abort.
    assert len(s.rollout_commits()) == 2

    code, out = run_cli("rollout", "status", ENDPOINT, "--repo", clone, "--output", "json")
    assert code == 0, out
    shown = json.loads(out)
    assert [c.get("action") for c in shown["commits"]] == ["rollback", None, None, "step"]
    assert shown["commits"][0]["controls"] == ["abort"]
    assert shown["commits"][1]["controls"] == ["resume"]
    code, out = run_cli("rollout", "status", ENDPOINT, "--repo", clone)
    assert code == 0, out
    assert out.splitlines()[1].startswith(
        "  Aborted: step 1/2 (traffic 20% for 1m), green after blue"
    )
    assert "rollback 1/2: rollout my-endpoint: abort, all traffic back to blue" in out
    code, out = run_cli("rollout", "abort", ENDPOINT, "--repo", clone)
    assert code == 1 and "nothing to abort" in out
    code, out = run_cli("rollout", "status", "no-such-endpoint", "--repo", clone)
    assert code == 1 and "no rollout of no-such-endpoint" in out


def test_a_person_pushing_while_the_daemon_pushes_a_step_is_kept_and_the_step_replayed(
    setup: Callable[..., Setup], tmp_path: Path
) -> None:
    s = setup([{"traffic": 50, "for": "600ms"}, 100])
    # On the daemon's first rollout push, a person's push lands first (from inside the
    # remote's pre-receive hook, in a clean environment): the daemon's push is refused.
    marker = tmp_path / "race-once"
    racer = racing_push(s.remote, tmp_path / "racer")
    on_push_once(s.remote, message="Reconcile-Rollout:", marker=marker, run=racer)
    s.person_push("green: model v2", add_green)

    wait_for(lambda: s.rollout_state() == "Succeeded", what="the rollout to succeed")
    assert not marker.exists()  # the race happened
    log = s.remote_git("log", "--first-parent", "--format=%an %s", "main").splitlines()
    # Linear: the racer's commit kept, the step committed on top of it, never forced.
    assert log[:3] == [
        "reconciler rollout my-endpoint: step 2/2, green gets 100% of live traffic",
        "reconciler rollout my-endpoint: step 1/2, green gets 50% of live traffic",
        "Racer racer: notes",
    ]
    assert "racing" in s.remote_file("NOTES.md")
    assert [read_mark(m).step for _, m in s.rollout_commits()] == [1, 2]  # type: ignore[union-attr]


def test_a_person_committing_other_values_mid_rollout_wins_and_the_rollout_stops(
    setup: Callable[..., Setup],
) -> None:
    s = at_step_1(setup([{"traffic": 20, "for": "60s"}, 100]))

    thirty = traffic_edit((80, 20), (70, 30))

    s.person_push("move green to 30 by hand", thirty)
    wait_for(lambda: s.rollout_state() == "Stopped", what="the rollout to stop")
    assert "that commit wins" in str((s.status().get("rollout") or {}).get("reason"))
    wait_for(
        lambda: s.target.snapshot().traffic_of(ENDPOINT) == (("blue", 70), ("green", 30)),
        what="the person's values served",
    )
    assert len(s.rollout_commits()) == 1


def test_pull_request_mode_pushes_one_branch_per_step_once_and_advances_when_merged(
    setup: Callable[..., Setup],
) -> None:
    s = setup([{"traffic": 50, "for": "300ms"}, 100], mode="pull-request")
    s.person_push("green: model v2", add_green)
    step_1 = "reconcile/rollout/my-endpoint/step-1"

    def branch_tip(name: str) -> str | None:
        done = subprocess.run(
            [
                "git",
                "--git-dir",
                str(s.remote),
                "rev-parse",
                "--verify",
                "-q",
                f"refs/heads/{name}",
            ],
            capture_output=True,
            text=True,
        )
        return done.stdout.strip() or None

    wait_for(lambda: branch_tip(step_1) is not None, what="the step-1 branch")
    first = branch_tip(step_1)
    time.sleep(1.5)  # passes keep deciding "advance": the branch is pushed once
    assert branch_tip(step_1) == first
    assert s.rollout_commits() == []  # nothing on main until a person merges
    block = s.status()["rollout"]
    assert isinstance(block, dict) and block["branch"] == step_1
    assert "waits for a person to merge" in str(block["reason"])

    s.clone.git("fetch", "-q", "origin")
    s.clone.git("merge", "-q", "--ff-only", f"origin/{step_1}")
    s.clone.git("push", "-q", "origin", "main")
    s.daemon.trigger("merged", fetch=True)
    step_2 = "reconcile/rollout/my-endpoint/step-2"
    wait_for(lambda: branch_tip(step_2) is not None, what="the step-2 branch")
    message = s.remote_git("log", "-1", "--format=%B", step_2)
    assert "Step 1/2 (traffic 50% for 300ms) passed" in message
    assert "Reconcile-Rollout: my-endpoint step 2/2" in message


def test_a_restarted_daemon_finds_the_rollout_again_and_its_step_window_begins_anew(
    setup: Callable[..., Setup], tmp_path: Path
) -> None:
    s = at_step_1(setup([{"traffic": 20, "for": "2s"}, 100]))
    wait_for(lambda: "analysis" in (s.status().get("rollout") or {}), what="a judgement")
    s.daemon.stop()
    # A new daemon, with a cache of its own: all it knows is in git.
    source = RemoteSource(str(s.remote), branch="main", cache_dir=tmp_path / "cache-2")
    again = Daemon(source, s.target, WatchOptions(interval_s=60.0, progress_interval_s=0.1))
    thread = threading.Thread(target=again.run, daemon=True)
    restarted = time.monotonic()
    thread.start()
    try:
        wait_for(lambda: s.rollout_state() == "Succeeded", what="the rollout to succeed")
    finally:
        again.stop()
        thread.join(timeout=30)
    commits = s.rollout_commits()
    assert [read_mark(m).step for _, m in commits] == [1, 2]  # type: ignore[union-attr]
    # Step 1's window began again after the restart: its 2s were served by the new daemon.
    promoted = int(s.remote_git("log", "-1", "--format=%ct", commits[1][0]))
    assert promoted >= int(time.time() - (time.monotonic() - restarted)) + 1
    assert "Step 1/2 (traffic 20% for 2s) passed" in commits[1][1]


def test_a_local_checkout_gets_the_rollback_commit_and_its_working_tree_follows(
    repo: RepoBuilder, tmp_path: Path
) -> None:
    """The daemon on a person's checkout (no remote): the step and rollback commits land on
    its branch, and the checkout's index and working tree follow them (nothing to revert)."""
    from reconciler.daemon import LocalSource

    repo.basics()
    repo.model(version=2, weights="2")
    repo.write(ENDPOINT_FILE, ENDPOINT_TEXT)
    repo.deployment(ENDPOINT, "blue")
    repo.write("reconciler.yaml", reconciler_yaml([{"traffic": 20, "for": "2s"}, 100]))
    repo.commit("blue serves all traffic")
    metrics = MetricsServer()
    metrics.errors["green"] = 1.0
    target = MetricsTarget(metrics_url=metrics.url)
    source = LocalSource(repo.root, worktree=False, build_dir=tmp_path / "build")
    daemon = Daemon(source, target, WatchOptions(interval_s=60.0, progress_interval_s=0.1))
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: bool(repo.git("branch", "--list", DEFAULT_STATUS_BRANCH)), what="status")
        add_green(repo)
        repo.commit("green: model v2")

        def rolled_back() -> bool:
            return "rollback at step 1/2" in repo.git("log", "-1", "--format=%B", "main")

        wait_for(rolled_back, what="the rollback commit")
    finally:
        daemon.stop()
        thread.join(timeout=30)
        metrics.close()
    assert repo.git("status", "--porcelain") == ""
    on_disk = yaml.safe_load((repo.root / ENDPOINT_FILE).read_text())
    assert on_disk["traffic"] == {"blue": 100, "green": 0}
    subjects = repo.git("log", "-3", "--format=%an: %s").splitlines()
    assert subjects == [
        "reconciler: rollout my-endpoint: roll back green, all traffic to blue",
        "reconciler: rollout my-endpoint: step 1/2, green gets 20% of live traffic",
        "Test: green: model v2",
    ]


def test_a_step_commit_on_a_checkout_never_overwrites_uncommitted_edits_of_the_file(
    repo: RepoBuilder,
) -> None:
    """gitsource.commit_file on the checked-out branch: a person's unsaved edit of the
    endpoint file refuses the commit (branch, index and edit untouched); another file's
    edit stays as it was while the commit lands."""
    from reconciler.gitsource import GitSource, GitSourceError

    repo.write(ENDPOINT_FILE, ENDPOINT_TEXT)
    repo.write("NOTES.md", "notes\n")
    before = repo.commit("base")
    source = GitSource(repo.root)
    edited = ENDPOINT_TEXT + "description: mine, not saved\n"
    (repo.root / ENDPOINT_FILE).write_text(edited)
    with pytest.raises(GitSourceError, match="uncommitted edits"):
        source.commit_file(
            ENDPOINT_FILE, lambda t: (t or "") + "# x\n", message="step", branch="main"
        )
    assert repo.git("rev-parse", "HEAD") == before
    assert (repo.root / ENDPOINT_FILE).read_text() == edited

    repo.git("checkout", "--", ENDPOINT_FILE)
    (repo.root / "NOTES.md").write_text("notes, edited\n")
    made = source.commit_file(
        ENDPOINT_FILE,
        lambda t: (t or "").replace("blue: 100", "blue: 90"),
        message="step",
        branch="main",
    )
    assert made.commit == repo.git("rev-parse", "HEAD") and made.attempts == 1
    assert "blue: 90" in (repo.root / ENDPOINT_FILE).read_text()
    assert repo.git("status", "--porcelain") == "M NOTES.md"


def test_a_daemon_started_with_no_status_yet_takes_the_commit_before_as_what_ran(
    repo: RepoBuilder, tmp_path: Path
) -> None:
    """No pass recorded at all: the commit that brought the new version, the newest one,
    starts the rollout (its parent is the base), and step 1 is committed."""
    from reconciler.daemon import LocalSource

    repo.basics()
    repo.model(version=2, weights="2")
    repo.write(ENDPOINT_FILE, ENDPOINT_TEXT)
    repo.deployment(ENDPOINT, "blue")
    repo.write("reconciler.yaml", reconciler_yaml([{"traffic": 20, "for": "60s"}, 100]))
    repo.commit("blue serves all traffic")
    add_green(repo)
    repo.commit("green: model v2")
    metrics = MetricsServer()
    source = LocalSource(repo.root, worktree=False, build_dir=tmp_path / "build")
    target = MetricsTarget(metrics_url=metrics.url)
    daemon = Daemon(source, target, WatchOptions(interval_s=60.0, progress_interval_s=0.1))
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: "step 1/2" in repo.git("log", "-1", "--format=%B", "main"), what="step 1")
    finally:
        daemon.stop()
        thread.join(timeout=30)
        metrics.close()
    assert "Starts the rollout of green (new)" in repo.git("log", "-1", "--format=%B", "main")


def test_a_canary_whose_shadow_answers_differ_is_rolled_back_in_its_mirror_step(
    setup: Callable[..., Setup],
) -> None:
    """It never serves a caller: the router's shadow comparisons (router_shadow_comparisons_
    total, disagree_body) fail shadow_agreement while it is only mirrored."""
    s = setup([{"mirror": 20, "for": "2s"}, 100], shadow_agreement=0.99)
    s.metrics.disagree = 0.2
    s.person_push("green: model v2", add_green)

    wait_for(lambda: s.rollout_state() == "Failed", what="the rollback")
    marks = [read_mark(m) for _, m in s.rollout_commits()]
    assert [(m.step, m.rollback) for m in marks if m] == [(1, False), (1, True)]
    rollback = s.rollout_commits()[-1][1]
    assert "Step 1/2 (mirror 20% for 2s) failed: shadow_agreement 80.00% < 99.00%" in rollback
    assert "shadow: " in rollback and " disagree (80.00% agree)" in rollback
    doc = yaml.safe_load(s.remote_file())
    assert doc["traffic"]["blue"] == 100 and doc["traffic"].get("green", 0) == 0
    assert doc["mirror_traffic"] == {"green": 0}
    wait_for(
        lambda: s.target.snapshot().endpoints[0].spec.mirror_traffic == (),
        what="mirroring off on the target",
    )


def test_a_person_committing_a_later_steps_values_mid_rollout_is_built_upon(
    setup: Callable[..., Setup],
) -> None:
    """Values that are a step of the rollout are its step, whoever committed them: the
    rollout re-plans from there (the step judged, then the next one committed)."""
    s = at_step_1(setup([{"traffic": 20, "for": "60s"}, {"traffic": 50, "for": "600ms"}, 100]))

    fifty = traffic_edit((80, 20), (50, 50))

    s.person_push("green to 50% now", fifty)
    wait_for(lambda: s.rollout_state() == "Succeeded", what="the rollout to succeed")
    marks = [read_mark(m) for _, m in s.rollout_commits()]
    # Step 2 is the person's commit (no trailer); the daemon went on from it.
    assert [m.step for m in marks if m] == [1, 3]
    assert "Step 2/3 (traffic 50% for 600ms) passed" in s.rollout_commits()[-1][1]


def test_a_rollout_a_person_stopped_stays_stopped_after_a_restart(
    setup: Callable[..., Setup], tmp_path: Path
) -> None:
    """The person who stopped a rollout by hand then moved all traffic back to the stable
    deployment: a restarted daemon finds the rollout's step trailer in the history, but the
    status says it was stopped, so it does not start it again (the values read as its
    step 0, which would commit step 1 anew against the person's decision)."""
    s = at_step_1(setup([{"traffic": 20, "for": "60s"}, 100]))

    thirty = traffic_edit((80, 20), (70, 30))

    back = traffic_edit((70, 30), (100, 0))

    s.person_push("move green to 30 by hand", thirty)
    wait_for(lambda: s.rollout_state() == "Stopped", what="the rollout to stop")
    reverted = s.person_push("all back on blue", back)
    wait_for(lambda: s.status().get("commit") == reverted, what="the revert applied")
    s.daemon.stop()
    source = RemoteSource(str(s.remote), branch="main", cache_dir=tmp_path / "cache-2")
    again = Daemon(source, s.target, WatchOptions(interval_s=60.0, progress_interval_s=0.1))
    thread = threading.Thread(target=again.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: again.state.last_commit == reverted, what="the restarted daemon's pass")
        time.sleep(1.0)  # passes keep coming every progress interval; none may commit
    finally:
        again.stop()
        thread.join(timeout=30)
    assert len(s.rollout_commits()) == 1
    assert s.remote_git("rev-parse", "main") == reverted
    assert s.rollout_state() == "Stopped"
    assert s.target.snapshot().traffic_of(ENDPOINT) == (("blue", 100),)


def test_an_abort_whose_push_is_refused_is_undone_locally_and_succeeds_after_a_pull(
    setup: Callable[..., Setup], tmp_path: Path
) -> None:
    """The person's clone is behind origin (the daemon, or someone, pushed meanwhile): the
    abort's push is refused. The abort commit made on the old tip is undone, not left behind
    for a rebase to replay onto values it was not made for (its rollback trailer would end
    the rollout while the new tip's traffic stays); after a pull, abort works."""
    s = at_step_1(setup([{"traffic": 20, "for": "60s"}, 100]))
    s.clone.git("pull", "-q", "--rebase", "origin", "main")
    before = s.clone.git("rev-parse", "HEAD")
    other = RepoBuilder.__new__(RepoBuilder)
    other.root = tmp_path / "other"
    subprocess.run(["git", "clone", "-q", str(s.remote), str(other.root)], check=True)
    other.write("NOTES.md", "meanwhile\n")
    other.git("add", "NOTES.md")
    other.git("-c", "user.name=O", "-c", "user.email=o@example.com", "commit", "-qm", "notes")
    other.git("push", "-q", "origin", "main")

    clone = str(s.clone.root)
    code, out = run_cli("rollout", "abort", ENDPOINT, "--repo", clone, "--push")
    assert code == 1
    assert "undone" in out and "pull" in out, out
    assert s.clone.git("rev-parse", "HEAD") == before
    assert s.clone.git("status", "--porcelain") == ""
    assert "blue: 80" in (s.clone.root / ENDPOINT_FILE).read_text()
    assert s.rollout_state() != "Aborted"

    s.clone.git("pull", "-q", "--rebase", "origin", "main")
    code, out = run_cli("rollout", "abort", ENDPOINT, "--repo", clone, "--push")
    assert code == 0, out
    s.daemon.trigger("push", fetch=True)
    wait_for(lambda: s.rollout_state() == "Aborted", what="aborted")
    assert yaml.safe_load(s.remote_file())["traffic"] == {"blue": 100, "green": 0}


def test_a_forged_step_trailer_in_a_persons_commit_promotes_nothing(
    setup: Callable[..., Setup],
) -> None:
    """The step is read from the file's values, never from a trailer someone wrote."""
    s = at_step_1(setup([{"traffic": 20, "for": "60s"}, 100]))

    def notes(clone: RepoBuilder) -> None:
        clone.write("NOTES.md", "forged\n")

    forged = (
        "notes\n\nReconcile-Rollout: my-endpoint step 2/2\n"
        "Reconcile-Rollout-Stable: blue\nReconcile-Rollout-Canary: green\n"
    )
    s.person_push(forged, notes)
    wait_for(
        lambda: (
            "analysis" in (s.status().get("rollout") or {})
            and s.remote_git("rev-parse", "main") in str(s.status().get("commit"))
        ),
        what="a judgement at the forged commit",
    )
    time.sleep(1.0)  # several intervals of 300ms
    block = s.status()["rollout"]
    assert isinstance(block, dict)
    assert block["state"] == "Progressing" and block["step"] == 1
    assert yaml.safe_load(s.remote_file())["traffic"] == {"blue": 80, "green": 20}
    # The daemon made step 1 only; the person's forged commit is the only other "mark".
    authors = [s.remote_git("log", "-1", "--format=%an", sha) for sha, _ in s.rollout_commits()]
    assert authors == ["reconciler", "Person"]


def test_a_forged_rollback_trailer_that_rolls_nothing_back_does_not_end_the_rollout(
    setup: Callable[..., Setup],
) -> None:
    s = at_step_1(setup([{"traffic": 20, "for": "60s"}, 100]))

    def notes(clone: RepoBuilder) -> None:
        clone.write("NOTES.md", "forged\n")

    s.person_push("notes\n\nReconcile-Rollout: my-endpoint rollback at step 1/2\n", notes)
    wait_for(
        lambda: s.remote_git("rev-parse", "main") in str(s.status().get("commit")),
        what="a pass at the forged commit",
    )
    time.sleep(1.0)
    # green still serves 20%: nothing was rolled back, so the rollout is not over.
    assert yaml.safe_load(s.remote_file())["traffic"] == {"blue": 80, "green": 20}
    assert s.rollout_state() == "Progressing"


def test_a_person_reverting_the_daemons_step_commit_stops_the_rollout_and_is_kept(
    setup: Callable[..., Setup],
) -> None:
    s = at_step_1(setup([{"traffic": 20, "for": "60s"}, 100]))
    step_1 = s.rollout_commits()[0][0]

    def revert(clone: RepoBuilder) -> None:
        clone.git("revert", "--no-commit", step_1)

    s.person_push(f'Revert "step 1"\n\nThis reverts commit {step_1}.', revert)
    wait_for(
        lambda: (
            s.remote_git("rev-parse", "main") in str(s.status().get("commit"))
            or len(s.rollout_commits()) > 1
        ),
        what="a pass after the revert",
    )
    time.sleep(1.0)
    assert len(s.rollout_commits()) == 1  # no step 1 again on top of the revert
    # The revert's values are kept: all traffic on blue, as before step 1 (green unlisted).
    assert yaml.safe_load(s.remote_file())["traffic"] == {"blue": 100}
    assert s.rollout_state() == "Stopped"
    assert "set back to all traffic on blue" in str(s.status()["rollout"]["reason"])  # type: ignore[index]


def test_a_force_push_that_drops_the_step_commit_is_built_upon_never_forced_back(
    setup: Callable[..., Setup],
) -> None:
    """The daemon's remembered commits vanish: it re-plans from the new tip, and its next
    commit is on top of the person's forced history (its push is never forced)."""
    s = setup([{"traffic": 20, "for": "60s"}, 100])
    start = s.person_push("green: model v2", add_green)
    wait_for(lambda: len(s.rollout_commits()) == 1, what="step 1")
    dropped = s.rollout_commits()[0][0]
    s.clone.git("fetch", "-q", "origin")
    s.clone.git("reset", "-q", "--hard", start)
    s.clone.write("NOTES.md", "rewritten\n")
    forced = s.clone.commit("history rewritten")
    s.clone.git("push", "-q", "--force", "origin", "main")
    s.daemon.trigger("forced", fetch=True)

    def rebuilt() -> bool:
        commits = s.rollout_commits()
        return len(commits) == 1 and commits[0][0] != dropped

    wait_for(rebuilt, what="step 1 made again on the forced history")
    sha = s.rollout_commits()[0][0]
    assert s.remote_git("merge-base", "--is-ancestor", forced, sha) == ""
    assert s.remote_file("NOTES.md") == "rewritten"
    wait_for(lambda: s.rollout_state() == "Progressing", what="the rollout under way")


@pytest.mark.parametrize("removed", ["canary", "policy", "endpoint"])
def test_the_endpoint_its_canary_or_the_policy_removed_mid_rollout_stops_it_without_a_commit(
    setup: Callable[..., Setup], removed: str
) -> None:
    s = at_step_1(setup([{"traffic": 20, "for": "60s"}, 100]))

    def remove(clone: RepoBuilder) -> None:
        if removed == "policy":
            clone.write("reconciler.yaml", "{}\n")
            return
        if removed == "endpoint":
            clone.git("rm", "-q", "-r", f"endpoints/{ENDPOINT}")
            return
        path = ENDPOINT_FILE
        text = (clone.root / path).read_text().replace("  green: 20\n", "")
        text = text.replace("blue: 80", "blue: 100")
        (clone.root / path).write_text(text)
        for found in (clone.root / "endpoints" / ENDPOINT).glob("*green*"):
            found.unlink()

    s.person_push(f"remove the {removed}", remove)
    wait_for(lambda: s.rollout_state() == "Stopped", what="the rollout to stop")
    assert "removed by a commit" in str((s.status().get("rollout") or {}).get("reason"))
    time.sleep(0.7)
    assert len(s.rollout_commits()) == 1


def test_an_abort_squashed_after_another_endpoints_mark_ends_the_rollout(
    setup: Callable[..., Setup],
) -> None:
    s = at_step_1(setup([{"traffic": 20, "for": "60s"}, 100]))

    back = traffic_edit((80, 20), (100, 0))

    s.person_push(
        "squash: abort two rollouts\n\n"
        "Reconcile-Rollout: other-endpoint rollback at step 1/2\n"
        "Reconcile-Rollout-Stable: red\nReconcile-Rollout-Canary: yellow\n"
        "Reconcile-Rollout-Control: other-endpoint abort\n\n"
        "Reconcile-Rollout: my-endpoint rollback at step 1/2\n"
        "Reconcile-Rollout-Stable: blue\nReconcile-Rollout-Canary: green\n"
        "Reconcile-Rollout-Control: my-endpoint abort\n",
        back,
    )
    wait_for(
        lambda: s.rollout_state() == "Aborted" or len(s.rollout_commits()) > 2,
        what="the abort seen (or step 1 made again)",
    )
    time.sleep(0.7)
    assert s.rollout_state() == "Aborted"
    assert yaml.safe_load(s.remote_file())["traffic"] == {"blue": 100, "green": 0}


def test_a_router_counter_gone_nan_makes_the_step_wait_and_never_rolls_back(
    setup: Callable[..., Setup],
) -> None:
    s = setup([{"traffic": 20, "for": "60s"}, 100])
    s.person_push("green: model v2", add_green)
    wait_for(lambda: "analysis" in (s.status().get("rollout") or {}), what="a judgement")
    labels = 'endpoint="my-endpoint",deployment="green",kind="live",code="500"'
    broken = f"# TYPE router_requests_total counter\nrouter_requests_total{{{labels}}} NaN\n"
    healthy = s.metrics.scrape
    s.metrics.scrape = lambda: broken.encode()  # type: ignore[method-assign]
    s.daemon.trigger("judge", fetch=False)

    def unreadable() -> bool:
        return "that is not a count" in str((s.status().get("rollout") or {}).get("reason"))

    wait_for(unreadable, what="the metrics said unreadable")
    block = s.status()["rollout"]
    assert isinstance(block, dict) and block["state"] == "Progressing" and block["step"] == 1
    assert len(s.rollout_commits()) == 1  # no rollback on a figure that is no count
    s.metrics.scrape = healthy  # type: ignore[method-assign]
    s.daemon.trigger("judge", fetch=False)
    wait_for(lambda: not unreadable(), what="the step judged again")
    assert s.rollout_state() == "Progressing"


def test_the_endpoint_file_moved_mid_rollout_gets_the_next_step_at_its_new_path(
    setup: Callable[..., Setup],
) -> None:
    s = at_step_1(setup([{"traffic": 20, "for": "1s"}, 100]))
    moved = f"endpoints/{ENDPOINT}/my-endpoint.endpoint.yml"

    def move(clone: RepoBuilder) -> None:
        clone.git("mv", ENDPOINT_FILE, moved)

    s.person_push("move the endpoint's file", move)
    wait_for(lambda: s.rollout_state() == "Succeeded", what="the rollout to succeed")
    assert [read_mark(m).step for _, m in s.rollout_commits()] == [1, 2]  # type: ignore[union-attr]
    listed = s.remote_git("ls-tree", "-r", "--name-only", "main", f"endpoints/{ENDPOINT}")
    assert ENDPOINT_FILE not in listed.splitlines()  # not written back at the old path
    text = s.remote_file(moved)
    assert "# blue serves v1; a rollout moves these numbers, commit by commit" in text
    assert yaml.safe_load(text)["traffic"] == {"blue": 0, "green": 100}


def test_a_persons_traffic_commit_while_paused_wins_once_resumed(
    setup: Callable[..., Setup],
) -> None:
    s = at_step_1(setup([{"traffic": 20, "for": "60s"}, 100]))
    clone = str(s.clone.root)
    s.clone.git("pull", "-q", "--rebase", "origin", "main")
    code, out = run_cli("rollout", "pause", ENDPOINT, "--repo", clone, "--push")
    assert code == 0, out
    s.daemon.trigger("push", fetch=True)
    wait_for(lambda: s.rollout_state() == "Paused", what="paused")

    thirty = traffic_edit((80, 20), (70, 30))

    s.person_push("green to 30 by hand", thirty)
    time.sleep(0.7)
    assert s.rollout_state() == "Paused"  # paused: nothing judged, nothing committed
    s.clone.git("pull", "-q", "--rebase", "origin", "main")
    code, out = run_cli("rollout", "resume", ENDPOINT, "--repo", clone, "--push")
    assert code == 0, out
    s.daemon.trigger("push", fetch=True)
    wait_for(lambda: s.rollout_state() == "Stopped", what="the person's values to win")
    assert len(s.rollout_commits()) == 1
    assert yaml.safe_load(s.remote_file())["traffic"] == {"blue": 70, "green": 30}


def test_two_endpoints_rolling_out_at_once_get_a_step_commit_each_on_one_line(
    setup: Callable[..., Setup],
) -> None:
    s = setup([{"traffic": 20, "for": "60s"}, 100])
    other = "other-endpoint"

    def second(clone: RepoBuilder) -> None:
        clone.write(
            f"endpoints/{other}/endpoint.yml",
            f"name: {other}\nauth_mode: key\ntraffic:  # its own comment\n  blue: 100\n",
        )
        clone.deployment(other, "blue")

    s.person_push("a second endpoint", second)

    def greens(clone: RepoBuilder) -> None:
        add_green(clone)
        clone.deployment(other, "green", model="azureml:sklearn-regression:2")

    start = s.person_push("green on both", greens)
    wait_for(lambda: len(s.rollout_commits()) == 2, what="step 1 of both")
    found = [(sha, read_mark(m)) for sha, m in s.rollout_commits()]
    marks = {mark.endpoint: (sha, mark) for sha, mark in found if mark is not None}
    assert sorted(marks) == [ENDPOINT, other]
    for name, (sha, mark) in marks.items():
        assert (mark.step, mark.stable, mark.canary) == (1, "blue", "green")
        changed = s.remote_git("show", "--name-only", "--format=", sha)
        assert changed == f"endpoints/{name}/endpoint.yml"
        assert s.remote_git("merge-base", "--is-ancestor", start, sha) == ""
    text = s.remote_file(f"endpoints/{other}/endpoint.yml")
    assert text.endswith("traffic:  # its own comment\n  blue: 80\n  green: 20")
    # The other endpoint's router serves no figures here: it waits, never promotes.
    time.sleep(0.7)
    assert len(s.rollout_commits()) == 2


def test_an_endpoint_file_in_utf16_gets_its_step_in_utf16_with_its_byte_order_mark(
    setup: Callable[..., Setup],
) -> None:
    """The loader reads a UTF-16 file (with its byte order mark, as YAML does); the step's
    edit keeps that encoding rather than fail every pass decoding it as UTF-8."""
    s = setup([{"traffic": 20, "for": "60s"}, 100])
    saved: list[str] = []

    def utf16(clone: RepoBuilder) -> None:
        add_green(clone)
        text = (clone.root / ENDPOINT_FILE).read_text()
        saved.append(text)
        (clone.root / ENDPOINT_FILE).write_bytes(text.encode("utf-16"))

    s.person_push("green, and the endpoint's file saved as UTF-16", utf16)
    wait_for(lambda: len(s.rollout_commits()) == 1, what="step 1")
    raw = subprocess.run(
        ["git", "-C", str(s.remote), "show", f"main:{ENDPOINT_FILE}"],
        check=True,
        capture_output=True,
    ).stdout
    assert raw.startswith((b"\xff\xfe", b"\xfe\xff"))  # the byte order mark kept
    text = raw.decode("utf-16")
    assert yaml.safe_load(text)["traffic"] == {"blue": 80, "green": 20}
    # Only the numbers changed (comments and the rest stay as the person saved them).
    assert "blue: 80    # the stable deployment\n  green: 20\n" in text

    def others(of: str) -> list[str]:
        return [line for line in of.splitlines() if "blue:" not in line and "green:" not in line]

    assert others(text) == others(saved[0])
    wait_for(lambda: s.rollout_state() == "Progressing", what="the rollout under way")


def test_a_forged_step_trailer_read_after_a_restart_promotes_no_idle_deployment(
    setup: Callable[..., Setup], tmp_path: Path
) -> None:
    s = setup([{"traffic": 20, "for": "60s"}, 100])
    policy = yaml.safe_load(s.remote_file("reconciler.yaml"))

    def idle_green(clone: RepoBuilder) -> None:
        # green arrives while the endpoint's policy is off: no rollout; then it is on again.
        off = {**policy["rollouts"], "endpoints": {ENDPOINT: {"enabled": False}}}
        clone.write("reconciler.yaml", yaml.safe_dump({"rollouts": off}))
        add_green(clone)

    s.person_push("green, idle, no rollout", idle_green)

    def policy_on(clone: RepoBuilder) -> None:
        clone.write("reconciler.yaml", yaml.safe_dump(policy))

    s.person_push("rollouts on again", policy_on)

    def notes(clone: RepoBuilder) -> None:
        clone.write("NOTES.md", "copied message\n")

    tip = s.person_push(
        "notes\n\nReconcile-Rollout: my-endpoint step 1/2\n"
        "Reconcile-Rollout-Stable: blue\nReconcile-Rollout-Canary: green\n",
        notes,
    )
    wait_for(lambda: tip == s.status().get("commit"), what="a pass at the forged commit")
    s.daemon.stop()
    source = RemoteSource(str(s.remote), branch="main", cache_dir=tmp_path / "cache-2")
    again = Daemon(source, s.target, WatchOptions(interval_s=60.0, progress_interval_s=0.1))
    thread = threading.Thread(target=again.run, daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: s.remote_git("rev-parse", "main") != tip or s.rollout_state() is not None,
            timeout=5,
            what="the restarted daemon's pass",
        )
        time.sleep(0.7)
    finally:
        again.stop()
        thread.join(timeout=30)
    # Nothing committed by the daemon (it was "step 1/2, green gets 20% of live traffic").
    assert s.remote_git("log", "--format=%an: %s", f"{tip}..main") == ""
    assert yaml.safe_load(s.remote_file())["traffic"] == {"blue": 100}
