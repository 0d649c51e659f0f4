"""Images of deployments: an environment layer per environment, a thin layer per deployment.

The environment layer is the base image with a virtual environment at /opt/venv holding the
environment's Python packages and the inference server. Packages are resolved and
downloaded on the host into a wheelhouse (`pip download` for the image's Python and
platform), copied into a container of the base image that has no network, installed there
with `pip install --no-index`, and the container is committed: an image never needs a
registry or an index. Downloaded wheels are kept in a wheel cache, which later builds try
first with no network at all, so the cache also pins what an unpinned requirement resolved
to the first time.

The thin layer adds the deployment's code and model in the places the runtime contract of
SPEC-REFERENCE.md names, the path variables, and the command that starts the server. Both
are tagged by a hash of what goes into them and reused when the tag exists, so a code-only
change builds only the thin layer (seconds) on top of the same environment image.

Both layers are made by a container and `docker commit` rather than a Dockerfile: with the
classic builder every instruction (COPY, RUN, ENV, LABEL, ...) is a commit of its own, about
three seconds apiece on fuse-overlayfs, and a multi-stage build that keeps the wheels out
of the image copies the whole venv once more. Measured here: 46 s for the Dockerfile, 24 s
for run-and-commit, for the same image; 12 s against 2.5 s for the thin layer.

Every container a build makes (the build container of a layer, the probe of an image's
Python) carries the labels of `build_labels(target)` from its creation: managed-by, the
target's name and role=build. A process killed in the middle of a build (SIGKILL, or a
SIGTERM to a one-shot `reconcile`) leaves that container behind, and the next build of the
target removes it first (`remove_stale_build_containers`). The
images made carry the same labels with role=image (a container made of the image without
labels of its own must never look like a build to be cleared).

An environment with a Docker build context is built as its author wrote it. An `image` that
is not on this machine and cannot be pulled is replaced by a local image: the one an
`image_map` pattern names (the target's configuration), else the local Python base image,
with a warning.
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import docker
import docker.errors

from reconciler.filetree import SKIPPED_DIRS, Digester, DirectoryTree, file_blob_id
from reconciler.images import buildtimes
from reconciler.images.baseimage import (
    BASE_IMAGE,
    DEFAULT_PATH,
    BuildLog,
    ImageBuildError,
    ProgressCallback,
    exclusive,
    local_image_id,
    report,
    split_name,
)
from reconciler.images.condamap import CondaMappingError, conda_to_pip
from reconciler.images.layout import (
    SERVER_PORT,
    VENV,
    DeploymentLayout,
    Serving,
    deployment_layout,
    serving,
)
from reconciler.logs import get_logger
from reconciler.model.specs import DeploymentSpec, EnvironmentSpec, spec_digest
from reconciler.nocode import triton
from reconciler.nocode.mlflowmodel import generated_code

__all__ = [
    "APP_REPOSITORY",
    "ENV_REPOSITORY",
    "BuildLog",
    "CondaMappingError",
    "DeploymentLayout",
    "ImageBuildError",
    "ImagePython",
    "Serving",
    "build_deployment_image",
    "build_environment_image",
    "build_labels",
    "deployment_layout",
    "environment_requirements",
    "remove_stale_build_containers",
    "serving",
]

log = get_logger(__name__)

ENV_REPOSITORY = "reconciler-env"
APP_REPOSITORY = "reconciler-app"
INFERENCE_SERVER = "azureml-inference-server-http"
# Part of every tag: bump it when what the builders put in an image changes (install script,
# config changes, layout), so images made by an older recipe are not reused.
RECIPE = "1"
# A whole build may take long (big wheels), but a daemon that stops answering must not
# hang a reconcile pass forever.
BUILD_TIMEOUT_SECONDS = 1800
LABEL_PREFIX = "reconciler."
# The labels by which a target finds what is its own (targets/docker/target.py reads the same keys).
MANAGED_BY = f"{LABEL_PREFIX}managed-by"
MANAGER = "ml-endpoint-reconciler"
TARGET_LABEL = f"{LABEL_PREFIX}target"
ROLE_LABEL = f"{LABEL_PREFIX}role"
BUILD_ROLE, IMAGE_ROLE = "build", "image"


def build_labels(target_name: str) -> dict[str, str]:
    """Labels of every container the builds of target `target_name` make."""
    return {MANAGED_BY: MANAGER, TARGET_LABEL: target_name, ROLE_LABEL: BUILD_ROLE}


def image_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The labels an image built with the container labels `labels` carries.

    A commit copies the build container's labels into the image, and every container of
    the image inherits them unless it sets its own: role=build there would make any such
    container look like a leftover build to remove.
    """
    found = dict(labels)
    if found.get(ROLE_LABEL) == BUILD_ROLE:
        found[ROLE_LABEL] = IMAGE_ROLE
    return found


