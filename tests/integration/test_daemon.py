"""The daemon against real git repositories (a bare remote and clones in temporary
folders), applying to the in-memory target: triggers, status commits, failures, locks,
webhooks. The Docker-backed cases (drift, SIGKILL mid-rollout) are in test_daemon_docker.py.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from repo_builder import RepoBuilder
from waiting import wait_for

from reconciler.cli import main
from reconciler.daemon import Daemon, LocalSource, RemoteSource, WatchOptions, verify_webhook
from reconciler.gitsource import DEFAULT_STATUS_BRANCH
from reconciler.model.errors import ErrorCode
from reconciler.model.plan import CreateDeployment, Step
from reconciler.model.specs import weight_of
from reconciler.targets.base import ProgressCallback, TargetError
from reconciler.targets.memory import MemoryTarget


def blue_green(repo: RepoBuilder, *, blue: int = 90, green: int = 10) -> None:
    repo.basics()
    repo.model(version=2, weights="2")
    repo.endpoint("my-endpoint", traffic={"blue": blue, "green": green})
    repo.deployment("my-endpoint", "blue")
    repo.deployment("my-endpoint", "green", model="azureml:sklearn-regression:2")


class Running:
    """A daemon in a thread, stopped at the end of the test."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.thread = threading.Thread(target=daemon.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.daemon.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def make(
        source: LocalSource | RemoteSource, target: MemoryTarget, **options: object
    ) -> Running:
        opts = WatchOptions(**{"interval_s": 60.0, **options})  # type: ignore[arg-type]
        r = Running(Daemon(source, target, opts))
        running.append(r)
        return r

    yield make
    for r in running:
        r.stop()


def status_doc(repo: RepoBuilder, endpoint: str = "my-endpoint") -> dict[str, object] | None:
    try:
        text = repo.git("show", f"{DEFAULT_STATUS_BRANCH}:status/{endpoint}.yaml")
    except subprocess.CalledProcessError:
        return None
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def local(repo: RepoBuilder, tmp_path: Path) -> LocalSource:
    return LocalSource(repo.root, worktree=False, build_dir=tmp_path / "build")


def test_a_commit_is_applied_and_its_status_commit_appears(
    repo: RepoBuilder, tmp_path: Path, start: Callable[..., Running]
) -> None:
    blue_green(repo)
    first = repo.commit("blue and green")
    target = MemoryTarget()
    start(local(repo, tmp_path), target)
    wait_for(lambda: (status_doc(repo) or {}).get("commit") == first, what="first status")
    assert target.observe().traffic_of("my-endpoint") == (("blue", 90), ("green", 10))

    repo.endpoint("my-endpoint", traffic={"blue": 50, "green": 50})
    second = repo.commit("50/50")
    wait_for(lambda: (status_doc(repo) or {}).get("commit") == second, what="second status")
    doc = status_doc(repo)
    assert doc is not None and doc["traffic"] == {"blue": 50, "green": 50}
    message = repo.git("log", "-1", "--format=%s", DEFAULT_STATUS_BRANCH)
    assert second in message
    # The status commit did not move the user's branch nor trigger a pass of its own.
    assert repo.git("rev-parse", "HEAD") == second
    count = len(repo.git("rev-list", DEFAULT_STATUS_BRANCH).split())
    time.sleep(1.0)
    assert len(repo.git("rev-list", DEFAULT_STATUS_BRANCH).split()) == count


