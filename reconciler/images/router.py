"""The image of the endpoint router: the local Python base, the router's few packages
installed offline from the wheelhouse, and this package's own code on top.

Tagged by the content of the code, so a new version of the reconciler gets a new router
image and an unchanged one reuses it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import docker

import reconciler
from reconciler.images.baseimage import (
    BuildLog,
    ProgressCallback,
    local_image_id,
    report,
)
from reconciler.images.layers import (
    _add_tree,
    _commit_layer,
    _context_tar,
    _label_line,
    build_environment_image,
    image_labels,
)
from reconciler.model.specs import EnvironmentSpec

ROUTER_REPOSITORY = "reconciler-router"
# What `python -m reconciler.router` imports; pinned to the versions this process runs
# with, so the router in a container behaves as the one the tests ran.
ROUTER_PACKAGES = (
    "aiohttp",
    "httptools",
    "prometheus-client",
    "structlog",
    "uvloop",
    "watchfiles",
)
CODE_DIR = "/opt/reconciler"
# What a router image can do, on its label: the target replaces a router that cannot do
# what an endpoint needs (one from before the label is level 1).
ROUTER_LEVEL_LABEL = "reconciler.router-level"
PROBING_LEVEL = 2  # runs the readiness and liveness checks of custom containers
# Level 3 came with two abilities at once (no router image had one without the other):
SHADOW_TOLERANCE_LEVEL = 3  # reads `shadow_comparison` (a rollout policy's tolerances)
STATE_DIGEST_LEVEL = 3  # answers `/-/state-digest` (router/statefiles.py)
ROUTER_LEVEL = 3


def router_requirements() -> tuple[str, ...]:
    pinned = []
    for name in ROUTER_PACKAGES:
        try:
            pinned.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pinned.append(name)
    return tuple(pinned)


def _package_root() -> Path:
    return Path(reconciler.__file__).resolve().parent


def code_digest(root: Path) -> str:
    h = hashlib.sha256()
    for file in sorted(root.rglob("*.py")):
        if "__pycache__" in file.parts:
            continue
        h.update(file.relative_to(root).as_posix().encode() + b"\0")
        h.update(file.read_bytes())
    return h.hexdigest()[:16]


def ensure_router_image(
    client: docker.DockerClient,
    *,
    base_image: str,
    wheel_cache: Path,
    progress: ProgressCallback | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """The tag of the router image, built unless it exists. `labels` go on the containers
    the build makes (layers.build_labels: the target's, for the cleanup of a killed build)."""
    requirements = router_requirements()
    extra_labels = dict(labels or {})
    env = EnvironmentSpec(
        name="reconciler-router",
        version="1",
        image=base_image,
        pip_packages=requirements,
        digest="router:" + ",".join(requirements),
    )
    env_image = build_environment_image(
        client,
        env,
        repo_root=Path("."),
        base_image=base_image,
        wheel_cache=wheel_cache,
        progress=progress,
        pull=False,
        inference_server=False,
        labels=extra_labels,
    )
    env_id = local_image_id(client, env_image)
    assert env_id is not None
    root = _package_root()
    tag = f"{ROUTER_REPOSITORY}:{code_digest(root)}-{env_id.removeprefix('sha256:')[:8]}"
    if local_image_id(client, tag) is not None:
        return tag
    report(progress, "router_image_build", f"router image {tag}", tag=tag)
    with _context_tar() as (layer, tar):
        _add_tree(tar, root, f"{CODE_DIR.lstrip('/')}/reconciler")
        tar.close()
        layer.seek(0)
        _commit_layer(
            client,
            env_id,
            layer,
            tag=tag,
            changes=[
                f"ENV PYTHONPATH={CODE_DIR}",
                "ENV PYTHONUNBUFFERED=1",
                'ENTRYPOINT ["/opt/venv/bin/python", "-m", "reconciler.router"]',
                'CMD ["--config", "/etc/reconciler-router/router.json"]',
                f"LABEL reconciler.kind=router {ROUTER_LEVEL_LABEL}={ROUTER_LEVEL}",
                *([_label_line(image_labels(extra_labels))] if extra_labels else []),
            ],
            labels=extra_labels,
            build_log=BuildLog("image_build_step", progress, tag=tag),
            summary="the reconciler package",
        )
    return tag