def remove_stale_build_containers(client: docker.DockerClient, target_name: str) -> list[str]:
    """Remove the build containers a killed process of target `target_name` left; their names.

    Called before each build, under the target's writer lock (writerlock.py): a build
    runs only inside a step, so every build container of the target is then stale.
    One still running (an install a killed process started) is left until it stops, or
    until it is older than the build timeout, in case a writer without the lock (an older
    version) still waits for it. Best effort: an engine that does not answer fails the
    pass's next call with the reason, not this one.
    """
    filters = {
        "label": [
            f"{MANAGED_BY}={MANAGER}",
            f"{TARGET_LABEL}={target_name}",
            f"{ROLE_LABEL}={BUILD_ROLE}",
        ]
    }
    removed: list[str] = []
    try:
        found = client.containers.list(all=True, filters=filters, ignore_removed=True)
    except (docker.errors.DockerException, OSError) as err:
        log.warning("build_cleanup_failed", target=target_name, error=str(err))
        return removed
    now = time.time()
    for container in found:
        age = now - _created_at(container.attrs.get("Created", ""), default=now)
        if container.status == "running" and age < BUILD_TIMEOUT_SECONDS:
            continue
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            continue  # gone meanwhile: nothing left to remove
        except (docker.errors.DockerException, OSError) as err:
            log.warning("build_cleanup_failed", container=container.name, error=str(err))
            continue
        removed.append(str(container.name))
    if removed:
        log.warning(
            "stale_build_containers_removed",
            target=target_name,
            containers=removed,
            reason="left by a build that did not finish (a killed process)",
        )
    return removed


def _created_at(text: str, *, default: float) -> float:
    """Seconds since the epoch of an engine timestamp (RFC 3339 with nanoseconds)."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$", text)
    if match is None:
        return default
    whole = datetime.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")
    fraction = float(f"0.{match.group(2) or 0}")
    return whole.replace(tzinfo=datetime.UTC).timestamp() + fraction


# --- what the image's Python accepts -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImagePython:
    """The Python of an image, as pip download needs it to pick wheels for it."""

    version: str  # "3.11"
    implementation: str  # "cp"
    libc: str  # "glibc" or "musl"
    libc_version: str  # "2.36"
    machine: str  # "x86_64"

    @property
    def abi(self) -> str:
        return f"{self.implementation}{self.version.replace('.', '')}"

    def platforms(self) -> tuple[str, ...]:
        """Every platform tag whose wheels run on this libc, newest first.

        pip download matches the tags literally, so a wheel tagged only manylinux_2_28 needs
        that tag listed even though a glibc 2.36 runs it; the legacy aliases are listed for
        wheels that carry only them.
        """
        major, _, minor = self.libc_version.partition(".")
        arch = self.machine
        if self.libc == "musl":
            return tuple(f"musllinux_1_{m}_{arch}" for m in range(int(minor or 2), -1, -1))
        if major != "2" or not minor.isdigit():
            return (f"manylinux2014_{arch}",)
        tags = [f"manylinux_2_{m}_{arch}" for m in range(int(minor), 4, -1)]
        aliases = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        for glibc_minor, alias in aliases.items():
            if int(minor) >= glibc_minor and (
                alias == "manylinux2014" or arch in ("x86_64", "i686")
            ):
                tags.append(f"{alias}_{arch}")
        return tuple(tags)


_PROBE = (
    "import json, platform, sys;"
    "libc, ver = platform.libc_ver();"
    "print(json.dumps({'version': '%d.%d' % sys.version_info[:2],"
    " 'implementation': sys.implementation.name, 'libc': libc or 'musl',"
    " 'libc_version': ver or '1.2', 'machine': platform.machine()}))"
)
_IMPLEMENTATIONS = {"cpython": "cp", "pypy": "pp"}
_python_of_image: dict[str, ImagePython] = {}


def image_python(
    client: docker.DockerClient, image: str, *, labels: Mapping[str, str]
) -> ImagePython:
    """Ask an image's python3 what it is (a container with no network, removed after)."""
    cached = _python_of_image.get(image)
    if cached is not None:
        return cached
    try:
        code, output = run_once(client, image, entrypoint=["python3", "-c", _PROBE], labels=labels)
        if code != 0:
            raise ValueError(f"exit code {code}: {output.decode(errors='replace')[-500:]}")
        data = json.loads(output.decode().strip().splitlines()[-1])
    except (docker.errors.APIError, ValueError, IndexError) as err:
        raise ImageBuildError(
            f"image {image} has no working python3 to build an environment on: {err}"
        ) from err
    found = ImagePython(
        version=str(data["version"]),
        implementation=_IMPLEMENTATIONS.get(str(data["implementation"]), "cp"),
        libc=str(data["libc"]),
        libc_version=str(data["libc_version"]),
        machine=str(data["machine"]),
    )
    _python_of_image[image] = found
    return found


def run_once(
    client: docker.DockerClient,
    image: str,
    *,
    entrypoint: list[str],
    labels: Mapping[str, str],
    timeout: float = 120,
) -> tuple[int, bytes]:
    """Run a command in a container with no network; its exit code and output.

    Not `containers.run`: that follows the log of a container that may already have
    exited, and on this engine (20.10, json-file) the output then sometimes comes back empty.
    Reading the log after the container ended has it all.
    """
    container = client.containers.create(
        image, entrypoint=entrypoint, command=[], network_mode="none", labels=dict(labels)
    )
    try:
        container.start()
        code = int(container.wait(timeout=timeout).get("StatusCode", -1))
        return code, bytes(container.logs(stdout=True, stderr=True))
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)