def test_an_invalid_commit_changes_nothing_and_status_names_the_error(
    repo: RepoBuilder, tmp_path: Path, start: Callable[..., Running]
) -> None:
    blue_green(repo)
    first = repo.commit("good")
    target = MemoryTarget()
    start(local(repo, tmp_path), target)
    wait_for(lambda: (status_doc(repo) or {}).get("commit") == first)
    before = target.observe()
    repo.endpoint("my-endpoint", traffic={"blue": 70, "green": 70})
    bad = repo.commit("bad traffic")
    wait_for(lambda: (status_doc(repo) or {}).get("commit") == bad)
    doc = status_doc(repo)
    assert doc is not None
    errors = doc["errors"]
    assert isinstance(errors, list) and errors
    assert errors[0]["file"] == "endpoints/my-endpoint/endpoint.yml"
    assert errors[0]["line"] is not None
    assert target.observe() == before  # the last good state keeps serving

    # The next good commit supersedes the broken one.
    repo.endpoint("my-endpoint", traffic={"blue": 20, "green": 80})
    fixed = repo.commit("fixed")
    wait_for(lambda: (status_doc(repo) or {}).get("commit") == fixed)
    assert weight_of(target.observe().traffic_of("my-endpoint"), "green") == 80


def test_two_quick_commits_end_in_the_state_of_the_second(
    repo: RepoBuilder, tmp_path: Path, start: Callable[..., Running]
) -> None:
    blue_green(repo)
    repo.commit("base")
    target = MemoryTarget()
    r = start(local(repo, tmp_path), target)
    wait_for(lambda: status_doc(repo) is not None)
    passes_before = len(r.daemon.pass_starts)
    repo.endpoint("my-endpoint", traffic={"blue": 60, "green": 40})
    repo.commit("one")
    repo.endpoint("my-endpoint", traffic={"blue": 30, "green": 70})
    last = repo.commit("two")
    wait_for(lambda: (status_doc(repo) or {}).get("commit") == last)
    assert target.observe().traffic_of("my-endpoint") == (("blue", 30), ("green", 70))
    # Triggers during a pass collapse: far fewer passes than file events.
    assert len(r.daemon.pass_starts) - passes_before <= 3


def test_drift_is_healed_by_the_periodic_pass(
    repo: RepoBuilder, tmp_path: Path, start: Callable[..., Running]
) -> None:
    blue_green(repo)
    first = repo.commit("base")
    target = MemoryTarget()
    r = start(local(repo, tmp_path), target, interval_s=0.5)
    wait_for(lambda: (status_doc(repo) or {}).get("commit") == first)
    # Someone changes the weights by hand on the target.
    endpoint = target.endpoints["my-endpoint"]
    from dataclasses import replace

    target.endpoints["my-endpoint"] = replace(
        endpoint, spec=replace(endpoint.spec, traffic=(("blue", 100),))
    )
    wait_for(lambda: target.observe().traffic_of("my-endpoint") == (("blue", 90), ("green", 10)))
    # The pass counts its corrections once it returns: wait for that, not just the healing.
    wait_for(
        lambda: (
            (r.daemon.metrics.registry.get_sample_value("reconciler_drift_corrections_total") or 0)
            >= 1
        ),
        what="the drift correction to be counted",
    )


def test_status_is_pushed_to_the_remote_and_a_rejected_push_is_retried(
    repo: RepoBuilder, tmp_path: Path, start: Callable[..., Running]
) -> None:
    blue_green(repo)
    repo.commit("base")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.root), str(remote)], check=True)
    # The remote refuses the first push of the status branch, then accepts.
    marker = tmp_path / "refuse-once"
    marker.write_text("x")
    hook = remote / "hooks" / "pre-receive"
    hook.write_text(
        f"#!/bin/sh\nif [ -f {marker} ]; then rm {marker}; echo refused >&2; exit 1; fi\nexit 0\n"
    )
    hook.chmod(0o755)
    source = RemoteSource(str(remote), branch="main", cache_dir=tmp_path / "cache")
    start(source, MemoryTarget())

    def remote_status() -> str | None:
        done = subprocess.run(
            [
                "git",
                "--git-dir",
                str(remote),
                "show",
                f"{DEFAULT_STATUS_BRANCH}:status/my-endpoint.yaml",
            ],
            capture_output=True,
            text=True,
        )
        return done.stdout if done.returncode == 0 else None

    wait_for(lambda: remote_status() is not None, timeout=30, what="status on the remote")
    assert not marker.exists()  # it was refused once, then landed
    doc = yaml.safe_load(remote_status() or "")
    assert doc["traffic"] == {"blue": 90, "green": 10}


