"""Endpoint credentials on the Docker host: keys, token secret, admin secret, ports.

One file per endpoint, `STATE/endpoints/NAME/credentials.json`, mode 0600 in folders of
mode 0700, outside the repository. Keys never go into labels, status, logs or the router's
config (which holds only their hashes). Regenerating one key leaves the other valid.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from reconciler.router.tokens import generate_key, generate_token_secret


@dataclass(frozen=True)
class EndpointCredentials:
    primary_key: str
    secondary_key: str
    token_secret: str  # base64url
    admin_secret: str
    port: int
    metrics_port: int

    def __repr__(self) -> str:  # never print a secret by accident
        return f"EndpointCredentials(port={self.port}, metrics_port={self.metrics_port})"

    @property
    def token_secret_bytes(self) -> bytes:
        text = self.token_secret
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    def regenerated(self, which: str) -> EndpointCredentials:
        if which == "primary":
            return replace(self, primary_key=generate_key())
        if which == "secondary":
            return replace(self, secondary_key=generate_key())
        raise ValueError(f"key must be primary or secondary, not {which!r}")


def new_credentials(*, port: int, metrics_port: int) -> EndpointCredentials:
    return EndpointCredentials(
        primary_key=generate_key(),
        secondary_key=generate_key(),
        token_secret=base64.urlsafe_b64encode(generate_token_secret()).decode().rstrip("="),
        admin_secret=generate_key(),
        port=port,
        metrics_port=metrics_port,
    )


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, atomically (rename in the same folder)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


class CredentialStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "endpoints"

    def folder(self, endpoint: str) -> Path:
        return self.root / endpoint

    def path(self, endpoint: str) -> Path:
        return self.folder(endpoint) / "credentials.json"

    def load(self, endpoint: str) -> EndpointCredentials | None:
        try:
            data = json.loads(self.path(endpoint).read_text())
        except FileNotFoundError:
            return None
        return EndpointCredentials(**data)

    def save(self, endpoint: str, creds: EndpointCredentials) -> None:
        write_private(self.path(endpoint), json.dumps(asdict(creds), indent=2))

    def delete(self, endpoint: str) -> None:
        folder = self.folder(endpoint)
        if folder.exists():
            for child in sorted(folder.rglob("*"), reverse=True):
                child.unlink() if child.is_file() else child.rmdir()
            folder.rmdir()

    def ports_in_use(self) -> set[int]:
        used: set[int] = set()
        if self.root.exists():
            for file in self.root.glob("*/credentials.json"):
                data = json.loads(file.read_text())
                used.update((int(data["port"]), int(data["metrics_port"])))
        return used
