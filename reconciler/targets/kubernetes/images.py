"""Images of a Kubernetes target: built by the shared builders of reconciler.images with the
local Docker Engine, pushed to the registry the target names, under content-addressed tags.

The tag of a deployment's image is a hash of what goes into it (environment, code, model,
where they go; `manifests.image_key`), so `reconcile render` names the same image that
apply pushes, without building anything, and a tag that the registry already has is never
built again: CI can push the images and the in-cluster daemon (which has no Docker Engine)
only checks that they are there (`build_images: false`).

Custom-container environments run their own image as it is (unless the deployment adds
code, which goes into a thin layer on top); when such a deployment has a model, a small
image holding the model files is pushed, and an init container copies them into the pod.
"""

from __future__ import annotations

import functools
import hashlib
import json
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from reconciler.model.errors import ErrorCode
from reconciler.model.specs import DeploymentSpec
from reconciler.nocode.triton import serves_triton
from reconciler.targets.base import OutputLine, ProgressCallback, TargetError
from reconciler.targets.kubernetes.manifests import DeploymentImage, image_name, plan_image
from reconciler.targets.kubernetes.options import KubernetesOptions

MANIFEST_TYPES = ",".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    )
)


class ImageSource(Protocol):
    """Where a target gets the image names its manifests use."""

    def router_image(self, say: ProgressCallback) -> str: ...

    def deployment_image(self, spec: DeploymentSpec, say: ProgressCallback) -> DeploymentImage: ...


@functools.cache
def router_tag() -> str:
    """Content address of the router image: the reconciler's code and the pinned packages.

    Worked out once per process: the code a process runs does not change under it.
    """
    # reconciler.images.router imports the Docker SDK; render runs where only the names are
    # needed, so the digest is computed here from the same inputs (imported late).
    import reconciler
    from reconciler.images.router import code_digest, router_requirements

    root = Path(reconciler.__file__).resolve().parent
    packages = hashlib.sha256(json.dumps(router_requirements()).encode()).hexdigest()[:8]
    return f"{code_digest(root)}-{packages}"


def router_reference(options: KubernetesOptions) -> str:
    return options.router_image or image_name(options, "reconciler-router", router_tag())


class PlannedImages:
    """The names only: nothing is built or pushed (render, and tests of the target)."""

    def __init__(self, options: KubernetesOptions) -> None:
        self.options = options

    def router_image(self, say: ProgressCallback) -> str:
        return router_reference(self.options)

    def deployment_image(self, spec: DeploymentSpec, say: ProgressCallback) -> DeploymentImage:
        return plan_image(spec, self.options)


def split_reference(reference: str) -> tuple[str, str]:
    """`host:5000/ml/app:tag` -> (`host:5000/ml/app`, `tag`)."""
    slash = reference.rfind("/")
    colon = reference.rfind(":")
    if colon > slash:
        return reference[:colon], reference[colon + 1 :]
    return reference, "latest"