def test_a_webhook_triggers_a_fetch_and_a_bad_signature_is_refused(
    repo: RepoBuilder, tmp_path: Path, start: Callable[..., Running]
) -> None:
    blue_green(repo)
    repo.commit("base")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.root), str(remote)], check=True)
    repo.git("remote", "add", "origin", str(remote))
    target = MemoryTarget()
    secret = "s3cret"
    r = start(
        RemoteSource(str(remote), branch="main", cache_dir=tmp_path / "cache"),
        target,
        webhook_port=0,
        webhook_secret=secret,
        interval_s=3600,
    )
    wait_for(lambda: bool(r.daemon.ports), what="webhook port")
    wait_for(lambda: target.observe().endpoint("my-endpoint") is not None)
    port = r.daemon.ports[0]
    repo.endpoint("my-endpoint", traffic={"blue": 10, "green": 90})
    repo.commit("shift")
    repo.git("push", "-q", "origin", "main")

    body = json.dumps({"ref": "refs/heads/main"}).encode()

    def post(headers: dict[str, str]) -> int:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/", data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as err:
            return err.code

    assert post({"X-Hub-Signature-256": "sha256=" + "0" * 64}) == 401
    assert post({"X-Gitlab-Token": "wrong"}) == 401
    assert post({}) == 401
    time.sleep(0.5)
    assert weight_of(target.observe().traffic_of("my-endpoint"), "green") == 10  # not fetched
    good = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert post({"X-Hub-Signature-256": good, "X-GitHub-Event": "push"}) == 202
    wait_for(lambda: weight_of(target.observe().traffic_of("my-endpoint"), "green") == 90)


def test_webhook_header_names_are_case_insensitive(
    repo: RepoBuilder, tmp_path: Path, start: Callable[..., Running]
) -> None:
    """HTTP/2 proxies forward header names lower-cased: a correct signature is accepted
    whatever the case of `X-Hub-Signature-256`, `X-GitHub-Event` or `X-Gitlab-Token`."""
    blue_green(repo)
    repo.commit("base")
    secret = "s3cret"
    r = start(local(repo, tmp_path), MemoryTarget(), webhook_port=0, webhook_secret=secret)
    wait_for(lambda: bool(r.daemon.ports), what="webhook port")
    port = r.daemon.ports[0]
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    good = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()

    def post(headers: list[tuple[str, str]]) -> int:
        # http.client sends header names exactly as given (urllib would title-case them).
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.putrequest("POST", "/", skip_accept_encoding=True)
            for name, value in [*headers, ("content-length", str(len(body)))]:
                conn.putheader(name, value)
            conn.endheaders(body)
            answer = conn.getresponse()
            answer.read()
            return answer.status
        finally:
            conn.close()

    assert post([("x-hub-signature-256", good), ("x-github-event", "push")]) == 202
    assert post([("X-HUB-SIGNATURE-256", good), ("X-GITHUB-EVENT", "ping")]) == 202
    assert post([("x-gitlab-token", secret), ("x-gitlab-event", "Push Hook")]) == 202
    # Case-insensitive does not mean lenient: a wrong signature is still refused.
    assert post([("x-hub-signature-256", "sha256=" + "0" * 64)]) == 401
    assert post([("x-gitlab-token", "wrong")]) == 401
    # A Content-Length that is not a length: 400, not a dropped connection.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("POST", "/", skip_accept_encoding=True)
    conn.putheader("content-length", "-5")
    conn.endheaders()
    assert conn.getresponse().status == 400
    conn.close()
    reasons = [why for why, _ in r.daemon.trigger_times]
    assert {"webhook:push", "webhook:ping", "webhook:Push Hook"} <= set(reasons)
    assert len([why for why in reasons if why.startswith("webhook:")]) == 3


