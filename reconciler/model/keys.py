"""The one key type that pairs desired and live resources.

An endpoint is keyed by its name; a deployment by its endpoint's name and its own name.
A missing side of a pair means create (no live) or delete (no desired).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True, slots=True)
class ResourceKey:
    """Identifies an endpoint (deployment is None) or one deployment of an endpoint."""

    endpoint: str
    deployment: str | None = None

    @property
    def is_endpoint(self) -> bool:
        return self.deployment is None

    def __str__(self) -> str:
        return self.endpoint if self.deployment is None else f"{self.endpoint}/{self.deployment}"
