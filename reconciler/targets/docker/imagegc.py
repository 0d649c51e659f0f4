"""Clearing the images a Docker target built that no deployment uses any more.

Every update of a deployment builds a thin image (`reconciler-app:HASH`), every new
environment an environment image (`reconciler-env:HASH`); nothing else removes them. After a
build and after a deployment is deleted, the target clears what is out of its retention,
and `reconcile gc` does it on demand.

What is considered: only images labelled by our builds (managed-by this tool, `target` this
target, kind `deployment` or `environment`, tagged only `reconciler-app` / `reconciler-env`),
built for this repository when the image says which (older builds do not say). Never an
image any container on the host uses (running or stopped, of any target), never the base
or router image (their kind is not one of ours), never an image someone tagged otherwise.
Of the thin images, the newest `keep` per deployment are kept (a quick rollback needs no
build); images built before they were labelled with their deployment count as one group.
An environment image is kept while a kept thin image is built on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import docker
import docker.errors
import structlog

from reconciler.model.specs import DeploymentSpec

log = structlog.get_logger(__name__)

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


def _image(attrs: Mapping[str, object], tags: Iterable[str]) -> BuiltImage:
    labels = attrs.get("Config") or {}
    found = (labels.get("Labels") if isinstance(labels, dict) else None) or {}
    endpoint, deployment = found.get(BUILT_FOR_ENDPOINT), found.get(BUILT_FOR_DEPLOYMENT)
    return BuiltImage(
        id=str(attrs.get("Id")),
        tags=tuple(sorted(tags)),
        kind=str(found.get(KIND_LABEL, "")),
        created=str(attrs.get("Created", "")),
        size=int(str(attrs.get("Size") or 0)),
        deployment=f"{endpoint}/{deployment}" if endpoint and deployment else "",
        environment_image=str(found.get(ENV_IMAGE_LABEL, "")),
        repository=str(found.get(BUILT_FOR_REPOSITORY, "")),
    )


def target_images(
    client: docker.DockerClient, *, target: str, repository: str | None
) -> list[BuiltImage]:
    """The images this target built for this repository, and none that anyone else may own."""
    listed = client.images.list(
        filters={"label": [f"{MANAGED_BY}={MANAGER}", f"{TARGET_LABEL}={target}"]}
    )
    found: list[BuiltImage] = []
    for raw in listed:
        image = _image(raw.attrs, raw.tags)
        if image.kind not in ("deployment", "environment"):
            continue  # the router image, or anything else that is not a build of a deployment
        if not image.tags or any(t.split(":")[0] not in OUR_REPOSITORIES for t in image.tags):
            continue  # someone tagged it (or untagged it): theirs now
        if image.repository and repository and image.repository != repository:
            continue  # another repository's deployment, on a target of the same name
        found.append(image)
    return found


def thin_images_on_host(client: docker.DockerClient) -> dict[str, str]:
    """Thin image id -> its environment image id, of every target on the host."""
    listed = client.images.list(
        filters={"label": [f"{MANAGED_BY}={MANAGER}", f"{KIND_LABEL}=deployment"]}
    )
    found: dict[str, str] = {}
    for raw in listed:
        image = _image(raw.attrs, raw.tags)
        if image.environment_image:
            found[image.id] = image.environment_image
    return found


def images_in_use(client: docker.DockerClient) -> frozenset[str]:
    """Ids of the images of every container on the host, running or not, of any target."""
    containers = client.containers.list(all=True, ignore_removed=True)
    return frozenset(str(c.attrs.get("Image", "")) for c in containers)


def collect(
    client: docker.DockerClient,
    *,
    target: str,
    repository: str | None,
    keep: int,
    dry_run: bool = False,
    protect: Iterable[str] = (),
) -> Collected:
    """Remove the images of this target out of retention (none with dry_run).

    protect: names or ids never removed whatever they are (the base image in use).
    """
    images = target_images(client, target=target, repository=repository)
    protected: set[str] = set()
    for name in protect:
        with contextlib.suppress(docker.errors.ImageNotFound, docker.errors.APIError):
            protected.add(str(client.images.get(name).id))
    in_use = images_in_use(client) | protected
    remove, kept = choose(
        images, in_use=frozenset(in_use), keep=keep, built_on=thin_images_on_host(client)
    )
    if dry_run:
        return Collected(tuple(remove), tuple(kept))
    removed: list[BuiltImage] = []
    failed: list[tuple[BuiltImage, str]] = []
    for image in remove:
        try:
            # By tag, never forced: the engine refuses an image a container uses (one
            # started since the listing) or one with images built on it.
            for tag in image.tags:
                client.images.remove(tag, force=False, noprune=False)
            removed.append(image)
            log.info("image_removed", image=image.name, deployment=image.deployment)
        except docker.errors.ImageNotFound:
            removed.append(image)
        except docker.errors.APIError as err:
            failed.append((image, str(err.explanation or err)))
    return Collected(tuple(removed), tuple(kept), tuple(failed))