def test_webhook_signatures() -> None:
    body = b'{"a": 1}'
    sig = "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert verify_webhook({"X-Hub-Signature-256": sig}, body, "k")
    assert not verify_webhook({"X-Hub-Signature-256": sig}, body + b" ", "k")
    assert verify_webhook({"X-Gitlab-Token": "k"}, body, "k")
    assert verify_webhook({"x-hub-signature-256": sig}, body, "k")
    assert verify_webhook({"x-gitlab-token": "k"}, body, "k")
    assert not verify_webhook({}, body, "k")


class CountingTarget(MemoryTarget):
    """Records overlapping applies across daemons sharing it."""

    active = 0
    overlap = False
    lock = threading.Lock()

    def apply(self, step, *, progress=None):  # type: ignore[no-untyped-def]
        with CountingTarget.lock:
            CountingTarget.active += 1
            if CountingTarget.active > 1:
                CountingTarget.overlap = True
        try:
            time.sleep(0.05)
            super().apply(step, progress=progress)
        finally:
            with CountingTarget.lock:
                CountingTarget.active -= 1


def test_two_daemons_on_one_target_never_apply_at_once(
    repo: RepoBuilder, tmp_path: Path, start: Callable[..., Running]
) -> None:
    blue_green(repo)
    repo.commit("base")
    target = CountingTarget()
    lock = tmp_path / "locks" / "memory.lock"
    first = start(local(repo, tmp_path), target, lock_path=lock, metrics_port=0)
    second = start(
        LocalSource(repo.root, worktree=False, build_dir=tmp_path / "build2"),
        target,
        lock_path=lock,
        metrics_port=0,
    )
    wait_for(
        lambda: first.daemon.state.phase != "starting" and second.daemon.state.phase != "starting"
    )
    wait_for(lambda: "waiting_for_lock" in (first.daemon.state.phase, second.daemon.state.phase))
    waiting = first if first.daemon.state.phase == "waiting_for_lock" else second
    health = json.loads(
        urllib.request.urlopen(f"http://127.0.0.1:{waiting.daemon.ports[0]}/healthz").read()
    )
    assert health["phase"] == "waiting_for_lock"
    for traffic in ({"blue": 40, "green": 60}, {"blue": 80, "green": 20}):
        repo.endpoint("my-endpoint", traffic=traffic)
        repo.commit(f"shift {traffic}")
    wait_for(lambda: target.observe().traffic_of("my-endpoint") == (("blue", 80), ("green", 20)))
    assert not CountingTarget.overlap
    # When the leader stops, the other takes over.
    leader = second if waiting is first else first
    leader.stop()
    wait_for(lambda: waiting.daemon.state.phase in ("idle", "reconciling"))


def test_health_readiness_and_metrics_endpoints(
    repo: RepoBuilder, tmp_path: Path, start: Callable[..., Running]
) -> None:
    blue_green(repo)
    repo.commit("base")
    r = start(local(repo, tmp_path), MemoryTarget(), metrics_port=0)
    wait_for(lambda: r.daemon.state.last_success is not None)
    port = r.daemon.ports[0]
    ready = urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz")
    assert ready.status == 200
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    assert 'reconciler_passes_total{result="succeeded"}' in metrics
    assert "reconciler_seconds_since_last_success" in metrics
    assert "reconciler_last_reconciled_commit_info" in metrics


STATUS_FILE = "status/my-endpoint.yaml"


class StopDuring(MemoryTarget):
    """The in-memory platform; a stop request (as SIGTERM's handler makes) arrives while
    one action is being applied."""

    def __init__(self, action: str) -> None:
        super().__init__()
        self.action = action
        self.stop: Callable[[], None] = lambda: None

    def apply(self, step: Step, *, progress: ProgressCallback | None = None) -> None:
        super().apply(step, progress=progress)
        if str(step.action) == self.action:
            self.stop()
            self.action = ""  # once


