"""Faults of the Docker target under steady load: what each cost callers, and the repair.

One endpoint (deployment blue, 2 instances) on the real Docker Engine, a client sending
requests one after another through the router the whole time. For each fault: inject it,
leave it for `--wait` seconds (what callers see until the daemon's next pass), then run
passes as `reconcile` does (observe, plan, execute, until nothing is in progress) and record:

    fault | the plan's steps | failed/sent while broken | failed/sent during the pass |
    pass seconds | seconds from the pass's start to the first 200 | keys kept

A request counts as failed when it gets no 200 (a connection refused, a 502, a 401 with
the keys it had); a refused connection fails at once, so counts while a router is down are
many fast failures: the seconds until the first 200 after the pass started say more.
After a repair that issues new keys the client takes the new ones once the pass is over,
as a caller told by the repair's message would. Prints a markdown table and writes
bench/out/faults.md. Not a test: figures vary with the machine and its neighbours.
"""

from __future__ import annotations

import argparse
import resource
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
from figures import docker_available, emit, short_requested, skipped

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from docker_state import remove_target
from repo_builder import RepoBuilder

from reconciler.engine import PassResult, converge
from reconciler.gitsource import GitSource
from reconciler.targets.docker.options import DockerOptions
from reconciler.targets.docker.state import CREDENTIALS, read_files, write_files
from reconciler.targets.docker.target import DockerTarget

BENCH = "faults"
ENDPOINT = "faults-ep"


class Load:
    """Requests one after another; outcomes recorded with their time."""

    def __init__(self, target: DockerTarget) -> None:
        self.target = target
        self.results: list[tuple[float, bool]] = []
        self.last_error = ""
        self._stop = threading.Event()
        self._refresh()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _refresh(self) -> None:
        creds = self.target.endpoint_credentials(ENDPOINT)
        self.url, self.key = f"http://127.0.0.1:{creds.port}/score", creds.primary_key

    def _run(self) -> None:
        while not self._stop.is_set():
            request = urllib.request.Request(
                self.url,
                data=b'{"x": 1}',
                method="POST",
                headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    ok = answer.status == 200
            except (urllib.error.URLError, OSError) as exc:
                self.last_error = str(exc)
                ok = False
            self.results.append((time.monotonic(), ok))
            time.sleep(0.01)

    def first_ok_after(self, start: float, *, limit: float = 60) -> float | None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            for t, ok in list(self.results):
                if ok and t >= start:
                    return t
            time.sleep(0.05)
        return None

    def between(self, start: float, end: float) -> tuple[int, int]:
        window = [ok for t, ok in self.results if start <= t < end]
        return sum(1 for ok in window if not ok), len(window)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=30)


