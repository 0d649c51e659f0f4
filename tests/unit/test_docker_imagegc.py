"""Which images the Docker target's garbage collection removes: the choice alone, on plain
values (tests/integration/test_docker_first_hour.py runs it on the real engine)."""

from __future__ import annotations

import pytest

from reconciler.images.retention import BuiltImage, choose
from reconciler.targets.base import TargetError
from reconciler.targets.docker.options import DockerOptions


def thin(n: int, deployment: str = "ep/blue", *, env: str = "env-1") -> BuiltImage:
    return BuiltImage(
        id=f"app-{deployment}-{n}",
        tags=(f"reconciler-app:{deployment.replace('/', '-')}-{n}",),
        kind="deployment",
        # Nanoseconds with their trailing zeros trimmed, as the engine writes them.
        created=f"2026-12-06T10:00:0{n}.{'5' if n % 2 else '45'}Z",
        size=1000,
        deployment=deployment,
        environment_image=env,
        repository="",
    )


def environment(name: str, n: int = 0) -> BuiltImage:
    return BuiltImage(
        name, (f"reconciler-env:{name}",), "environment", f"2026-12-06T09:00:0{n}Z", 1, "", "", ""
    )


def ids(images: list[BuiltImage]) -> list[str]:
    return sorted(i.id for i in images)


def test_the_newest_n_per_deployment_are_kept_and_older_ones_removed() -> None:
    images = [thin(n) for n in range(1, 6)] + [thin(n, "ep/green") for n in (1, 2)]
    remove, kept = choose(images, in_use=frozenset(), keep=2)
    assert ids(remove) == ["app-ep/blue-1", "app-ep/blue-2", "app-ep/blue-3"]
    assert {i.id for i, _ in kept} == {
        "app-ep/blue-4",
        "app-ep/blue-5",
        "app-ep/green-1",
        "app-ep/green-2",
    }


def test_an_image_a_container_uses_is_kept_however_old() -> None:
    images = [thin(n) for n in range(1, 5)]
    remove, kept = choose(images, in_use=frozenset({"app-ep/blue-1"}), keep=1)
    assert ids(remove) == ["app-ep/blue-2", "app-ep/blue-3"]
    assert ("in use by a container") in dict((i.id, why) for i, why in kept)["app-ep/blue-1"]


def test_an_environment_image_goes_only_when_no_image_that_stays_is_built_on_it() -> None:
    images = [
        thin(1, env="env-old"),
        thin(2, env="env-new"),
        environment("env-old"),
        environment("env-new"),
        environment("env-shared"),
    ]
    # Another target's thin image (not ours to remove) is built on env-shared.
    remove, _ = choose(
        images, in_use=frozenset(), keep=1, built_on={"theirs": "env-shared", thin(1).id: "env-old"}
    )
    assert ids(remove) == ["app-ep/blue-1", "env-old"]


def test_keep_zero_keeps_only_what_containers_use() -> None:
    images = [thin(1), thin(2), environment("env-1")]
    remove, kept = choose(images, in_use=frozenset({"app-ep/blue-2"}), keep=0)
    assert ids(remove) == ["app-ep/blue-1"]
    assert {i.id for i, _ in kept} == {"app-ep/blue-2", "env-1"}


def test_image_retention_is_a_target_option_of_reconciler_yaml() -> None:
    assert DockerOptions.from_config("local", {}).image_retention == 3
    assert DockerOptions.from_config("local", {"image_retention": 5}).image_retention == 5
    with pytest.raises(TargetError, match=r"targets.local.image_retention: need a count"):
        DockerOptions.from_config("local", {"image_retention": -1})
