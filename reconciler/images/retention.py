"""Which images a target keeps and which it may remove: labels and the choice, pure.

Every update of a deployment builds a thin image, every new environment an environment
image. A target keeps the newest `keep` thin images per deployment (a quick rollback needs
no build) and every image a container uses; an environment image stays while a kept thin
image is built on it. The Docker target applies the choice (targets/docker/imagegc.py);
what the images are and which to keep is the same for every target that builds them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reconciler.model.specs import DeploymentSpec

_PREFIX = "reconciler."
MANAGED_BY, MANAGER = f"{_PREFIX}managed-by", "ml-endpoint-reconciler"
TARGET_LABEL = f"{_PREFIX}target"
KIND_LABEL = f"{_PREFIX}kind"
ENV_IMAGE_LABEL = f"{_PREFIX}environment.image"
# Which deployment a thin image was built for (distinct from the instance labels
# `reconciler.endpoint`/`deployment`: a container made of the image inherits its labels).
BUILT_FOR_ENDPOINT = f"{_PREFIX}built-for.endpoint"
BUILT_FOR_DEPLOYMENT = f"{_PREFIX}built-for.deployment"
BUILT_FOR_REPOSITORY = f"{_PREFIX}built-for.repository"
OUR_REPOSITORIES = ("reconciler-app", "reconciler-env")
DEFAULT_RETENTION = 3


def built_for_labels(spec: DeploymentSpec, *, repository: str | None) -> dict[str, str]:
    """Labels a thin image carries from its build: the deployment and repository it is for."""
    labels = {BUILT_FOR_ENDPOINT: spec.endpoint_name, BUILT_FOR_DEPLOYMENT: spec.name}
    if repository:
        labels[BUILT_FOR_REPOSITORY] = repository
    return labels


@dataclass(frozen=True, slots=True)
class BuiltImage:
    """One image of ours as the engine lists it."""

    id: str
    tags: tuple[str, ...]
    kind: str  # deployment (thin) or environment
    created: str  # RFC 3339, UTC
    size: int
    deployment: str  # "ENDPOINT/DEPLOYMENT", "" when the image does not say
    environment_image: str  # a thin image's environment image id
    repository: str  # the repository it was built for, "" when the image does not say

    @property
    def name(self) -> str:
        return self.tags[0] if self.tags else self.id[:19]

    @property
    def age_key(self) -> str:
        """`created` comparable as text: the engine trims the nanoseconds' trailing zeros."""
        whole, dot, rest = self.created.rstrip("Z").partition(".")
        return f"{whole}.{rest.ljust(9, '0')}" if dot else f"{whole}.000000000"


@dataclass(frozen=True, slots=True)
class Collected:
    """What a collection removed (or would remove, dry run) and what it kept, and why."""

    removed: tuple[BuiltImage, ...]
    kept: tuple[tuple[BuiltImage, str], ...]
    failed: tuple[tuple[BuiltImage, str], ...] = ()

    @property
    def freed_bytes(self) -> int:
        return sum(i.size for i in self.removed)


def choose(
    images: Sequence[BuiltImage],
    *,
    in_use: frozenset[str],
    keep: int,
    built_on: Mapping[str, str] | None = None,
) -> tuple[list[BuiltImage], list[tuple[BuiltImage, str]]]:
    """(images to remove, images kept with the reason). Thin images first, then
    environment images, so that an environment image goes after the images built on it.

    built_on: thin image id -> its environment image id, for every thin image on the host
    (any target's: images are shared by content); an environment image stays while one of
    them that is not removed is built on it.
    """
    remove: list[BuiltImage] = []
    kept: list[tuple[BuiltImage, str]] = []
    groups: dict[str, list[BuiltImage]] = {}
    for image in images:
        if image.kind == "deployment":
            groups.setdefault(image.deployment, []).append(image)
    kept_thin: list[BuiltImage] = []
    for deployment, group in sorted(groups.items()):
        for rank, image in enumerate(sorted(group, key=lambda i: i.age_key, reverse=True)):
            if image.id in in_use:
                kept.append((image, "in use by a container"))
                kept_thin.append(image)
            elif rank < keep:
                who = deployment or "deployments built before images were labelled"
                kept.append((image, f"one of the {keep} newest of {who}"))
                kept_thin.append(image)
            else:
                remove.append(image)
    removed = {i.id for i in remove}
    bases = {i.environment_image for i in kept_thin} | {
        env for thin, env in (built_on or {}).items() if thin not in removed
    }
    for image in sorted(images, key=lambda i: i.age_key, reverse=True):
        if image.kind != "environment":
            continue
        if image.id in in_use:
            kept.append((image, "in use by a container"))
        elif image.id in bases:
            kept.append((image, "a deployment image that stays is built on it"))
        else:
            remove.append(image)
    return remove, kept
