"""Rollouts meeting people and faults, on the real Docker Engine with the real daemon:
`reconcile watch --url REMOTE` as a process of its own watches a bare git remote in a
temporary folder, pushes its step commits there, and is killed with SIGKILL when the test
says so. A person works in a clone of that remote. Steady load goes through the endpoint's
router all along, and no request may fail:

- a person's commit of other values in the middle of a rollout wins: the rollout stops and
  says so, the person's values are served;
- `reconcile rollout abort` (a commit, pushed) puts traffic back on the stable deployment
  and the mirror off within a pass or two; the rollout says Aborted;
- the daemon's push refused because a person pushed first (forced by the remote's
  pre-receive hook) is replayed on the new tip: both commits survive;
- the daemon killed as its step commit is on the wire (the hook kills it and refuses the
  push), killed again between steps, and again just after a step's push landed (a hook
  after it), resumes from git and what runs each time: every step committed once, none
  lost.

Steps last seconds; the figures of each run are printed (`pytest -s`).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import docker_state
import pytest
from daemon_process import WatchProcess
from docker_rollout_fixtures import EP, marks, new_version, policy, rollout_block, status_of
from git_remote_fixtures import on_push_once, racing_push, remote_git

if TYPE_CHECKING:
    from docker_target_fixtures import DockerWorld, Load

pytest_plugins = ("docker_target_fixtures",)
pytestmark = [pytest.mark.docker, pytest.mark.slow]

THRESHOLDS: Final = {"error_rate": 0.01, "min_requests": 5}
# Long enough that nothing promotes it while the test acts on it.
HELD: Final = "120s"


@dataclass
class Remote:
    """The world's repository as a person's clone of a bare remote that `reconcile watch`
    processes watch; steady load on the endpoint from the start."""

    world: DockerWorld
    remote: Path
    tmp: Path
    load: Load
    daemons: list[WatchProcess] = field(default_factory=list)

    @property
    def pid_file(self) -> Path:
        """Where the pid of the newest daemon is (for a hook to kill it)."""
        return self.tmp / "daemon.pid"

    def git(self, *args: str) -> str:
        return remote_git(self.remote, *args)

    def start_daemon(self) -> WatchProcess:
        daemon = WatchProcess(
            self.tmp / "state",
            *("--url", str(self.remote), "--branch", "main"),
            *("--cache-dir", str(self.tmp / "cache")),
            *("--interval", "1", "--progress-interval", "0.5"),
        )
        self.pid_file.write_text(str(daemon.pid))
        self.daemons.append(daemon)
        return daemon

    def person(self, message: str, edit: Callable[[], None]) -> str:
        """The person pulls, edits, commits and pushes main; the commit."""
        repo = self.world.repo
        repo.git("pull", "-q", "--rebase", "origin", "main")
        edit()
        commit = repo.commit(message)
        repo.git("push", "-q", "origin", "main")
        return commit

    def rollout(self) -> dict[str, Any]:
        return rollout_block(self.git)

    def served(self) -> tuple[dict[str, int], dict[str, int]]:
        """Traffic and mirror traffic as the router's config holds them (0 entries left out)."""
        config = docker_state.router_config(self.world.client, self.world.options.name, EP)
        return (
            {k: v for k, v in (config.get("traffic") or {}).items() if v},
            {k: v for k, v in (config.get("mirror_traffic") or {}).items() if v},
        )

    def wait(self, check: Callable[[], bool], what: str, timeout: float = 120) -> None:
        self.world.wait_for(check, what=what, timeout=timeout)


RemoteFactory = Callable[[list[object]], Remote]


@pytest.fixture
def remote_world(docker_world: DockerWorld, tmp_path: Path) -> Iterator[RemoteFactory]:
    """make(steps): blue (version 1) serving at 100% under a rollout policy of `steps`,
    committed in a person's clone of a bare remote and pushed; `reconcile watch` of the
    remote started and its first pass done; load running. Everything stops at the end."""
    stack = contextlib.ExitStack()
    made: list[Remote] = []

    def make(steps: list[object]) -> Remote:
        world = docker_world
        remote = tmp_path / "remote.git"
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
        world.repo.git("remote", "add", "origin", str(remote))
        # The daemon's clone names the same origin: one repository, one owner of the endpoint.
        world.target = world.new_target()
        options = world.options
        target = {
            "type": "docker",
            "state_dir": str(options.state_dir),
            "router_port_range": list(options.router_port_range),
            "drain_s": options.drain_s,
            "ready_timeout_s": options.ready_timeout_s,
        }
        world.repo.write_yaml(
            "reconciler.yaml",
            {
                "targets": {options.name: target},
                "default_target": options.name,
                **policy(steps, THRESHOLDS),
            },
        )
        world.serve(EP, version="1")
        world.repo.git("push", "-q", "origin", "main")
        head = world.repo.git("rev-parse", "HEAD")
        load = stack.enter_context(world.load(EP))
        r = Remote(world, remote, tmp_path, load)
        made.append(r)
        r.start_daemon()
        r.wait(lambda: status_of(r.git).get("commit") == head, "the daemon's first pass")
        return r

    try:
        yield make
    finally:
        for r in made:
            for daemon in r.daemons:
                daemon.stop()
        stack.close()


