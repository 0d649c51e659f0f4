"""An endpoint's state files as the router sees them in its state folder, and their digest.

On the Docker target the router's config folder is the endpoint's state volume
(targets/docker/state.py): `router.json`, which the router reads and its admin call
writes, and `state/...`, the target's own files (keys, records of deployments). The
target reads those files through Docker's archive API, which costs tens of milliseconds
an endpoint; the router, which mounts the same volume, can say cheaply whether they
changed: `GET /-/state-digest` (admin secret) answers the digest of the files here, and
the target reads the archive again only when that digest is not the one of the files it
read or wrote last.

Both sides take the same files (`is_state_file`, regular files of at most MAX_FILE_BYTES)
and the same digest (`state_digest`), so a digest can only match when every byte does: a
file lost, spoiled or added by anyone (another process, a hand in the volume) is seen.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path

ROUTER_CONFIG = "router.json"
STATE_FOLDER = "state"
# A state file larger than this is not ours (a stray dump, or hostile): passed over.
MAX_FILE_BYTES = 4 * 1024 * 1024


def is_state_file(relative: str) -> bool:
    """Whether a path relative to the state folder names one of an endpoint's files."""
    return relative == ROUTER_CONFIG or relative.startswith(f"{STATE_FOLDER}/")


def state_digest(files: Mapping[str, bytes]) -> str:
    """One digest of the files (path -> content): equal only for equal files."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode("utf-8", "surrogateescape") + b"\0")
        h.update(hashlib.sha256(files[path]).digest())
    return h.hexdigest()


def _regular(path: Path) -> bool:
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size <= MAX_FILE_BYTES


def read_state_folder(root: Path) -> dict[str, bytes]:
    """The state files under `root` by relative path, as the target's archive read takes
    them: regular files only (symbolic links are not followed), none over MAX_FILE_BYTES.
    OSError when one cannot be read (the caller then cannot vouch for the state)."""
    found = [ROUTER_CONFIG] if _regular(root / ROUTER_CONFIG) else []
    state = root / STATE_FOLDER
    if state.is_dir() and not state.is_symlink():
        for folder, _, names in os.walk(state):
            for name in names:
                path = Path(folder) / name
                if _regular(path):
                    found.append(path.relative_to(root).as_posix())
    return {relative: (root / relative).read_bytes() for relative in found}