# --- environment images -----------------------------------------------------------------


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def environment_requirements(env: EnvironmentSpec) -> tuple[str, ...]:
    """pip requirement lines of an environment: its pip section, its conda packages in pip
    terms, and the inference server unless the environment names it itself.

    Raises CondaMappingError for conda packages pip has no form of.
    """
    lines = [*env.pip_packages, *conda_to_pip(env.conda_packages)]
    names = set()
    for line in lines:
        match = _REQUIREMENT_NAME.match(line)
        if match and not line.lstrip().startswith("-"):
            names.add(_canonical(match.group(1)))
    if _canonical(INFERENCE_SERVER) not in names:
        lines.append(INFERENCE_SERVER)
    return tuple(lines)


def _short_hash(data: Mapping[str, Any]) -> str:
    return spec_digest(data).removeprefix("sha256:")[:16]


def _environment_digest(env: EnvironmentSpec) -> str:
    if env.digest:
        return env.digest
    # Specs made by hand (tests, tools) may lack the loader's digest; their fields stand in.
    return spec_digest({"environment": repr(env)})


def _match_image_map(image: str, image_map: Mapping[str, str]) -> str | None:
    for pattern, local in image_map.items():
        if fnmatch.fnmatchcase(image, pattern):
            return local
    return None


def _resolve_image(
    client: docker.DockerClient,
    image: str,
    *,
    image_map: Mapping[str, str],
    pull: bool,
    progress: ProgressCallback | None,
) -> tuple[str, str] | None:
    """(name used, image id) of `image` here: local, mapped by image_map, or pulled."""
    found = local_image_id(client, image)
    if found is not None:
        return image, found
    mapped = _match_image_map(image, image_map)
    if mapped is not None:
        found = local_image_id(client, mapped)
        if found is None:
            raise ImageBuildError(
                f"image_map maps {image} to {mapped}, which is not on this machine"
            )
        log.warning("environment_image_mapped", image=image, local=mapped)
        return mapped, found
    failed_at = _pull_failed.get(image)
    if pull and (failed_at is None or time.monotonic() - failed_at > PULL_RETRY_SECONDS):
        repository, tag = split_name(image)
        report(progress, "environment_image_pull", f"pulling {image}", image=image)
        try:
            return image, str(client.images.pull(repository, tag=tag).id)
        except docker.errors.APIError as err:
            _pull_failed[image] = time.monotonic()
            log.info("environment_image_pull_failed", image=image, error=str(err))
    return None


# Images whose pull failed, and when: a daemon's every pass would otherwise ask the
# registry again for an image it cannot have.
_pull_failed: dict[str, float] = {}
PULL_RETRY_SECONDS = 600.0


def build_environment_image(
    client: docker.DockerClient,
    env: EnvironmentSpec,
    *,
    repo_root: Path,
    base_image: str = BASE_IMAGE,
    wheel_cache: Path,
    progress: ProgressCallback | None = None,
    image_map: Mapping[str, str] | None = None,
    pull: bool = True,
    labels: Mapping[str, str] | None = None,
    inference_server: bool = True,
) -> str:
    """The tag of the environment image of `env`, built unless an image of it exists.

    `base_image` must be on this machine (ensure_base_image makes the default one).
    `image_map` maps image name patterns (fnmatch, e.g. "mcr.microsoft.com/azureml/*") to
    local images, for environments naming images that cannot be pulled here. `labels` are
    put on images and containers made by this call (they are no part of an image's
    identity: an image built earlier is reused whatever its labels). `inference_server`
    False installs the pip packages alone (the router's image needs no inference server).
    Raises ImageBuildError (with the tail of the output) or CondaMappingError.
    """
    image_map = dict(image_map or {})
    extra_labels = dict(labels or {})
    if env.build_context:
        return _build_context_image(
            client,
            env,
            repo_root=repo_root,
            image_map=image_map,
            progress=progress,
            labels=extra_labels,
        )
    # Before anything slow: an unmappable conda file fails at once, with no Docker call.
    requirements: tuple[str, ...] = ()
    if not env.custom_container:
        requirements = environment_requirements(env) if inference_server else env.pip_packages
    base_name, base_id = _environment_base(
        client, env, base_image=base_image, image_map=image_map, pull=pull, progress=progress
    )
    tag = f"{ENV_REPOSITORY}:" + _short_hash(
        {"recipe": RECIPE, "environment": _environment_digest(env), "base": base_id}
    )
    if (found := local_image_id(client, tag)) is not None:
        report(progress, "environment_image_cached", f"{tag} exists", tag=tag, id=found)
        return tag
    if env.custom_container:
        # A custom container runs as it is: the image itself is the environment.
        client.api.tag(base_id, *split_name(tag))
        report(progress, "environment_image_ready", f"{tag} is {base_name}", tag=tag)
        return tag
    # Two processes wanting the same environment (parallel tests, two daemons) build it once.
    with exclusive(wheel_cache / ".locks" / f"{tag.replace(':', '-')}.lock", progress, tag):
        if local_image_id(client, tag) is not None:
            return tag
        started = time.monotonic()
        report(
            progress,
            "environment_image_build_started",
            buildtimes.announcement(wheel_cache, env.name, env.version),
            tag=tag,
        )
        python = image_python(client, base_id, labels=extra_labels)
        if env.python_version and env.python_version != python.version:
            log.warning(
                "environment_python_mismatch",
                environment=env.name,
                wanted=env.python_version,
                image=base_name,
                has=python.version,
                hint="packages are installed for the image's Python",
            )
        report(
            progress,
            "environment_wheels",
            f"resolving {len(requirements)} requirements for Python {python.version}",
            tag=tag,
            requirements=list(requirements),
        )
        with (
            tempfile.TemporaryDirectory(prefix="reconciler-wheels-") as scratch,
            _context_tar() as (layer, tar),
        ):
            wheelhouse = Path(scratch)
            download_wheels(
                requirements,
                dest=wheelhouse,
                wheel_cache=wheel_cache,
                python=python,
                progress=progress,
            )
            _add_folder(tar, WHEELS.lstrip("/"))
            _add_bytes(
                tar, f"{WHEELS.lstrip('/')}/requirements.txt", _image_requirements(requirements)
            )
            wheels = sorted(wheelhouse.glob("*.whl"))
            for wheel in wheels:
                tar.add(wheel, arcname=f"{WHEELS.lstrip('/')}/{wheel.name}", filter=_normalize)
            tar.close()
            layer.seek(0)
            content_labels = {
                f"{LABEL_PREFIX}kind": "environment",
                f"{LABEL_PREFIX}environment.digest": _environment_digest(env),
                f"{LABEL_PREFIX}environment.name": f"{env.name or ''}:{env.version or ''}",
                f"{LABEL_PREFIX}base": base_name,
            }
            base_config = client.images.get(base_id).attrs.get("Config") or {}
            report(progress, "environment_image_build", f"installing into {VENV}", tag=tag)
            _commit_layer(
                client,
                base_id,
                layer,
                tag=tag,
                script=_INSTALL_SCRIPT,
                changes=_environment_changes(
                    base_config, {**content_labels, **image_labels(extra_labels)}
                ),
                labels=extra_labels,
                build_log=BuildLog("image_build_step", progress, tag=tag),
                summary=f"{len(wheels)} wheels, {_megabytes(wheels)}",
            )
        _report_built(progress, "environment_image_built", tag, started)
        buildtimes.record_build(wheel_cache, env.name or "", time.monotonic() - started)
    return tag