def test_a_stop_in_the_middle_of_a_pass_is_recorded_as_work_left_undone(
    repo: RepoBuilder, tmp_path: Path, start: Callable[..., Running]
) -> None:
    repo.basics()
    repo.model(version=2, weights="2")
    repo.endpoint("my-endpoint", traffic={"blue": 100, "green": 0}, mirror={"green": 10})
    repo.deployment("my-endpoint", "blue")
    repo.deployment("my-endpoint", "green", model="azureml:sklearn-regression:2")
    repo.commit("blue serves, green mirrored")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.root), str(remote)], check=True)
    target = StopDuring("set_mirror_traffic")
    r = start(RemoteSource(str(remote), branch="main", cache_dir=tmp_path / "cache"), target)
    target.stop = r.daemon.stop
    r.thread.join(timeout=30)
    assert not r.thread.is_alive()
    assert [str(s.action) for s in target.applied][-1] == "set_mirror_traffic"

    # What a CI clone of the remote reads: the pass did not finish.
    ci = tmp_path / "ci"
    subprocess.run(
        ["git", "clone", "-q", "--depth", "1", remote.as_uri(), str(ci)],
        check=True,
        capture_output=True,
    )
    shown = CliRunner().invoke(main, ["status", "--repo", str(ci)])
    assert shown.exit_code == 0, shown.output
    assert "my-endpoint: Updating" in shown.output
    assert "left undone: set_traffic my-endpoint (skipped: the reconciler is stopping)" in (
        shown.output
    )

    # Started again, the daemon finishes the job and status says Succeeded.
    start(RemoteSource(str(remote), branch="main", cache_dir=tmp_path / "cache"), target)

    def remote_doc() -> dict[str, object]:
        shown = subprocess.run(
            ["git", "--git-dir", str(remote), "show", f"{DEFAULT_STATUS_BRANCH}:{STATUS_FILE}"],
            capture_output=True,
            text=True,
            check=True,
        )
        doc = yaml.safe_load(shown.stdout)
        assert isinstance(doc, dict)
        return doc

    wait_for(lambda: remote_doc()["provisioning_state"] == "Succeeded", what="finished pass")
    assert remote_doc()["pending_steps"] == []


class OnceBrokenTarget(MemoryTarget):
    """Its first observe fails with an error no target translated (a client's own)."""

    failures = 0

    def observe(self):  # type: ignore[no-untyped-def]
        if OnceBrokenTarget.failures == 0:
            OnceBrokenTarget.failures += 1
            raise ConnectionResetError("connection reset by the platform's client")
        return super().observe()


def test_an_unexpected_error_of_a_pass_does_not_end_the_daemon(
    repo: RepoBuilder, tmp_path: Path, start: Callable[..., Running]
) -> None:
    blue_green(repo)
    first = repo.commit("blue and green")
    target = OnceBrokenTarget()
    running = start(local(repo, tmp_path), target, metrics_port=0)
    # The failed pass is retried after the backoff's first second, and applies.
    wait_for(lambda: (status_doc(repo) or {}).get("commit") == first, what="the retried pass")
    assert running.thread.is_alive()
    assert OnceBrokenTarget.failures == 1
    assert running.daemon.state.last_error is None


class FailingCreate(MemoryTarget):
    """Creating a deployment fails with `code`, `times` times (then succeeds)."""

    def __init__(self, code: ErrorCode, times: int) -> None:
        super().__init__()
        self.code = code
        self.left = times
        self.attempts = 0

    def _create_deployment(  # type: ignore[override]
        self, step: Step, do: CreateDeployment, say: ProgressCallback
    ) -> None:
        self.attempts += 1
        if self.left > 0:
            self.left -= 1
            raise TargetError(f"failed with {self.code}", code=self.code)
        super()._create_deployment(step, do, say)