def at(event: dict[str, object]) -> float:
    """When the daemon logged the event (its ISO timestamp), in time.time()'s terms."""
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def rollout_events(daemons: list[WatchProcess], name: str, **fields: object) -> list[Any]:
    return [e for d in daemons for e in d.events(name, endpoint=EP, **fields)]


def test_a_persons_commit_of_other_values_mid_rollout_wins_and_stable_fails_no_request(
    remote_world: RemoteFactory,
) -> None:
    r = remote_world([{"traffic": 20, "for": HELD}, 100])
    world = r.world
    r.person("green: a new model", lambda: new_version(world))
    r.wait(lambda: r.served() == ({"blue": 80, "green": 20}, {}), "step 1 served", timeout=180)
    assert marks(r.git) == [(1, False)]

    def thirty() -> None:
        world.repo.endpoint(EP, traffic={"blue": 70, "green": 30})

    committed = time.monotonic()
    mine = r.person("green to 30% by hand", thirty)
    r.wait(lambda: r.rollout().get("state") == "Stopped", "the rollout to stop")
    stopped = time.monotonic() - committed
    r.wait(lambda: r.served() == ({"blue": 70, "green": 30}, {}), "the person's values served")
    served = len(r.load.answers)
    r.wait(lambda: len(r.load.answers) > served + 50, "requests on the person's values")
    reason = str(r.rollout().get("reason"))
    assert "traffic {blue: 70, green: 30} by a commit" in reason, reason
    assert "that commit wins and the rollout stops" in reason
    # The person's commit is the tip: nothing of the daemon's after it.
    assert r.git("rev-parse", "main") == mine
    assert marks(r.git) == [(1, False)]
    [ended] = rollout_events(r.daemons, "rollout_ended", state="Stopped")
    assert "that commit wins" in str(ended["reason"])
    assert r.load.failures == []
    later = r.load.answers[served:]
    assert {a.deployment for a in later} == {"blue", "green"}
    print(
        f"\nperson's commit -> rollout Stopped in status {stopped:.1f} s; requests served "
        f"{len(r.load.answers)}, failed {len(r.load.failures)}"
    )


def test_rollout_abort_mid_mirror_puts_traffic_on_stable_and_mirror_off_within_two_passes(
    remote_world: RemoteFactory,
) -> None:
    r = remote_world([{"mirror": 20, "for": HELD}, 100])
    world = r.world
    r.person("green: a new model", lambda: new_version(world))
    r.wait(lambda: r.served() == ({"blue": 100}, {"green": 20}), "step 1 served", timeout=180)
    (daemon,) = r.daemons
    world.repo.git("pull", "-q", "--rebase", "origin", "main")
    done = subprocess.run(
        [
            sys.executable,
            *("-m", "reconciler.cli", "rollout", "abort", EP),
            *("--repo", str(world.repo.root), "--push", "--output", "json"),
        ],
        capture_output=True,
        text=True,
    )
    pushed, pushed_at = time.monotonic(), time.time()
    assert done.returncode == 0, done.stderr
    abort = json.loads(done.stdout)["commit"]
    r.wait(lambda: r.served() == ({"blue": 100}, {}), "traffic on blue, mirror off")
    took = time.monotonic() - pushed

    # The passes that began after the push, up to the one that turned the mirror off.
    def mirror_off() -> list[Any]:
        events = daemon.events("step_succeeded", action="set_mirror_traffic")
        return [e for e in events if at(e) > pushed_at]

    r.wait(lambda: bool(mirror_off()), "the daemon's log of the step")
    applied = mirror_off()[0]
    passes = len([e for e in daemon.events("pass_started") if pushed_at < at(e) < at(applied)])
    assert passes <= 2, passes
    r.wait(lambda: r.rollout().get("state") == "Aborted", "the rollout Aborted in status")
    assert r.rollout()["reason"] == f"aborted by commit {abort[:12]}"
    assert marks(r.git) == [(1, False), (1, True)]
    assert r.git("rev-parse", "main") == abort  # the daemon commits nothing after it
    served = len(r.load.answers)
    r.wait(lambda: len(r.load.answers) > served + 20, "blue serving after the abort")
    assert r.load.failures == []
    assert {a.deployment for a in r.load.answers} == {"blue"}
    print(
        f"\nabort pushed -> traffic on stable, mirror off {took:.1f} s ({passes} pass(es) "
        f"begun meanwhile); requests served {len(r.load.answers)}, failed "
        f"{len(r.load.failures)}"
    )