def _report_built(progress: ProgressCallback | None, event: str, tag: str, started: float) -> None:
    seconds = round(time.monotonic() - started, 1)
    report(progress, event, f"{tag} built in {seconds:.1f}s", tag=tag, seconds=seconds)


def _megabytes(paths: Iterable[Path]) -> str:
    return f"{sum(p.stat().st_size for p in paths) / 1e6:.1f} MB"


WHEELS = "/wheels"
# The venv is made by the image's own python3, so the wheels resolved for that Python fit
# it; the wheels are removed before the commit, so the image carries the venv alone.
_INSTALL_SCRIPT = f"""\
set -e
python3 -m venv {VENV}
{VENV}/bin/pip install --no-index --find-links {WHEELS} --no-cache-dir \\
    --disable-pip-version-check --progress-bar off -r {WHEELS}/requirements.txt
rm -rf {WHEELS}
"""


def _environment_changes(config: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    """Config of an environment image: the base's, with the venv first on PATH."""
    path = next(
        (item.split("=", 1)[1] for item in config.get("Env") or [] if item.startswith("PATH=")),
        DEFAULT_PATH,
    )
    return [
        f"ENV VIRTUAL_ENV={VENV} PATH={VENV}/bin:{path} PYTHONUNBUFFERED=1",
        _label_line(labels),
    ]


def _environment_base(
    client: docker.DockerClient,
    env: EnvironmentSpec,
    *,
    base_image: str,
    image_map: Mapping[str, str],
    pull: bool,
    progress: ProgressCallback | None,
) -> tuple[str, str]:
    if env.image:
        resolved = _resolve_image(
            client, env.image, image_map=image_map, pull=pull, progress=progress
        )
        if resolved is not None:
            return resolved
        if env.custom_container:
            # Another image would not serve the routes its inference_config names.
            raise ImageBuildError(
                f"custom container image {env.image} is not on this machine and cannot be "
                "pulled; load it (docker load) or map it with the target's image_map"
            )
        log.warning(
            "environment_image_unavailable",
            image=env.image,
            fallback=base_image,
            hint="set the target's image_map to choose the local image",
        )
    base_id = local_image_id(client, base_image)
    if base_id is None:
        raise ImageBuildError(f"base image {base_image} is not on this machine (ensure_base_image)")
    return base_image, base_id


def _image_requirements(requirements: Iterable[str]) -> bytes:
    # Index options (--extra-index-url ...) were for the host's download; in the image
    # everything comes from /wheels.
    lines = [line for line in requirements if not line.lstrip().startswith("-")]
    return ("\n".join(lines) + "\n").encode()


def download_wheels(
    requirements: Iterable[str],
    *,
    dest: Path,
    wheel_cache: Path,
    python: ImagePython,
    progress: ProgressCallback | None = None,
) -> None:
    """Put in `dest` every wheel `requirements` need on `python`, through `wheel_cache`.

    The cache alone is tried first (no network); only when it lacks something is the index
    asked, and what comes from it is added to the cache.
    """
    wheel_cache.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    requirements_file = dest / "requirements.in"
    requirements_file.write_text("\n".join(requirements) + "\n")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--dest",
        str(dest),
        "--only-binary=:all:",
        "--python-version",
        python.version,
        "--implementation",
        python.implementation,
        "--abi",
        python.abi,
        *[arg for platform in python.platforms() for arg in ("--platform", platform)],
        "--find-links",
        str(wheel_cache),
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "-r",
        str(requirements_file),
    ]
    offline = BuildLog("wheel_download_step", None, cache=str(wheel_cache))
    if _run_pip([*command, "--no-index"], offline):
        report(
            progress,
            "environment_wheels_cached",
            "every wheel came from the wheel cache",
            cache=str(wheel_cache),
        )
    else:
        report(
            progress,
            "environment_wheels_download",
            "downloading wheels from the index",
            cache=str(wheel_cache),
        )
        online = BuildLog("wheel_download_step", progress, cache=str(wheel_cache))
        if not _run_pip(command, online):
            raise online.error(
                "pip download of the environment's packages failed (is every package on the "
                "index, with a wheel for this Python and platform?)"
            )
    requirements_file.unlink()
    for wheel in dest.glob("*.whl"):
        cached = wheel_cache / wheel.name
        if not cached.exists():
            # Copy then rename: a concurrent build never sees half a wheel.
            partial = wheel_cache / f".{wheel.name}.{os.getpid()}.partial"
            shutil.copyfile(wheel, partial)
            os.replace(partial, cached)