def _metrics(running: Running) -> str:
    port = running.daemon.ports[0]
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()


def test_a_transient_step_failure_is_retried_soon_and_a_permanent_one_waits_for_a_commit(
    repo: RepoBuilder, tmp_path: Path, start: Callable[..., Running]
) -> None:
    blue_green(repo)
    first = repo.commit("blue and green")
    # Transient (an unknown failure of the platform): retried after the backoff's first
    # pause (at most a second), without a new commit, and then applied.
    transient = FailingCreate(ErrorCode.DOCKER_ERROR, times=1)
    running = start(local(repo, tmp_path), transient, metrics_port=0)
    wait_for(lambda: (status_doc(repo) or {}).get("commit") == first, what="the retried pass")
    wait_for(lambda: running.daemon.state.last_error is None, what="a clean pass")
    assert 'reconciler_step_failures_total{code="DockerError",error_kind="transient"} 1.0' in (
        _metrics(running)
    )
    running.stop()

    # Permanent (an image that does not build): the same commit fails the same way, so
    # the daemon waits for the interval (60 s here) or a commit, not for a backoff.
    permanent = FailingCreate(ErrorCode.IMAGE_BUILD_FAILURE, times=10)
    running = start(local(repo, tmp_path / "second"), permanent, metrics_port=0)
    wait_for(lambda: permanent.attempts >= 1, what="the first attempt")
    wait_for(lambda: running.daemon.state.last_error is not None, what="the failed pass")
    time.sleep(3.0)  # a transient failure would have been retried twice by now
    assert permanent.attempts == 1
    assert (
        'reconciler_step_failures_total{code="ImageBuildFailure",error_kind="permanent"} 1.0'
        in _metrics(running)
    )
    # A new commit is planned at once.
    repo.endpoint("my-endpoint", traffic={"blue": 80, "green": 20})
    repo.commit("a fix")
    running.daemon.trigger("test")
    wait_for(lambda: permanent.attempts >= 2, what="the pass of the new commit")


def test_a_fix_committed_while_a_broken_rollout_is_in_progress_is_served_at_once(
    repo: RepoBuilder, tmp_path: Path
) -> None:
    """A pass never blocks on a rollout: the commit that fixes a deployment still starting
    (and bound to fail) is planned by the next pass, from what runs, at once; the broken
    version never gets traffic."""
    from reconciler.engine import PassResult, load
    from reconciler.filetree import DirectoryTree

    repo.basics()
    repo.model(version=2, weights="2")
    repo.endpoint("my-endpoint", traffic={"blue": 100})
    repo.deployment("my-endpoint", "blue")
    repo.commit("blue")
    # Instances start after 30 observations: several seconds of passes.
    target = MemoryTarget(warmup=30)
    seen: list[tuple[float, PassResult]] = []
    opts = WatchOptions(interval_s=30.0, progress_interval_s=0.1)
    running = Running(
        Daemon(
            local(repo, tmp_path),
            target,
            opts,
            on_pass=lambda r: seen.append((time.monotonic(), r)),
        )
    )
    try:
        wait_for(
            lambda: target.snapshot().traffic_of("my-endpoint") == (("blue", 100),),
            what="blue serving",
        )

        def green_digest() -> str:
            desired, _ = load(DirectoryTree(repo.root))
            assert desired is not None
            return next(d.digest for d in desired.deployments if d.name == "green")

        repo.endpoint("my-endpoint", traffic={"blue": 50, "green": 50})
        repo.deployment("my-endpoint", "green", model="azureml:sklearn-regression:2")
        broken = green_digest()
        target.broken_digests.add(broken)  # its init() will raise, once it has started
        repo.commit("green, broken")
        wait_for(
            lambda: any(
                "green" in str(s) for s in (status_doc(repo) or {}).get("in_progress_steps", [])
            ),
            what="green's rollout in progress in status",
        )
        assert target.starting, "the broken rollout is still starting"

        repo.deployment(
            "my-endpoint",
            "green",
            model="azureml:sklearn-regression:2",
            environment_variables={"FIXED": "1"},
        )
        fixed = green_digest()
        committed = time.monotonic()
        repo.commit("green fixed")

        def served() -> bool:
            live = target.snapshot()
            green = next((d for d in live.deployments if d.name == "green"), None)
            traffic = dict(live.traffic_of("my-endpoint"))
            return green is not None and green.digest == fixed and traffic.get("green") == 50

        wait_for(served, timeout=opts.interval_s, what="the fix serving")
        served_at = time.monotonic()
    finally:
        running.stop()
    # The first pass after the commit began at once (the trigger), not after the
    # broken rollout ended: it planned the update from what ran.
    first = next(t for t in running.daemon.pass_starts if t > committed)
    assert first - committed < 2.0
    assert served_at - committed < opts.interval_s
    # The broken version never had traffic, at any pass's end.
    for _, result in seen:
        green = next((d for d in result.live_after.deployments if d.name == "green"), None)
        if green is not None and green.digest == broken:
            assert weight_of(result.live_after.traffic_of("my-endpoint"), "green") == 0


