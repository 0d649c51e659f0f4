"""targets.docker.access (what `reconcile invoke` and `reconcile credentials` read over the
engine's socket) on the real engine, against an endpoint's state as a hand or a fault may
leave it: the files spoiled into JSON of another shape. Reading them must end in None (the
caller then opens the whole target, which names the problem and repairs it), never in an
exception out of the command.

The endpoint is made by hand, not applied: a state volume labelled as the target labels
one, and a holder container that never runs (no router, no instance), which is all the
reader needs; both are removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from reconciler.endpoints.credentials import (
    EndpointCredentials,
    credentials_to_json,
    new_credentials,
)
from reconciler.images.baseimage import BASE_IMAGE
from reconciler.targets.docker.access import MOUNT, endpoint_access
from reconciler.targets.docker.options import DockerOptions
from reconciler.targets.docker.state import (
    CREDENTIALS,
    DEPLOYMENTS,
    ENDPOINT,
    NOTES,
    ROUTER_CONFIG,
    write_files,
)
from reconciler.targets.docker.target import DockerTarget

pytestmark = [pytest.mark.docker]

L = "reconciler."


@contextlib.contextmanager
def _hand_made(
    target: str, *, port: int = 18999, aml_token: bool = False, repository: str | None = None
) -> Iterator[tuple[Any, EndpointCredentials]]:
    """(holder container, keys) of endpoint `ep` of `target`, made by hand with valid
    state (keys, a router config, no deployment) in its state volume; both removed after."""
    client = docker.from_env()
    labels = {
        f"{L}managed-by": "ml-endpoint-reconciler",
        f"{L}target": target,
        f"{L}endpoint": "ep",
        f"{L}role": "state",
    }
    extra = {f"{L}repository": repository} if repository else {}
    volume = client.volumes.create(
        f"rcl-{target}-ep-state",
        labels={**labels, **extra, f"{L}port": str(port), f"{L}metrics-port": str(port - 1)},
    )
    holder = None
    try:
        holder = client.containers.create(
            BASE_IMAGE,
            command=["true"],
            name=f"rcl-{target}-ep-state",
            labels=labels,
            volumes={volume.name: {"bind": MOUNT, "mode": "rw"}},
        )
        mode = "aml_token" if aml_token else "key"
        keys = new_credentials(port=port, metrics_port=port - 1)
        write_files(
            holder,
            {
                ROUTER_CONFIG: json.dumps({"auth_mode": mode}).encode(),
                CREDENTIALS: credentials_to_json(keys),
                DEPLOYMENTS: b"{}",
            },
        )
        yield holder, keys
    finally:
        if holder is not None:
            holder.remove(force=True)
        volume.remove(force=True)


@pytest.fixture
def hand_made() -> Iterator[tuple[str, Any]]:
    """(target name, holder container) of endpoint `ep` made by hand, with valid state."""
    target = f"hostile-access-{secrets.token_hex(4)}"
    with _hand_made(target) as (holder, _):
        yield target, holder


def test_two_targets_and_two_repositories_each_read_only_their_own_endpoint_of_a_name() -> None:
    """Two targets of one engine, each with an endpoint `ep`: each reads its own port,
    auth mode and keys; an endpoint of another repository (same target name) is not read
    (the target says it is not this repository's)."""
    one, two = (f"hostile-access-{secrets.token_hex(4)}" for _ in range(2))
    with (
        _hand_made(one, port=18997, repository="github.com/a/one") as (_, keys_one),
        _hand_made(two, port=18995, aml_token=True) as (_, keys_two),
    ):
        found = {t: endpoint_access(t, "ep", repository="github.com/a/one") for t in (one, two)}
        assert found[one] is not None and found[two] is not None
        assert (found[one].scoring_uri, found[one].auth_mode) == (
            "http://127.0.0.1:18997/score",
            "key",
        )
        assert (found[two].scoring_uri, found[two].auth_mode) == (
            "http://127.0.0.1:18995/score",
            "aml_token",
        )
        assert found[one].credentials == keys_one
        assert found[two].credentials == keys_two
        assert endpoint_access(one, "ep", repository="github.com/b/two") is None


@pytest.mark.parametrize(
    ("path", "content"),
    [
        (ROUTER_CONFIG, b"[]"),
        (ROUTER_CONFIG, b"null"),
        (ROUTER_CONFIG, b"[" * 100_000),
        (DEPLOYMENTS, b"[]"),
        (DEPLOYMENTS, b'"blue"'),
        (DEPLOYMENTS, b'{"blue": {"spec": {}}, "x": ' + b"[" * 100_000 + b"]}"),
    ],
    ids=["config-list", "config-null", "config-deep", "records-list", "records-text", "deep"],
)
def test_state_files_of_another_json_shape_fall_back_to_the_target_without_an_exception(
    hand_made: tuple[str, Any], path: str, content: bytes
) -> None:
    target, holder = hand_made
    found = endpoint_access(target, "ep", repository=None)
    assert found is not None  # the hand-made endpoint reads as one
    assert found.scoring_uri == "http://127.0.0.1:18999/score"
    write_files(holder, {path: content})
    assert endpoint_access(target, "ep", repository=None) is None


@pytest.mark.parametrize(
    "path", [ROUTER_CONFIG, CREDENTIALS, ENDPOINT, DEPLOYMENTS, NOTES], ids=lambda p: p
)
def test_the_target_names_a_state_file_nested_past_json_depth_and_observes_on(
    hand_made: tuple[str, Any], path: str, tmp_path: Path
) -> None:
    """What invoke falls back to: the target observes the endpoint (with a repair), its
    pass does not end in a RecursionError (every endpoint of the target would be unseen)."""
    target_name, holder = hand_made
    write_files(holder, {path: b"[" * 100_000})
    target = DockerTarget(DockerOptions.from_config(target_name, {}), repo_root=tmp_path)
    (endpoint,) = target.observe_endpoint("ep").endpoints
    assert endpoint.repair is not None
    named = {
        ROUTER_CONFIG: "its router config is unreadable (config: not JSON (RecursionError))",
        CREDENTIALS: "its keys are unreadable (not JSON (RecursionError",
    }
    assert named.get(path, "") in endpoint.repair


@pytest.mark.parametrize(
    "clone", ["github.com/org/models", "gitlab.com/Team/Models"], ids=["github", "gitlab"]
)
def test_a_clone_whose_url_differs_only_in_case_reads_the_endpoint_as_its_own(
    clone: str, tmp_path: Path
) -> None:
    """GitHub and GitLab match owner and repository names without regard to case: a clone
    of `https://github.com/Org/Models` is the repository `git@github.com:org/models`
    made the endpoint from (both the fast path of invoke and the target say so)."""
    target_name = f"hostile-access-{secrets.token_hex(4)}"
    maker = "github.com/Org/Models" if clone.startswith("github") else "gitlab.com/team/models"
    with _hand_made(target_name, repository=maker):
        assert endpoint_access(target_name, "ep", repository=clone) is not None
        target = DockerTarget(
            DockerOptions.from_config(target_name, {}), repo_root=tmp_path, repository=clone
        )
        assert [e.name for e in target.observe_endpoint("ep").endpoints] == ["ep"]
        # Another host, or another name, is another repository.
        for other in ("example.com/org/models", f"{clone}2"):
            assert endpoint_access(target_name, "ep", repository=other) is None
            stranger = DockerTarget(
                DockerOptions.from_config(target_name, {}), repo_root=tmp_path, repository=other
            )
            assert stranger.observe_endpoint("ep").endpoints == ()
