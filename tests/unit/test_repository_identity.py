"""The text a remote's URL is known by (gitsource.normalise_url): one for every way of
writing one repository, two for two repositories."""

from __future__ import annotations

import pytest

from reconciler.gitsource import normalise_url


@pytest.mark.parametrize(
    ("url", "identity"),
    [
        ("https://github.com:443/org/models", "github.com/org/models"),
        ("ssh://git@host.example:2222/org/models.git", "host.example/org/models"),
        ("https://host/org/repo@v2", "host/org/repo@v2"),  # an '@' in the path is a name
        ("host.example:org/models", "host.example/org/models"),
        ("git@GitLab.com:Team/Sub/Repo.git", "gitlab.com/Team/Sub/Repo"),
        ("/srv/git/models.git/", "/srv/git/models"),
        ("file:///srv/git/Models.git", "/srv/git/Models"),
    ],
)
def test_a_remote_url_is_known_by_its_host_and_path(url: str, identity: str) -> None:
    assert normalise_url(url) == identity


def test_repositories_on_two_ipv6_hosts_are_two() -> None:
    one = normalise_url("https://[2001:db8::1]:8443/org/models")
    other = normalise_url("https://[2001:db8::2]/org/models")
    assert one == "[2001:db8::1]/org/models"
    assert other == "[2001:db8::2]/org/models"


def test_an_ipv6_host_an_earlier_version_cut_short_is_still_that_repository() -> None:
    from reconciler.targets.ownership import same_repository

    now = normalise_url("https://[2001:db8::1]:8443/org/models")
    assert same_repository("[2001/org/models", now) and same_repository(now, "[2001/org/models")
    assert not same_repository("[2001/org/other", now)
    assert not same_repository(now, normalise_url("https://[2001:db8::2]/org/models"))
