"""Settings of a Docker target, from its entry in reconciler.yaml.

```yaml
targets:
  local:
    type: docker
    base_image: reconciler/python-base:bookworm   # built locally when it cannot be pulled
    image_map: {"mcr.microsoft.com/azureml/*": reconciler/python-base:bookworm}
    resource_scale: 0.25          # instance types' cores and memory scaled for a small host
    state_dir: ~/.local/state/ml-endpoint-reconciler/docker   # keys (0600), router configs
    router_port_range: [18000, 18999]
    ready_timeout_s: 300
    image_retention: 3            # unused images kept per deployment (reconcile gc)
    capacity_cores: 16            # core quota the review holds ceil(1.2 x n) x cores against
    network_pool: 10.213.0.0/16   # endpoints' networks take subnets of it (subnets.py)
    network_prefix: 24            # each a /24: 253 containers, 256 networks in the pool
```
`capacity_cores` is read by reconciler.repoconfig (any target type), not by the driver.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.images.baseimage import BASE_IMAGE, DEFAULT_IMAGE_MAP
from reconciler.model.errors import ErrorCode
from reconciler.targets.docker.subnets import (
    DEFAULT_POOL,
    DEFAULT_PREFIX,
    MAX_PREFIX,
    MIN_PREFIX,
    parse_pool,
)
from reconciler.targets.errors import TargetError


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ml-endpoint-reconciler" / "docker"


@dataclass(frozen=True)
class DockerOptions:
    name: str = "local"
    base_image: str = BASE_IMAGE
    image_map: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_IMAGE_MAP))
    resource_scale: float = 0.25
    state_dir: Path = field(default_factory=default_state_dir)
    wheel_cache: Path = field(
        default_factory=lambda: Path.home() / ".cache" / "ml-endpoint-reconciler" / "wheels"
    )
    router_port_range: tuple[int, int] = (18000, 18999)
    ready_timeout_s: float = 300.0
    drain_s: float = 1.0  # how long a removed instance keeps serving requests in flight
    # Images built for a deployment kept when no container uses them (a quick rollback),
    # per deployment; older ones are removed after builds and deletions (imagegc.py).
    image_retention: int = 3
    # Where the networks of endpoints (and the target's edge network) take their subnets:
    # Docker's own default pools hold only ~30 networks (subnets.py).
    network_pool: str = DEFAULT_POOL
    network_prefix: int = DEFAULT_PREFIX

    @classmethod
    def from_config(cls, name: str, options: Mapping[str, Any]) -> DockerOptions:
        known = {
            "base_image",
            "image_map",
            "resource_scale",
            "state_dir",
            "wheel_cache",
            "router_port_range",
            "ready_timeout_s",
            "drain_s",
            "image_retention",
            "network_pool",
            "network_prefix",
            "capacity_cores",  # the review's quota figure (repoconfig); no effect here
        }
        unknown = sorted(set(options) - known)
        if unknown:
            raise TargetError(
                f"reconciler.yaml: targets.{name}: unknown option(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})",
                code=ErrorCode.INVALID_TARGET_CONFIG,
            )
        values: dict[str, Any] = {"name": name}
        # reconciler.yaml's schema (repoconfig) has checked every value with its line; this
        # is for options given another way, which must still fail as an error, not a crash.
        try:
            key = "base_image"
            if key in options:
                values[key] = str(options[key])
            key = "image_map"
            if key in options:
                values[key] = {**DEFAULT_IMAGE_MAP, **dict(options["image_map"])}
            for key in ("resource_scale", "ready_timeout_s", "drain_s"):
                if key in options:
                    values[key] = float(options[key])
            for key in ("state_dir", "wheel_cache"):
                if key in options:
                    values[key] = Path(os.path.expanduser(str(options[key])))
            key = "image_retention"
            if key in options:
                retention = int(options[key])
                if retention < 0:
                    raise ValueError(f"need a count of 0 or more, got {retention}")
                values[key] = retention
            key = "router_port_range"
            if key in options:
                low, high = (int(port) for port in options[key])
                if not 1024 <= low <= high <= 65535:
                    raise ValueError(f"need 1024 <= low <= high <= 65535, got [{low}, {high}]")
                values[key] = (low, high)
            key = "network_prefix"
            prefix = int(options.get(key, DEFAULT_PREFIX))
            if not MIN_PREFIX <= prefix <= MAX_PREFIX:
                raise ValueError(f"need {MIN_PREFIX} to {MAX_PREFIX}, got {prefix}")
            values[key] = prefix
            key = "network_pool"
            values[key] = str(parse_pool(str(options.get(key, DEFAULT_POOL)), prefix))
        except (TypeError, ValueError) as exc:
            raise TargetError(
                f"reconciler.yaml: targets.{name}.{key}: {exc}",
                code=ErrorCode.INVALID_TARGET_CONFIG,
            ) from None
        return cls(**values)