def test_a_step_push_refused_because_a_person_pushed_first_is_replayed_on_their_commit(
    remote_world: RemoteFactory,
) -> None:
    r = remote_world([{"traffic": 50, "for": "2s"}, 100])
    world = r.world
    # The daemon's first step push: the person's push lands first, from inside the remote's
    # pre-receive hook, so the daemon's is refused (the branch moved under it).
    marker = r.tmp / "race-once"
    racer = racing_push(r.remote, r.tmp / "racer")
    on_push_once(r.remote, message=f"Reconcile-Rollout: {EP} step 1/", marker=marker, run=racer)
    r.person("green: a new model", lambda: new_version(world))
    r.wait(lambda: r.rollout().get("state") == "Succeeded", "the rollout to succeed", 180)
    assert not marker.exists()  # the race happened
    log = r.git("log", "--first-parent", "--format=%an %s", "main").splitlines()
    # Linear: the person's commit kept, the step made again on top of it, never forced.
    assert log[:4] == [
        f"reconciler rollout {EP}: step 2/2, green gets 100% of live traffic",
        f"reconciler rollout {EP}: step 1/2, green gets 50% of live traffic",
        "Racer racer: notes",
        "Test green: a new model",
    ]
    assert "racing" in r.git("show", "main:NOTES.md")
    assert marks(r.git) == [(1, False), (2, False)]
    [step_1] = rollout_events(r.daemons, "rollout_committed", action="advance")[:1]
    assert step_1["attempts"] == 2
    r.wait(lambda: r.served() == ({"green": 100}, {}), "green serving all traffic")
    assert r.load.failures == []
    print(
        f"\nrefused push replayed (attempts {step_1['attempts']}); requests served "
        f"{len(r.load.answers)}, failed {len(r.load.failures)}"
    )


def test_a_daemon_killed_before_or_after_its_step_push_lands_or_between_steps_resumes_once(
    remote_world: RemoteFactory,
) -> None:
    r = remote_world([{"mirror": 20, "for": "2s"}, {"traffic": 50, "for": "5s"}, 100])
    world = r.world
    # As the daemon pushes step 2, the remote's hook kills it (SIGKILL) and refuses the
    # push: the step commit is made in the daemon's clone and lands nowhere.
    marker, lost = r.tmp / "kill-once", r.tmp / "lost-commit"
    kill = f'echo "$new" > {lost}; kill -9 "$(cat {r.pid_file})"'
    on_push_once(
        r.remote, message=f"Reconcile-Rollout: {EP} step 2/", marker=marker, run=kill, refuse=True
    )
    (first,) = r.daemons
    r.person("green: a new model", lambda: new_version(world))
    r.wait(lambda: not first.alive(), "the daemon killed as it pushes step 2", timeout=180)
    assert first.process.returncode == -9
    unpushed = lost.read_text().strip()
    assert marks(r.git) == [(1, False)]
    assert r.served() == ({"blue": 100}, {"green": 20})

    second = r.start_daemon()
    r.wait(lambda: marks(r.git) == [(1, False), (2, False)], "step 2 pushed after the restart")
    r.wait(lambda: r.served() == ({"blue": 50, "green": 50}, {}), "step 2 served")
    r.wait(lambda: bool(second.events("rollout_judged", endpoint=EP, step=2)), "step 2 judged")
    # As the next daemon's push of step 3 has landed, a hook after it kills that daemon
    # too: it never logs nor records the commit it made.
    landed = r.tmp / "kill-after-landing"
    on_push_once(
        r.remote,
        message=f"Reconcile-Rollout: {EP} step 3/",
        marker=landed,
        run=f'kill -9 "$(cat {r.pid_file})"',
        hook_name="post-receive",
    )
    second.kill()  # between steps: step 2 committed, served, its window under way
    assert marks(r.git) == [(1, False), (2, False)]

    third = r.start_daemon()
    r.wait(lambda: not third.alive(), "the daemon killed once step 3 landed")
    assert marks(r.git) == [(1, False), (2, False), (3, False)]
    assert third.events("rollout_committed") == []  # killed before it could say so
    fourth = r.start_daemon()
    r.wait(lambda: r.rollout().get("state") == "Succeeded", "the rollout to succeed")
    r.wait(lambda: r.served() == ({"green": 100}, {}), "green serving all traffic")
    # Each step committed once, none lost, the killed push's commit nowhere on main.
    assert marks(r.git) == [(1, False), (2, False), (3, False)]
    assert unpushed not in r.git("rev-list", "main").split()
    for daemon in (second, third, fourth):
        assert daemon.events("rollout_resumed", endpoint=EP), daemon.log.read_text()[-2000:]
    assert not fourth.events("rollout_committed")  # step 3 was there: nothing to commit
    assert r.load.failures == []
    assert r.load.answers[-1].version == "2"
    print(
        f"\nthree SIGKILLs mid-rollout: requests served {len(r.load.answers)}, failed "
        f"{len(r.load.failures)}"
    )