def containers(client: docker.DockerClient, target: str, role: str) -> list[Any]:
    labels = [f"reconciler.target={target}", f"reconciler.endpoint={ENDPOINT}"]
    return list(
        client.containers.list(
            all=True, filters={"label": [*labels, f"reconciler.role={role}"]}, ignore_removed=True
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait", type=float, default=2.0, help="seconds a fault is left")
    parser.add_argument("--idle", type=int, default=4000, help="idle connections")
    parser.add_argument("--short", action="store_true", help="1 s faults, 500 idle connections")
    args = parser.parse_args()
    if short_requested():
        args.wait, args.idle = 1.0, 500
    why = docker_available()
    if why is not None:
        print(f"bench/faults.py needs Docker: {why}")
        skipped(BENCH, "faults of the Docker target", why)
        return
    client = docker.from_env(timeout=120)
    name = f"bench-faults-{secrets.token_hex(2)}"
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        state_dir = Path(tmp) / "state"
        options = DockerOptions(
            name=name, state_dir=state_dir, router_port_range=(21900, 21999), drain_s=0.5
        )
        repo = RepoBuilder(Path(tmp) / "repo")
        repo.basics()
        repo.environment(packages=())
        repo.code()
        repo.endpoint(ENDPOINT, traffic={"blue": 100})
        repo.deployment(ENDPOINT, "blue", instance_count=2)
        repo.commit("blue")
        target = DockerTarget(options, repo_root=repo.root)

        def apply() -> tuple[list[str], float]:
            source = GitSource(repo.root)
            commit = source.resolve("HEAD")
            started = time.monotonic()
            passes: list[PassResult] = []
            converge(source.tree(commit), target, prune=False, on_pass=passes.append)
            return [str(s.action) for s in passes[0].plan.steps], time.monotonic() - started

        held: list[socket.socket] = []

        def idle() -> None:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.idle + 1000), hard))
            port = target.endpoint_credentials(ENDPOINT).port
            for _ in range(args.idle):
                try:
                    held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
                except OSError:
                    break

        def truncate_keys() -> None:
            holder = containers(client, name, "state")[0]
            whole = read_files(holder)[CREDENTIALS]
            write_files(holder, {CREDENTIALS: whole[: len(whole) // 2]})

        def lose_volume() -> None:
            for role in ("router", "state"):
                for c in containers(client, name, role):
                    c.remove(force=True)
            label = [f"reconciler.target={name}", f"reconciler.endpoint={ENDPOINT}"]
            for volume in client.volumes.list(filters={"label": label}):
                volume.remove(force=True)

        faults: list[tuple[str, Callable[[], None]]] = [
            (
                "instance container removed",
                lambda: containers(client, name, "instance")[0].remove(force=True),
            ),
            (
                "router container stopped",
                lambda: containers(client, name, "router")[0].stop(timeout=1),
            ),
            (
                "router container removed",
                lambda: containers(client, name, "router")[0].remove(force=True),
            ),
            (f"port proxy killed ({args.idle} idle connections)", idle),
            (
                "state holder container removed",
                lambda: containers(client, name, "state")[0].remove(force=True),
            ),
            ("host state folder removed", lambda: shutil.rmtree(state_dir, ignore_errors=True)),
            ("keys truncated in the state volume", truncate_keys),
            ("state volume lost (router, holder, volume removed)", lose_volume),
        ]
        try:
            apply()
            load = Load(target)
            time.sleep(1)
            failed, sent = load.between(0, time.monotonic())
            if failed:
                raise SystemExit(f"{failed}/{sent} failed before any fault: {load.last_error}")
            for label, inject in faults:
                time.sleep(1)
                keys = target.endpoint_credentials(ENDPOINT)
                fault_at = time.monotonic()
                inject()
                time.sleep(args.wait)
                for s in held:
                    s.close()
                held.clear()
                pass_at = time.monotonic()
                steps, seconds = apply()
                done_at = time.monotonic()
                load._refresh()  # a caller told of new keys takes them
                kept = "yes" if target.endpoint_credentials(ENDPOINT) == keys else "NO: new keys"
                broken, sent = load.between(fault_at, pass_at)
                during, during_sent = load.between(pass_at, done_at)
                back = load.first_ok_after(pass_at)
                down = "never back" if back is None else f"{back - pass_at:.1f}"
                rows.append(
                    f"| {label} | {', '.join(steps) or 'none'} | {broken}/{sent} | "
                    f"{during}/{during_sent} | {seconds:.1f} | {down} | {kept} |"
                )
                print(rows[-1], flush=True)
                emit(BENCH, f"{label}: pass", seconds, "s", goal="")
                emit(
                    BENCH,
                    f"{label}: pass start to the first 200",
                    None if back is None else back - pass_at,
                    "s",
                    note="never back" if back is None else f"{broken}/{sent} failed while broken",
                )
            load.stop()
        finally:
            remove_target(client, name)
    header = (
        "| fault | plan of the next pass | failed/sent while broken | failed/sent during the "
        "pass | pass s | s from pass start to the first 200 | keys kept |\n"
        "|---|---|---:|---:|---:|---:|---|\n"
    )
    table = header + "\n".join(rows) + "\n"
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "faults.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