def registry_has(reference: str, *, timeout: float = 10.0) -> bool:
    """Whether the registry holds `reference` (HEAD of its manifest). False when it cannot
    tell (no registry part, authentication needed, unreachable): then the image is built
    and pushed, and the push says what is wrong."""
    repository, tag = split_reference(reference)
    host, _, name = repository.partition("/")
    if not name or not ("." in host or ":" in host or host == "localhost"):
        return False
    local = host.split(":")[0] in ("127.0.0.1", "localhost", "[::1]")
    scheme = "http" if local else "https"
    request = urllib.request.Request(
        f"{scheme}://{host}/v2/{name}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": MANIFEST_TYPES},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return int(answer.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def push_image(client: Any, local: str, reference: str, say: ProgressCallback) -> None:
    """Tag a local image as `reference` and push it; TargetError(ImagePushFailure)."""
    import docker.errors

    repository, tag = split_reference(reference)
    try:
        client.images.get(local).tag(repository, tag=tag)
        say(f"pushing {reference}")
        for line in client.api.push(repository, tag=tag, stream=True, decode=True):
            if isinstance(line, dict) and line.get("error"):
                raise TargetError(
                    f"push of {reference} failed: {line['error']}",
                    code=ErrorCode.IMAGE_PUSH_FAILURE,
                )
    except docker.errors.DockerException as exc:
        raise TargetError(
            f"push of {reference} failed: {exc}", code=ErrorCode.IMAGE_PUSH_FAILURE
        ) from None


class RegistryImages:
    """Builds with the shared image builders (reconciler.images), pushes to the registry."""

    def __init__(
        self, options: KubernetesOptions, *, repo_root: Path, docker_client: Any = None
    ) -> None:
        self.options = options
        self.repo_root = repo_root
        self._docker = docker_client
        self._known: set[str] = set()  # references seen in the registry during this process

    def _client(self) -> Any:
        if self._docker is None:
            import docker
            import docker.errors

            try:
                self._docker = docker.from_env(timeout=600)
                self._docker.ping()
            except docker.errors.DockerException as exc:
                raise TargetError(
                    f"images must be built but no Docker Engine is reachable ({exc}); push "
                    "them from CI with `reconcile render --push-images`",
                    code=ErrorCode.IMAGE_BUILD_FAILURE,
                ) from None
        return self._docker

    def _present(self, reference: str) -> bool:
        if reference in self._known or registry_has(reference):
            self._known.add(reference)
            return True
        if not self.options.build_images:
            raise TargetError(
                f"image {reference} is not in the registry and build_images is false; "
                "push it with `reconcile render --push-images` where Docker runs",
                code=ErrorCode.IMAGE_MISSING,
            )
        return False

    def _base(self, say: ProgressCallback) -> str:
        from reconciler.images.baseimage import BASE_IMAGE, ensure_base_image

        return ensure_base_image(
            self._client(), self.options.base_image or BASE_IMAGE, progress=_progress(say)
        )

    def router_image(self, say: ProgressCallback) -> str:
        reference = router_reference(self.options)
        if self.options.router_image or self._present(reference):
            return reference
        from reconciler.images.router import ensure_router_image

        local = ensure_router_image(
            self._client(),
            base_image=self._base(say),
            wheel_cache=self.options.wheel_cache,
            progress=_progress(say),
        )
        push_image(self._client(), local, reference, say)
        self._known.add(reference)
        return reference

    def deployment_image(self, spec: DeploymentSpec, say: ProgressCallback) -> DeploymentImage:
        planned = plan_image(spec, self.options)
        if planned.built and not self._present(planned.image):
            local = self._build(spec, say)
            push_image(self._client(), local, planned.image, say)
            self._known.add(planned.image)
        if planned.model_image is not None and not self._present(planned.model_image):
            local = self._build_model(spec, say)
            push_image(self._client(), local, planned.model_image, say)
            self._known.add(planned.model_image)
        return planned

    def _build(self, spec: DeploymentSpec, say: ProgressCallback) -> str:
        from reconciler.images.baseimage import DEFAULT_IMAGE_MAP, ImageBuildError
        from reconciler.images.condamap import CondaMappingError
        from reconciler.images.layers import (
            build_deployment_image,
            build_environment_image,
        )

        client = self._client()
        try:
            env_image = build_environment_image(
                client,
                spec.environment,
                repo_root=self.repo_root,
                base_image=self._base(say),
                wheel_cache=self.options.wheel_cache,
                progress=_progress(say),
                image_map={**DEFAULT_IMAGE_MAP, **dict(self.options.image_map)},
                # Triton serves a no-code triton_model: no Azure ML inference server in it.
                inference_server=not serves_triton(spec),
            )
            return build_deployment_image(
                client, spec, env_image=env_image, repo_root=self.repo_root, progress=_progress(say)
            )
        except (ImageBuildError, CondaMappingError) as exc:
            raise TargetError(
                str(exc), code=ErrorCode.IMAGE_BUILD_FAILURE, log_tail=getattr(exc, "log_tail", "")
            ) from None

    def _build_model(self, spec: DeploymentSpec, say: ProgressCallback) -> str:
        """The model files on the local base image, where the custom container expects
        them (model_mount_path); the init container copies them from there."""
        from reconciler.images.baseimage import ImageBuildError
        from reconciler.images.layers import build_deployment_image

        try:
            return build_deployment_image(
                self._client(),
                replace(spec, code=None),
                env_image=self._base(say),
                repo_root=self.repo_root,
                progress=_progress(say),
            )
        except ImageBuildError as exc:
            raise TargetError(str(exc), code=ErrorCode.IMAGE_BUILD_FAILURE) from None


def _progress(say: ProgressCallback) -> Any:
    def callback(event: str, message: str) -> None:
        # As on Docker: a build's own output lines are detail (shown with -v), phases not.
        say(OutputLine(message) if event.endswith("_step") else message)

    return callback