def _run_pip(command: list[str], build_log: BuildLog) -> bool:
    proc = subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )
    build_log.add(proc.stdout)
    return proc.returncode == 0


# --- environments from a Docker build context ---------------------------------------------

_FROM = re.compile(r"^(\s*FROM\s+)((?:--\S+\s+)*)(\S+)(.*)$", re.IGNORECASE | re.MULTILINE)


def _map_from_lines(dockerfile: str, image_map: Mapping[str, str]) -> tuple[str, list[str]]:
    mapped: list[str] = []

    def swap(match: re.Match[str]) -> str:
        local = _match_image_map(match.group(3), image_map)
        if local is None:
            return match.group(0)
        mapped.append(f"{match.group(3)} -> {local}")
        return f"{match.group(1)}{match.group(2)}{local}{match.group(4)}"

    return _FROM.sub(swap, dockerfile), mapped


def _build_context_image(
    client: docker.DockerClient,
    env: EnvironmentSpec,
    *,
    repo_root: Path,
    image_map: Mapping[str, str],
    progress: ProgressCallback | None,
    labels: Mapping[str, str],
) -> str:
    assert env.build_context is not None
    context = (repo_root / env.build_context).resolve()
    dockerfile_path = context / env.dockerfile_path
    try:
        original = dockerfile_path.read_text()
    except OSError as err:
        raise ImageBuildError(f"cannot read the Dockerfile {dockerfile_path}: {err}") from err
    dockerfile, mapped = _map_from_lines(original, image_map)
    tag = f"{ENV_REPOSITORY}:" + _short_hash(
        {"recipe": RECIPE, "environment": _environment_digest(env), "mapped": mapped}
    )
    if (found := local_image_id(client, tag)) is not None:
        report(progress, "environment_image_cached", f"{tag} exists", tag=tag, id=found)
        return tag
    if mapped:
        log.warning("environment_build_from_mapped", context=env.build_context, mapped=mapped)
    started = time.monotonic()
    report(progress, "environment_image_build", f"docker build of {env.build_context}", tag=tag)
    # The engine's builder makes its own intermediate containers (no labels can be given
    # to them); it removes them itself (forcerm), also when the client goes away.
    labels_of_image = {
        f"{LABEL_PREFIX}kind": "environment",
        f"{LABEL_PREFIX}environment.digest": _environment_digest(env),
        **image_labels(labels),
    }
    with tempfile.TemporaryDirectory(prefix="reconciler-dockerfile-") as scratch:
        # A Dockerfile outside the context is sent inside it by the docker SDK, so the
        # user's folder is never written to. Our labels go on one line at its end.
        rewritten = Path(scratch) / "Dockerfile"
        rewritten.write_text(dockerfile.rstrip("\n") + "\n" + _label_line(labels_of_image) + "\n")
        _docker_build(
            client, None, tag=tag, progress=progress, path=str(context), dockerfile=str(rewritten)
        )
    _report_built(progress, "environment_image_built", tag, started)
    return tag


# --- thin deployment images -----------------------------------------------------------------


SERVER_COMMAND = (
    "/bin/sh",
    "-c",
    # A shell, so that AZUREML_ENTRY_SCRIPT set at run time wins over the image's value.
    f'exec {VENV}/bin/azmlinfsrv --entry_script "$AZUREML_ENTRY_SCRIPT" --port {SERVER_PORT}',
)


def _label_line(labels: Mapping[str, str]) -> str:
    # One LABEL instruction: each instruction of the classic builder is a commit of its own,
    # seconds apiece on some storage drivers.
    return "LABEL " + " ".join(
        f"{key}={json.dumps(value)}" for key, value in sorted(labels.items())
    )


