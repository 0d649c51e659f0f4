"""`reconcile` (apply) runs passes until the target has converged, through the command line,
against the fake Kubernetes API server reached through a kubeconfig: `--no-wait` returns
after one pass with exit code 3 while a rollout is in progress, status says what it waits
for, a later `reconcile` continues from what the cluster shows, and `--timeout` ends the
wait with exit code 1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from kube_fake import FakeKubernetes, apply_rev, failures, make_target, serve
from repo_builder import RepoBuilder

from reconciler.cli import EXIT_IN_PROGRESS, main
from reconciler.gitsource import DEFAULT_STATUS_BRANCH
from reconciler.targets.kubernetes import manifests as m

EP = "my-endpoint"
# What the inference server writes when init() raises (the pod's attempt before a restart).
INIT_FAILED_LOG = """\
2026-12-06 13:51:26,880 E [12] azmlinfsrv - User's init function failed
2026-12-06 13:51:26,881 E [12] azmlinfsrv - Encountered Exception Traceback (most recent call last):
  File "/opt/venv/lib/python3.11/site-packages/azureml_server/user_script.py", line 1, in f
    self._user_init()
  File "/var/azureml-app/src/score.py", line 7, in init
    model = open(path, "rb").read()
FileNotFoundError: [Errno 2] No such file or directory: '/var/azureml-models/m/1/model.pkl'
"""
BLUE = m.deployment_object_name(EP, "blue")


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with serve() as running:
        yield running


def kube_repo(repo: RepoBuilder, fake: FakeKubernetes, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
                "users": [{"name": "tester", "user": {"token": "not-checked"}}],
                "contexts": [
                    {"name": "fake", "context": {"cluster": "fake", "user": "tester"}},
                ],
                "current-context": "fake",
            }
        )
    )
    repo.write_yaml(
        "reconciler.yaml",
        {
            "targets": {
                "cluster": {
                    "type": "kubernetes",
                    "namespace": "ml",
                    "kubeconfig": str(kubeconfig),
                    "registry": "127.0.0.1:5000/ml",
                    "config_propagation_s": 0,
                }
            }
        },
    )


def status_doc(repo: RepoBuilder) -> dict[str, object]:
    doc = yaml.safe_load(repo.git("show", f"{DEFAULT_STATUS_BRANCH}:status/{EP}.yaml"))
    assert isinstance(doc, dict)
    return doc


def test_no_wait_exits_3_in_progress_and_the_next_reconcile_converges(
    repo: RepoBuilder, fake: FakeKubernetes, tmp_path: Path
) -> None:
    kube_repo(repo, fake, tmp_path)
    repo.basics()
    repo.endpoint(EP, traffic={"blue": 100})
    repo.deployment(EP, "blue", instance_count=2)
    repo.commit("blue")
    # The first rollout through the test's own target (its images are planned, not built).
    assert not failures(apply_rev(repo, make_target(fake)))

    # A scale-up the deployment controller does not finish yet: one pass, in progress.
    repo.deployment(EP, "blue", instance_count=3)
    repo.commit("three instances")
    fake.hold(BLUE)
    runner = CliRunner(env={"XDG_STATE_HOME": str(tmp_path / "state")})
    base = ["--repo", str(repo.root), "--log-format", "json"]
    started = runner.invoke(main, [*base, "--no-wait", "--output", "json"])
    assert started.exit_code == EXIT_IN_PROGRESS, started.output
    assert "pass 1: in progress: scale_deployment my-endpoint/blue: waiting for" in started.stderr
    assert "not converged yet (--no-wait)" in started.stderr
    doc = status_doc(repo)
    assert doc["provisioning_state"] == "Updating"
    assert doc["in_progress_steps"] == [
        {
            "action": "scale_deployment",
            "deployment": "blue",
            "progress": "waiting for my-endpoint/blue rolled out (3 replica(s))",
        }
    ]
    shown = runner.invoke(main, ["status", "--repo", str(repo.root)])
    assert "in progress: scale_deployment my-endpoint/blue (waiting for" in shown.output

    # Still held: a reconcile with a short --timeout gives up with exit 1, saying why.
    timed_out = runner.invoke(main, [*base, "--timeout", "1"])
    assert timed_out.exit_code == 1, timed_out.output
    assert "not converged after 1 s (--timeout)" in timed_out.stderr

    # The controller finishes: a reconcile plans from what runs (the route's slots follow
    # the rollout), converges, and exits 0.
    fake.release(BLUE)
    finished = runner.invoke(main, [*base])
    assert finished.exit_code == 0, finished.output
    assert "done: repair_deployment my-endpoint/blue" in finished.stderr
    doc = status_doc(repo)
    assert doc["provisioning_state"] == "Succeeded"
    assert "in_progress_steps" not in doc
    assert doc["deployments"]["blue"]["ready_instances"] == 3  # type: ignore[index]
    again = runner.invoke(main, [*base, "--dry-run", "--output", "json"])
    assert again.exit_code == 0, again.output


def test_a_deployment_that_cannot_start_ends_reconcile_with_exit_1_and_its_reason(
    repo: RepoBuilder, fake: FakeKubernetes, tmp_path: Path
) -> None:
    kube_repo(repo, fake, tmp_path)
    repo.basics()
    repo.endpoint(EP, traffic={"blue": 100})
    repo.deployment(EP, "blue")
    repo.commit("blue")
    assert not failures(apply_rev(repo, make_target(fake)))
    # A scale-up whose new pods crash: no step of a later pass fails (no traffic moves),
    # but the deployment is Failed on the cluster, so the run has not converged.
    repo.deployment(EP, "blue", instance_count=2)
    repo.commit("two instances")
    fake.break_deployment(BLUE, previous_log=INIT_FAILED_LOG)
    runner = CliRunner(env={"XDG_STATE_HOME": str(tmp_path / "state")})
    done = runner.invoke(main, ["--repo", str(repo.root), "--log-format", "json"])
    assert done.exit_code == 1, done.output
    assert "my-endpoint/blue is Failed: pod " in done.stderr
    assert "CrashLoopBackOff" in done.stderr
    # Why: the exception of the attempt before the restart, and how to read it all.
    said = "the scoring script raised FileNotFoundError: [Errno 2] No such file or directory: "
    assert said in done.stderr, done.stderr
    assert '(score.py line 7, in init: model = open(path, "rb").read())' in done.stderr
    assert f"whole log: `reconcile logs {EP} blue --previous`" in done.stderr
    status = runner.invoke(main, ["status", "--repo", str(repo.root)])
    assert said in status.output, status.output
    assert status_doc(repo)["deployments"]["blue"]["provisioning_state"] == "Failed"  # type: ignore[index]
