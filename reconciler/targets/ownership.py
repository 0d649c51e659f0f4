"""Which repository made an endpoint, as targets shared by several repositories record it
(GitSource.identity): the comparisons every target type makes the same way."""

from __future__ import annotations

from pathlib import Path

# Hosts that match owner and repository names without regard to case: two clones whose
# URLs differ only so are one repository (GitSource.identity keeps the case written).
CASE_INSENSITIVE_HOSTS = frozenset(("github.com", "gitlab.com", "bitbucket.org"))


def same_repository(one: str, other: str) -> bool:
    """Whether two repository identities (GitSource.identity) name one repository. A host's
    name has no case (identities of scp-form remotes kept it before); a checkout with no
    remote (`path:FOLDER`) and a clone of it (its remote that folder) are one."""
    if one == other:
        return True
    # The sub-folder after `//` is a folder of the repository: its case counts.
    (url, _, folder), (other_url, _, other_folder) = one.partition("//"), other.partition("//")
    url, other_url = _plain(url), _plain(other_url)
    if folder != other_folder:
        return False
    local, other_local = _local(url), _local(other_url)
    if local is not None or other_local is not None:
        return local == other_local
    (host, _, path), (other_host, _, other_path) = url.partition("/"), other_url.partition("/")
    if _cut(host) or _cut(other_host):
        # Recorded by an earlier version, which cut an IPv6 host at its first ':'.
        host, other_host = host.split(":")[0], other_host.split(":")[0]
    if host.casefold() != other_host.casefold():
        return False
    return path == other_path or (
        host.casefold() in CASE_INSENSITIVE_HOSTS and path.casefold() == other_path.casefold()
    )


def _cut(host: str) -> bool:
    return host.startswith("[") and "]" not in host


def _plain(url: str) -> str:
    """An identity's URL without what earlier versions kept of some remotes (a query or
    fragment, and the `.git` before them): recorded so, it names the same repository. A
    checkout's folder (`path:`) is a name as it is: `repo.git` and `repo` are two."""
    if url.startswith("path:"):
        return url
    return url.split("#", 1)[0].split("?", 1)[0].rstrip("/").removesuffix(".git").rstrip("/")


def _local(url: str) -> str | None:
    """The folder an identity (its part before `//`) names: a checkout with no remote
    (`path:FOLDER`) or a remote that is a local folder; None for a host's."""
    if url.startswith("path:"):
        return url[len("path:") :]
    return url if url.startswith("/") else None


def checkout_of(identity: str) -> Path | None:
    """The folder a repository identity of a checkout with no remote names
    (`path:FOLDER` or `path:ROOT//SUBFOLDER`, GitSource.identity), or of a clone whose
    remote is a local folder; None for any other."""
    url, _, subfolder = identity.partition("//")
    root = _local(url)
    return Path(root, subfolder).resolve() if root else None


def made_here(owner: str | None, *, repository: str | None, checkout: Path) -> bool:
    """Whether the repository recorded as an endpoint's maker is this one: none recorded
    (made before repositories were recorded, or by the API), the same identity, or this
    very checkout (`checkout`, resolved) as it was named before it had a remote."""
    if owner is None or repository is None or same_repository(owner, repository):
        return True
    return checkout_of(owner) == checkout