@dataclass(frozen=True, slots=True)
class _Server:
    """What starts a thin image's server, and what it needs in its environment."""

    command: tuple[str, ...] = SERVER_COMMAND
    port: int = SERVER_PORT
    variables: tuple[tuple[str, str], ...] = ()


def _thin_changes(
    deployment: DeploymentSpec,
    layout: DeploymentLayout,
    labels: Mapping[str, str],
    server: _Server,
) -> list[str]:
    """The Dockerfile instructions (as `docker commit` changes) of a thin image's config."""
    variables = " ".join(
        f"{key}={json.dumps(value)}" for key, value in (*layout.environment(), *server.variables)
    )
    changes = [f"ENV {variables}"]
    if not deployment.environment.custom_container:
        assert layout.app_root is not None
        # --entry_script is resolved against the working folder, so that is the app root.
        changes += [
            f"WORKDIR {layout.app_root}",
            f"EXPOSE {server.port}",
            f"CMD {json.dumps(list(server.command))}",
        ]
    # A custom container keeps its own command, entrypoint and working folder.
    changes.append(_label_line(labels))
    return changes


def _folder_digest(repo_root: Path, path: str) -> str:
    full = repo_root / path
    if full.is_file():
        # The same value Digester gives a file: loading's digests and ours agree. Hashed in
        # chunks: a model of gigabytes is never read whole.
        blob, _ = file_blob_id(full.resolve())
        return "sha256:" + hashlib.sha256(f"\0{blob}\n".encode()).hexdigest()
    return Digester(DirectoryTree(full)).digest("")


def build_deployment_image(
    client: docker.DockerClient,
    deployment: DeploymentSpec,
    *,
    env_image: str,
    repo_root: Path,
    progress: ProgressCallback | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """The tag of the thin image of a deployment: `env_image` plus its code and model.

    Tagged by a hash of the environment image id, the image config (paths, variables,
    command) and the code and model digests (the spec's, else computed from the files), so
    a deployment whose content did not change reuses its image, and a code-only change adds
    one layer on the same environment image.

    The layer is made by copying the files into a created (never started) container and
    committing it: one commit, where a Dockerfile's COPY, ENV, WORKDIR, CMD and LABEL are
    one commit each (about three seconds apiece on fuse-overlayfs).
    """
    generated = generated_code(deployment)
    served_by_triton = triton.serves_triton(deployment)
    if (
        deployment.code is None
        and generated is None
        and not served_by_triton
        and not deployment.environment.custom_container
    ):
        raise ImageBuildError(
            f"deployment {deployment.endpoint_name}/{deployment.name} has no "
            "code_configuration; the Docker target serves a scoring script (or a custom "
            "container)"
        )
    env_id = local_image_id(client, env_image)
    if env_id is None:
        raise ImageBuildError(f"environment image {env_image} is not on this machine")
    layout = deployment_layout(deployment)
    code = deployment.code
    model = deployment.model
    code_digest = (code.digest or _folder_digest(repo_root, code.path)) if code else ""
    code_digest = generated.digest if generated is not None else code_digest
    server = _Server()
    triton_entries: tuple[triton.ImageEntry, ...] = ()
    if served_by_triton:
        triton_entries, server = _triton_parts(
            client, deployment, layout, env_image=env_image, repo_root=repo_root, labels=labels
        )
        code_digest = triton.entries_digest(triton_entries)
    model_digest = (model.digest or _folder_digest(repo_root, model.path)) if model else ""
    content_labels = {
        f"{LABEL_PREFIX}kind": "deployment",
        f"{LABEL_PREFIX}environment.image": env_id,
        f"{LABEL_PREFIX}code.digest": code_digest,
        f"{LABEL_PREFIX}model.digest": model_digest,
    }
    tag = f"{APP_REPOSITORY}:" + _short_hash(
        {
            "recipe": RECIPE,
            "changes": _thin_changes(deployment, layout, content_labels, server),
            "code_dir": layout.code_dir,
            "model_target": layout.model_target,
        }
    )
    if (found := local_image_id(client, tag)) is not None:
        report(progress, "deployment_image_cached", f"{tag} exists", tag=tag, id=found)
        return tag
    started = time.monotonic()
    report(progress, "deployment_image_build", f"thin layer of {deployment.key}", tag=tag)
    extra_labels = dict(labels or {})
    changes = _thin_changes(
        deployment, layout, {**content_labels, **image_labels(extra_labels)}, server
    )
    build_log = BuildLog("image_build_step", progress, tag=tag)
    with _context_tar() as (layer, tar):
        if layout.code_dir and code is not None:
            _add_tree(tar, repo_root / code.path, layout.code_dir.lstrip("/"))
        elif layout.code_dir and generated is not None:
            _add_folder(tar, layout.code_dir.lstrip("/"))
            name = f"{layout.code_dir.lstrip('/')}/{generated.scoring_script}"
            _add_bytes(tar, name, generated.content)
        if layout.model_dir.strip("/"):
            # The model folder exists even without a model: the server reads it.
            _add_folder(tar, layout.model_dir.lstrip("/"))
        if model is not None and layout.model_target is not None:
            _add_tree(tar, repo_root / model.path, layout.model_target.lstrip("/"))
        for entry in triton_entries:
            _add_entry(tar, entry)
        count, size = len(tar.getmembers()), sum(m.size for m in tar.getmembers())
        tar.close()
        layer.seek(0)
        _commit_layer(
            client,
            env_id,
            layer,
            tag=tag,
            changes=changes,
            labels=extra_labels,
            build_log=build_log,
            summary=f"code and model, {count} entries, {size / 1e6:.1f} MB",
        )
    _report_built(progress, "deployment_image_built", tag, started)
    return tag


def _triton_parts(
    client: docker.DockerClient,
    deployment: DeploymentSpec,
    layout: DeploymentLayout,
    *,
    env_image: str,
    repo_root: Path,
    labels: Mapping[str, str] | None,
) -> tuple[tuple[triton.ImageEntry, ...], _Server]:
    """The generated model repository and backend links of a no-code Triton deployment, and
    the tritonserver command, for the environment image's Python."""
    model = deployment.model
    assert model is not None and layout.code_dir is not None and layout.model_target
    folder = model.path.strip("/")
    prefix = "" if folder in ("", ".") else f"{folder}/"
    # The files as loading saw them: regular files, the folders loading skips left out.
    relative = [f"{prefix}{path}" for path in _files_under(repo_root / folder)]
    try:
        repository = triton.read_repository(
            folder, relative, lambda path: (repo_root / path).read_bytes()
        )
    except triton.TritonModelError as err:
        raise ImageBuildError(f"model {model.name}: {err}") from None
    python = image_python(client, env_image, labels=dict(labels or {})).version
    site = triton.site_packages(VENV, python)
    entries = triton.image_entries(
        repository,
        code_dir=layout.code_dir,
        model_copy=layout.model_target,
        site_packages=site,
        python=python,
    )
    server = _Server(
        command=triton.server_command(code_dir=layout.code_dir, site_packages=site),
        port=triton.HTTP_PORT,
        variables=triton.server_environment(site_packages=site),
    )
    return entries, server


def _files_under(root: Path) -> list[str]:
    """Paths of the files under `root`, relative to it (POSIX), as _add_tree copies them."""
    found: list[str] = []
    for current, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED_DIRS)
        rel = Path(current).relative_to(root).as_posix()
        found.extend(name if rel == "." else f"{rel}/{name}" for name in sorted(files))
    return found


