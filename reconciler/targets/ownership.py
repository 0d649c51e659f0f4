"""Which repository made an endpoint, as targets shared by several repositories record it
(GitSource.identity): the comparisons every target type makes the same way."""

from __future__ import annotations

from pathlib import Path

# Hosts that match owner and repository names without regard to case: two clones whose
# URLs differ only so are one repository (GitSource.identity keeps the case written).
CASE_INSENSITIVE_HOSTS = frozenset(("github.com", "gitlab.com", "bitbucket.org"))


def same_repository(one: str, other: str) -> bool:
    """Whether two repository identities (GitSource.identity) name one repository."""
    if one == other:
        return True
    # The sub-folder after `//` is a folder of the repository: its case counts.
    (url, _, folder), (other_url, _, other_folder) = one.partition("//"), other.partition("//")
    host = url.partition("/")[0]
    return (
        host in CASE_INSENSITIVE_HOSTS
        and url.casefold() == other_url.casefold()
        and folder == other_folder
    )


def checkout_of(identity: str) -> Path | None:
    """The folder a repository identity of a checkout with no remote names
    (`path:FOLDER` or `path:ROOT//SUBFOLDER`, GitSource.identity); None for any other."""
    if not identity.startswith("path:"):
        return None
    root, _, subfolder = identity[len("path:") :].partition("//")
    return Path(root, subfolder) if root else None


def made_here(owner: str | None, *, repository: str | None, checkout: Path) -> bool:
    """Whether the repository recorded as an endpoint's maker is this one: none recorded
    (made before repositories were recorded, or by the API), the same identity, or this
    very checkout (`checkout`, resolved) as it was named before it had a remote."""
    if owner is None or repository is None or same_repository(owner, repository):
        return True
    return checkout_of(owner) == checkout
