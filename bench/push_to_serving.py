"""Benchmark: from `reconcile` to the new version answering, against the same work by hand.

In one run, on the real Docker Engine (the environment image cached beforehand):
  (a) a code-only change of a deployment with one instance;
  (b) a new deployment whose environment is cached;
each timed from the start of `reconcile` (a new process, as a user runs it) until the new
version answers through the endpoint's router; and beside each, the same work by hand:
`docker build` of the same thin layer (a Dockerfile FROM the environment image copying code
and model), `docker run`, and polling until the inference server answers.
Goal: our time at most 20% over the by-hand time. Prints figures; gates nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import docker
from figures import docker_available, emit, short_requested, skipped

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

import docker_state
from docker_state import remove_target
from repo_builder import RepoBuilder

TARGET = "bench-push"
MODEL_DIR = "/var/azureml-app/azureml-models/sklearn-regression/1"
BENCH = "push_to_serving"
PROBE = "import urllib.request;urllib.request.urlopen('http://127.0.0.1:5001/', timeout=2)"


def reconcile(repo: Path, state: Path) -> float:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "--log-format", "json", "--repo", str(repo)],
        env={**os.environ, "XDG_STATE_HOME": str(state)},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:])
        raise SystemExit(f"reconcile exited {done.returncode}")
    return started


def credentials(endpoint: str) -> dict[str, Any]:
    """The endpoint's keys and port, from its state volume (as the target reads them)."""
    return docker_state.credentials(docker.from_env(), TARGET, endpoint)


def answers(port: int, key: str, *, deployment: str, version: str) -> bool:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/score",
        data=b'{"x": 1}',
        method="POST",
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "azureml-model-deployment": deployment,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return bool(json.loads(answer.read()).get("version") == version)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def until_answers(started: float, state: Path, *, deployment: str, version: str) -> float:
    creds = credentials("bench-push-ep")
    while time.monotonic() - started < 600:
        if answers(
            int(creds["port"]), str(creds["primary_key"]), deployment=deployment, version=version
        ):
            return time.monotonic() - started
        time.sleep(0.05)
    raise SystemExit("the new version never answered")


def by_hand(client: docker.DockerClient, repo: Path, *, env_image: str, version: str) -> float:
    """What a person does: build the thin layer, run it, poll until the server answers."""
    with tempfile.TemporaryDirectory() as context:
        ctx = Path(context)
        subprocess.run(["cp", "-r", str(repo / "src"), str(ctx / "src")], check=True)
        subprocess.run(["cp", "-r", str(repo / "models"), str(ctx / "models")], check=True)
        (ctx / "src" / "score.py").write_text(
            (repo / "src" / "score.py")
            .read_text()
            .replace('VERSION = "', f'VERSION = "{version}-hand')
        )
        (ctx / "Dockerfile").write_text(
            f"FROM {env_image}\n"
            "COPY src /var/azureml-app/src\n"
            f"COPY models/sklearn-regression/v1 {MODEL_DIR}/v1\n"
            f"ENV AZUREML_MODEL_DIR={MODEL_DIR} "
            "AML_APP_ROOT=/var/azureml-app/src AZUREML_ENTRY_SCRIPT=score.py\n"
            "WORKDIR /var/azureml-app/src\n"
            'CMD ["/opt/venv/bin/azmlinfsrv", "--entry_script", "score.py", "--port", "5001"]\n'
        )
        started = time.monotonic()
        image, _ = client.images.build(path=str(ctx), tag=f"bench-by-hand:{version}", rm=True)
        container = client.containers.run(
            image.id, detach=True, network_mode="none", labels={"reconciler.bench": "1"}
        )
        try:
            while time.monotonic() - started < 600:
                if container.exec_run(["/opt/venv/bin/python", "-c", PROBE]).exit_code == 0:
                    return time.monotonic() - started
                time.sleep(0.05)
            raise SystemExit("by hand: never ready")
        finally:
            container.remove(force=True)


def env_image_of(client: docker.DockerClient) -> str:
    for c in client.containers.list(
        filters={"label": f"reconciler.target={TARGET}"}, ignore_removed=True
    ):
        if c.labels.get("reconciler.role") == "instance":
            parent = c.image.attrs.get("Parent") or ""
            labels = c.image.labels
            return str(labels.get("reconciler.environment.image") or parent)
    raise SystemExit("no instance to find the environment image from")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--short", action="store_true", help="one run")
    args = parser.parse_args()
    if short_requested():
        args.repeat = 1
    why = docker_available()
    if why is not None:
        print(f"bench/push_to_serving.py needs Docker: {why}")
        skipped(BENCH, "push to serving", why)
        return
    client = docker.from_env()
    with tempfile.TemporaryDirectory() as tmp:
        root, state = Path(tmp) / "repo", Path(tmp) / "state"
        repo = RepoBuilder(root)
        repo.write_yaml(
            "reconciler.yaml",
            {
                "targets": {TARGET: {"type": "docker", "router_port_range": [18800, 18899]}},
                "default_target": TARGET,
            },
        )
        repo.basics()
        repo.endpoint("bench-push-ep", traffic={"blue": 100})
        repo.deployment("bench-push-ep", "blue", instance_count=1)
        repo.commit("base")
        try:
            until_answers(reconcile(root, state), state, deployment="blue", version="1")
            env_image = env_image_of(client)
            code_ours, code_hand, new_ours, new_hand = [], [], [], []
            for n in range(args.repeat):
                version = f"c{n}"
                repo.code(version=version)
                repo.commit(f"code {version}")
                code_ours.append(
                    until_answers(reconcile(root, state), state, deployment="blue", version=version)
                )
                code_hand.append(by_hand(client, root, env_image=env_image, version=version))
                # A new deployment with code of its own: its thin layer is built, only the
                # environment is cached.
                name = f"new{n}"
                repo.write(f"src-{name}/score.py", (root / "src" / "score.py").read_text())
                repo.deployment("bench-push-ep", name, instance_count=1, code=f"../../src-{name}")
                repo.commit(f"deployment {name}")
                new_ours.append(
                    until_answers(reconcile(root, state), state, deployment=name, version=version)
                )
                new_hand.append(by_hand(client, root, env_image=env_image, version=f"{version}n"))
                repo.remove(f"endpoints/bench-push-ep/{name}.yml")
                repo.commit(f"remove {name}")
                reconcile(root, state)
        finally:
            remove_target(client, TARGET)

    def row(label: str, ours: list[float], hand: list[float]) -> str:
        o, h = statistics.median(ours), statistics.median(hand)
        return (
            f"{label}: ours {o:.2f} s, by hand {h:.2f} s, overhead {100 * (o - h) / h:+.0f}% "
            f"(runs: ours {', '.join(f'{x:.1f}' for x in ours)}; "
            f"by hand {', '.join(f'{x:.1f}' for x in hand)})"
        )

    print(row("(a) code-only change", code_ours, code_hand))
    print(row("(b) new deployment, environment cached", new_ours, new_hand))
    print("goal: overhead <= +20%")
    for label, ours, hand in (
        ("(a) code-only change, push to serving", code_ours, code_hand),
        ("(b) new deployment, environment cached, push to serving", new_ours, new_hand),
    ):
        emit(
            BENCH,
            label,
            statistics.median(ours),
            "s",
            reference="docker build + run by hand",
            reference_value=statistics.median(hand),
            goal="<= 1.2x",
        )


if __name__ == "__main__":
    main()