def _commit_layer(
    client: docker.DockerClient,
    image_id: str,
    layer: IO[bytes],
    *,
    tag: str,
    changes: list[str],
    labels: Mapping[str, str],
    build_log: BuildLog,
    summary: str,
    script: str | None = None,
) -> str:
    """A new image `tag`: `image_id` + the files of `layer` (a tar extracted at /), after
    `script` ran on them as root in a container with no network, with `changes` to its
    config.
    """
    repository, version = split_name(tag)
    container = None
    # Labelled from its creation: a process killed before the end leaves it to the next
    # pass's cleanup. Its labels go into the image too, so the image's role is set last.
    options: dict[str, Any] = {"labels": dict(labels), "network_mode": "none"}
    if labels.get(ROLE_LABEL) == BUILD_ROLE:
        changes = [*changes, _label_line({ROLE_LABEL: IMAGE_ROLE})]
    commit_config: dict[str, Any] | None = None
    if script is not None:
        options.update(entrypoint=["/bin/sh", "-c", script], command=[], user="root")
        # A commit keeps the container's entrypoint, command and user, which are now ours;
        # the image's own come back through the commit's config (a `changes` line cannot
        # reset an entrypoint to none) and a USER line.
        config = client.images.get(image_id).attrs.get("Config") or {}
        commit_config = {
            "Entrypoint": config.get("Entrypoint") or [],
            "Cmd": config.get("Cmd") or [],
        }
        changes = [*changes, f"USER {config.get('User') or 'root'}"]
    try:
        build_log.add(f"create a container of {image_id[:19]}")
        with _long_requests(client):
            container = client.containers.create(image_id, **options)
            build_log.add(f"copy {summary} into it")
            if not container.put_archive("/", layer):
                raise build_log.error(f"copying files into the container for {tag} failed")
            if script is not None:
                _run_to_end(container, build_log, tag=tag)
            build_log.add(f"commit as {tag}")
            for change in changes:
                build_log.add(f"  {change}")
            image = container.commit(
                repository=repository,
                tag=version,
                changes=changes,
                conf=commit_config,
                message=f"reconciler: {tag}",
            )
    except docker.errors.APIError as err:
        build_log.add(str(err))
        raise build_log.error(f"building {tag} failed: {err.explanation or err}") from err
    except OSError as err:  # a timeout or a broken connection to the daemon
        build_log.add(str(err))
        raise build_log.error(f"building {tag} failed: Docker Engine: {err}") from err
    finally:
        if container is not None:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
    return str(image.id)


_timeout_lock = threading.Lock()
_timeout_holders: dict[int, tuple[int, Any]] = {}


