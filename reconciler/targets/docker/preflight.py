"""What a Docker target will do differently from Azure ML, said before anything is applied.

Pure rules over the desired deployments and the target's options (no Docker call), shown as
warnings by `validate --target NAME`, `--dry-run` and `diff --target NAME`, each with the
file and line of the field concerned:
- an environment image that the target's image_map replaces (Azure ML's curated images
  cannot be pulled here: the local Python base stands in, the packages on top);
- a conda file's Python pin that the image's Python does not match (packages are installed
  for the image's Python);
- Kubernetes `resources`, which a Docker target applies as the container's CPU and memory
  limits (an instance type's figures are not used then).

Also the reading of Kubernetes quantities ("200m", "0.5", "200Mi", "1Gi") that the target
needs to apply those limits.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from reconciler.images.baseimage import BASE_IMAGE
from reconciler.model.diagnostics import Diagnostic
from reconciler.model.instance_types import cpu_cores
from reconciler.model.specs import DeploymentSpec, Resources

# Debian bookworm's python3, which the default base image is made of.
BASE_IMAGE_PYTHON: Final = "3.11"

__all__ = ["cpu_cores"]  # with the instance types now (the review's quota reads it too)

LineOf = Callable[[str, tuple[str | int, ...]], int | None]

_MEMORY: Final = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([KMGTPE]i?|e[0-9]+)?$")
_MEMORY_UNITS: Final = {
    "": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def memory_bytes(quantity: str) -> int | None:
    """Bytes of a Kubernetes memory quantity ("200Mi", "0.1Gi", "1G", "128974848")."""
    match = _MEMORY.match(quantity.strip())
    if match is None:
        return None
    number, unit = float(match.group(1)), match.group(2) or ""
    if unit.startswith("e"):
        return int(number * 10 ** int(unit[1:]))
    return int(number * _MEMORY_UNITS[unit])


def resource_limits(resources: Resources | None) -> tuple[float | None, int | None]:
    """(cores, bytes) a Docker container gets from Kubernetes resources: the limits, else
    the requests (a Docker container has one figure of each)."""
    if resources is None:
        return None, None
    limits, requests = dict(resources.limits), dict(resources.requests)
    cpu = limits.get("cpu", requests.get("cpu"))
    memory = limits.get("memory", requests.get("memory"))
    return (
        cpu_cores(cpu) if cpu is not None else None,
        memory_bytes(memory) if memory is not None else None,
    )


def mapped_image(image: str, image_map: Mapping[str, str]) -> str | None:
    """The local image image_map puts in place of `image` (first matching pattern)."""
    for pattern, local in image_map.items():
        if fnmatch.fnmatchcase(image, pattern):
            return local
    return None


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def preflight_warnings(
    deployments: Iterable[DeploymentSpec],
    *,
    target: str,
    base_image: str,
    image_map: Mapping[str, str],
    line_of: LineOf,
) -> tuple[Diagnostic, ...]:
    """Warnings of what the Docker target `target` changes, one per deployment and field."""
    out: list[Diagnostic] = []

    def warn(spec: DeploymentSpec, field: tuple[str | int, ...], message: str) -> None:
        file = spec.source.file if spec.source else ""
        line = line_of(file, field) if file else None
        if line is None and spec.source is not None:
            line = spec.source.line
        out.append(Diagnostic(file, line, ".".join(map(str, field)), message))

    for spec in deployments:
        env = spec.environment
        runs_on = env.image
        if env.image and env.build_context is None:
            local = mapped_image(env.image, image_map)
            if local is not None and local != env.image:
                runs_on = local
                warn(
                    spec,
                    ("environment", "image"),
                    f"image {env.image} is replaced by {local} on Docker target '{target}' "
                    "(its image_map; unless that exact image is on this machine): the "
                    "environment's packages are installed on it",
                )
        elif env.image is None and env.build_context is None:
            runs_on = base_image
        on_default_base = runs_on == BASE_IMAGE
        pinned = env.python_version
        if (
            pinned
            and not env.custom_container
            and on_default_base
            and _minor(pinned) != BASE_IMAGE_PYTHON
        ):
            warn(
                spec,
                ("environment", "conda_file"),
                f"{env.conda_file or 'the conda file'} pins python={pinned}; on Docker target "
                f"'{target}' the packages are installed for the image's Python "
                f"{BASE_IMAGE_PYTHON} ({BASE_IMAGE})",
            )
        cores, memory = resource_limits(spec.resources)
        if cores is not None or memory is not None:
            figures = ", ".join(
                part
                for part in (
                    f"{cores:g} CPU" if cores is not None else "",
                    f"{memory / 2**20:.0f} MiB" if memory is not None else "",
                )
                if part
            )
            warn(
                spec,
                ("resources",),
                f"Kubernetes resources become the container's limits on Docker target "
                f"'{target}': {figures} (not scaled by resource_scale)",
            )
    return tuple(out)
