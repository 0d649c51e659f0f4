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
from collections.abc import Iterable, Mapping
from pathlib import Path

import docker
import docker.errors

from reconciler.images.retention import (
    BUILT_FOR_DEPLOYMENT,
    BUILT_FOR_ENDPOINT,
    BUILT_FOR_REPOSITORY,
    ENV_IMAGE_LABEL,
    KIND_LABEL,
    MANAGED_BY,
    MANAGER,
    OUR_REPOSITORIES,
    TARGET_LABEL,
    BuiltImage,
    Collected,
    choose,
)
from reconciler.logs import get_logger
from reconciler.targets.ownership import made_here, same_repository

log = get_logger(__name__)


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
    client: docker.DockerClient,
    *,
    target: str,
    repository: str | None,
    checkout: Path | None = None,
) -> list[BuiltImage]:
    """The images this target built for this repository, and none that anyone else may own.
    This repository as ownership tells it (targets/ownership.py): a clone URL in other case,
    and with `checkout`, that checkout as it was named before it had a remote."""
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
        if image.repository and repository and not _same(image.repository, repository, checkout):
            continue  # another repository's deployment, on a target of the same name
        found.append(image)
    return found


def _same(owner: str, repository: str, checkout: Path | None) -> bool:
    if checkout is None:
        return same_repository(owner, repository)
    return made_here(owner, repository=repository, checkout=checkout)


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
    checkout: Path | None = None,
) -> Collected:
    """Remove the images of this target out of retention (none with dry_run).

    protect: names or ids never removed whatever they are (the base image in use).
    """
    images = target_images(client, target=target, repository=repository, checkout=checkout)
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