@contextlib.contextmanager
def _long_requests(client: docker.DockerClient) -> Iterator[None]:
    """Lift the client's request timeout (60 s by default) for the length of a build.

    Copying gigabytes of model into a container, or committing a large venv, outlasts it;
    the calls take no timeout argument of their own. Counted, so that concurrent builds
    on one client give the original back only when the last one ends.
    """
    api = client.api
    with _timeout_lock:
        count, original = _timeout_holders.get(id(api), (0, api.timeout))
        _timeout_holders[id(api)] = (count + 1, original)
        api.timeout = BUILD_TIMEOUT_SECONDS
    try:
        yield
    finally:
        with _timeout_lock:
            count, original = _timeout_holders.pop(id(api))
            if count > 1:
                _timeout_holders[id(api)] = (count - 1, original)
            else:
                api.timeout = original


def _run_to_end(container: Any, build_log: BuildLog, *, tag: str) -> None:
    container.start()
    seen = 0
    pending = ""
    try:
        for chunk in container.logs(stream=True, follow=True):
            pending += chunk.decode(errors="replace")
            *lines, pending = pending.split("\n")
            for line in lines:
                build_log.add(line)
                seen += 1
    except OSError:
        # The log stream times out when the install prints nothing for a minute (a big
        # wheel unpacking); the wait below has its own, longer limit, and the lines not yet
        # seen are read after it.
        pass
    status = container.wait(timeout=BUILD_TIMEOUT_SECONDS)
    for line in container.logs().decode(errors="replace").splitlines()[seen:]:
        build_log.add(line)
    code = int(status.get("StatusCode", -1))
    if code != 0:
        raise build_log.error(f"installing the packages of {tag} failed (exit code {code})")


# --- build contexts and docker build ---------------------------------------------------------


@contextlib.contextmanager
def _context_tar() -> Iterator[tuple[IO[bytes], tarfile.TarFile]]:
    # The context is written as a tar straight from the repository's files: no copy of
    # model weights into a temporary folder first. dereference: loading reads a link inside
    # the repository as the file it names (and refuses any other), so the image holds that
    # file, not a link that would dangle in it.
    with (
        tempfile.TemporaryFile(prefix="reconciler-context-") as handle,
        tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT, dereference=True) as tar,
    ):
        yield handle, tar


def _normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Owner and times of the author's checkout are no part of the image's content.
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = _normalize(tarfile.TarInfo(name))
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_entry(tar: tarfile.TarFile, entry: triton.ImageEntry) -> None:
    name = entry.path.lstrip("/")
    if entry.kind == "dir":
        _add_folder(tar, name)
    elif entry.kind == "file":
        _add_bytes(tar, name, entry.content)
    else:
        info = _normalize(tarfile.TarInfo(name))
        info.type = tarfile.SYMTYPE
        info.linkname = entry.target
        info.mode = 0o777
        tar.addfile(info)


def _add_folder(tar: tarfile.TarFile, name: str) -> None:
    info = _normalize(tarfile.TarInfo(name))
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def _add_tree(tar: tarfile.TarFile, source: Path, arcname: str) -> None:
    if source.is_file():
        tar.add(source, arcname=arcname, filter=_normalize)
        return
    if not source.is_dir():
        raise ImageBuildError(f"{source} is neither a file nor a folder")
    _add_folder(tar, arcname)
    for current, subdirs, files in os.walk(source):
        # The same folders loading leaves out of digests stay out of images.
        subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED_DIRS)
        rel = Path(current).relative_to(source).as_posix()
        prefix = arcname if rel == "." else f"{arcname}/{rel}"
        for sub in subdirs:
            _add_folder(tar, f"{prefix}/{sub}")
        for name in sorted(files):
            tar.add(Path(current) / name, arcname=f"{prefix}/{name}", filter=_normalize)


_STEP = re.compile(r"^Step \d+/\d+ : ")


def _docker_build(
    client: docker.DockerClient,
    context: IO[bytes] | None,
    *,
    tag: str,
    progress: ProgressCallback | None,
    network_mode: str | None = None,
    path: str | None = None,
    dockerfile: str | None = None,
) -> str:
    """Run a build, stream its output into events, and return the image id."""
    build_log = BuildLog("image_build_step", progress, tag=tag)
    kwargs: dict[str, Any] = {
        "tag": tag,
        "rm": True,
        "forcerm": True,
        "pull": False,
        "decode": True,
        "timeout": BUILD_TIMEOUT_SECONDS,
    }
    if network_mode:
        kwargs["network_mode"] = network_mode
    if context is not None:
        context.seek(0)
        kwargs.update(fileobj=context, custom_context=True)
    else:
        kwargs.update(path=path, dockerfile=dockerfile)
    error: str | None = None
    try:
        for chunk in client.api.build(**kwargs):
            if "stream" in chunk:
                text = str(chunk["stream"])
                build_log.add(text)
                if _STEP.match(text):
                    log.info("image_build_step", tag=tag, step=text.strip())
            if "error" in chunk:
                error = str(chunk["error"]).strip()
                build_log.add(error)
    except (docker.errors.APIError, docker.errors.BuildError) as err:
        error = str(err)
        build_log.add(error)
    except OSError as err:  # a timeout or a broken connection to the daemon
        error = f"connection to the Docker daemon failed: {err}"
        build_log.add(error)
    if error is not None:
        raise build_log.error(f"docker build of {tag} failed: {error.splitlines()[-1]}")
    image_id = local_image_id(client, tag)
    if image_id is None:
        raise build_log.error(f"docker build of {tag} reported success but left no image")
    return image_id
