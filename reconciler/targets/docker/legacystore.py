"""The host folder where earlier versions of the Docker target kept an endpoint's state.

`LegacyStore` reads `STATE/endpoints/NAME/` (credentials.json, endpoint.json, the router's
config, deployment records and autoscale decisions), so an endpoint made by one of those
versions moves into its state volume with its keys and port unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path


class LegacyStore:
    """The host folder of earlier versions, read once to move an endpoint into its volume."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder  # STATE/endpoints/NAME

    def _read(self, relative: str) -> bytes | None:
        path = self.folder / relative
        try:
            # Regular files only: never block on a FIFO someone left there.
            return path.read_bytes() if path.is_file() else None
        except OSError:
            return None

    def files(self) -> dict[str, bytes]:
        """What the folder holds, as `state.py` paths (router.json, state/...)."""
        found: dict[str, bytes] = {}
        for relative, target in (
            ("credentials.json", "state/credentials.json"),
            ("endpoint.json", "state/endpoint.json"),
            ("router/router.json", "router.json"),
        ):
            content = self._read(relative)
            if content is not None:
                found[target] = content
        records: dict[str, object] = {}
        decisions: dict[str, object] = {}
        for table, pattern, suffix in (
            (records, "deployments/*.json", ".json"),
            (decisions, "scale/*.decision.json", ".decision.json"),
        ):
            for path in sorted(self.folder.glob(pattern)):
                content = self._read(str(path.relative_to(self.folder)))
                try:
                    table[path.name.removesuffix(suffix)] = json.loads(content or b"")
                except ValueError:
                    continue
        if records:
            found["state/deployments.json"] = json.dumps(records, sort_keys=True).encode()
        if decisions:
            found["state/autoscale.json"] = json.dumps(decisions, sort_keys=True).encode()
        return found