def test_reconciler_yaml_is_read_at_the_revision_of_each_pass(
    repo: RepoBuilder, tmp_path: Path
) -> None:
    """A commit that turns pruning on, gives the daemon's target new options and adds a
    cluster's instance type takes effect on the pass of that commit."""
    from reconciler.repoconfig import TargetConfig

    repo.basics()
    repo.endpoint("my-endpoint", traffic={"blue": 100})
    repo.deployment("my-endpoint", "blue")
    repo.endpoint("old-endpoint", traffic={"blue": 100})
    repo.deployment("old-endpoint", "blue")
    repo.write_yaml("reconciler.yaml", {"targets": {"local": {"type": "docker"}}})
    first = repo.commit("two endpoints, no pruning")
    target = MemoryTarget(name="local")
    opened: list[TargetConfig] = []

    def target_for(entry: TargetConfig) -> MemoryTarget:
        # The same platform, opened again with the entry's options.
        opened.append(entry)
        return target

    opts = WatchOptions(interval_s=60.0, progress_interval_s=0.1)
    running = Running(Daemon(local(repo, tmp_path), target, opts, target_for=target_for))
    try:
        wait_for(lambda: (status_doc(repo) or {}).get("commit") == first, what="first status")
        assert opened == []  # the entry it was started with

        repo.remove("endpoints/old-endpoint/endpoint.yml")
        repo.remove("endpoints/old-endpoint/blue.yml")
        repo.endpoint("gpu-endpoint", traffic={"green": 100}, compute="azureml:cluster")
        repo.deployment("gpu-endpoint", "green", type="kubernetes", instance_type="gpu-small")
        repo.write_yaml(
            "reconciler.yaml",
            {
                "targets": {
                    "local": {"type": "docker", "drain_s": 2},
                    "cluster": {
                        "type": "kubernetes",
                        "instance_types": {"gpu-small": {"cores": 4, "memory_gb": 16, "gpus": 1}},
                    },
                },
                "prune": True,
            },
        )
        second = repo.commit("prune, a drain time, a cluster's instance type")
        wait_for(lambda: (status_doc(repo) or {}).get("commit") == second, what="second status")
    finally:
        running.stop()
    assert [(e.name, dict(e.options)) for e in opened] == [("local", {"drain_s": 2})]
    live = target.snapshot()
    # Pruned on that pass; the cluster's type is valid on it.
    assert [e.name for e in live.endpoints] == ["gpu-endpoint", "my-endpoint"]
    green = next(d for d in live.deployments if d.name == "green")
    assert green.instance_type == "gpu-small"
    doc = status_doc(repo, "gpu-endpoint")
    assert doc is not None and doc["errors"] == []
