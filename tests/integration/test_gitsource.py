"""gitsource on real repositories: revisions as trees, status commits by plumbing."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from repo_builder import RepoBuilder

from reconciler.filetree import Digester, DirectoryTree
from reconciler.gitsource import GitSource, GitSourceError


def test_a_commit_and_its_checkout_have_the_same_digests(repo: RepoBuilder) -> None:
    repo.basics()
    repo.write("src/pkg/util.py", "X = 1\n")
    commit = repo.commit("files")
    source = GitSource(repo.root)
    from_git, from_disk = Digester(source.tree(commit)), Digester(DirectoryTree(repo.root))
    for path in ("src", "src/score.py", "models/sklearn-regression/v1", ""):
        assert from_git.digest(path) == from_disk.digest(path), path


def test_a_change_inside_a_folder_changes_its_digest_only(repo: RepoBuilder) -> None:
    repo.basics()
    first = repo.commit("one")
    repo.code(version="2")
    second = repo.commit("two")
    source = GitSource(repo.root)
    a, b = Digester(source.tree(first)), Digester(source.tree(second))
    assert a.digest("src") != b.digest("src")
    assert a.digest("models") == b.digest("models")


def test_a_repository_in_a_sub_folder_reads_relative_paths(repo: RepoBuilder) -> None:
    repo.write("gitops/endpoints/a.yml", "name: a\n")
    repo.write("other.txt", "x\n")
    repo.commit("nested")
    tree = GitSource(repo.root / "gitops").tree("HEAD")
    assert list(tree.paths()) == ["endpoints/a.yml"]
    assert tree.read("endpoints/a.yml") == b"name: a\n"
    assert tree.is_dir("endpoints") and not tree.is_dir("gitops")


def test_a_revision_sizes_its_files_from_its_listing_links_by_their_targets(
    repo: RepoBuilder,
) -> None:
    repo.write("endpoints/a.yml", "name: a\n")
    repo.write("big.yaml", "x: " + "y" * 5000 + "\n")
    (repo.root / "endpoints/link.yml").symlink_to("a.yml")
    repo.git("add", "-A")
    # A submodule is a commit in the tree (a gitlink, no size): never a file of ours.
    repo.git("update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},vendor/lib")
    repo.git("commit", "-q", "-m", "sizes")
    tree = GitSource(repo.root).tree("HEAD")
    assert sorted(tree.paths()) == ["big.yaml", "endpoints/a.yml", "endpoints/link.yml"]
    assert [tree.size(p) for p in ("endpoints/a.yml", "endpoints/link.yml", "big.yaml")] == [
        8,
        8,
        5004,
    ]
    assert tree.read("endpoints/link.yml") == b"name: a\n"


def test_an_unknown_revision_names_itself(repo: RepoBuilder) -> None:
    repo.write("a.txt", "a")
    repo.commit("a")
    with pytest.raises(GitSourceError, match="nope"):
        GitSource(repo.root).resolve("nope")


def test_a_stale_lock_of_the_status_branch_is_an_error_naming_it_and_the_fix(
    repo: RepoBuilder,
) -> None:
    # What a reconciler killed with its process group while git wrote the branch leaves.
    repo.write("a.txt", "a")
    repo.commit("a")
    source = GitSource(repo.root)
    source.write_status({"status/ep.yaml": "v: 1\n"}, message="first")
    lock = repo.root / ".git" / "refs" / "heads" / "reconcile-status.lock"
    lock.write_text("")
    with pytest.raises(GitSourceError) as caught:
        source.write_status({"status/ep.yaml": "v: 2\n"}, message="second")
    message = str(caught.value)
    assert message.startswith("status not written to branch reconcile-status: ")
    assert str(lock) in message and "File exists" in message
    assert "when no git command runs in this repository, remove it" in message
    lock.unlink()
    assert source.write_status({"status/ep.yaml": "v: 2\n"}, message="second").commit


def test_status_commits_touch_neither_the_index_nor_the_working_tree(repo: RepoBuilder) -> None:
    repo.write("a.txt", "a")
    head = repo.commit("a")
    repo.write("dirty.txt", "uncommitted")
    source = GitSource(repo.root)
    first = source.write_status({"status/ep.yaml": "endpoint: ep\n"}, message="status of a")
    assert first.commit is not None
    assert source.write_status({"status/ep.yaml": "endpoint: ep\n"}, message="again").commit is None
    second = source.write_status({"status/ep2.yaml": "endpoint: ep2\n"}, message="ep removed")
    assert second.commit is not None
    _, files = source.read_status()
    assert files == {"status/ep2.yaml": "endpoint: ep2\n"}
    assert repo.git("rev-parse", "HEAD") == head
    assert repo.git("status", "--porcelain") == "?? dirty.txt"
    assert repo.git("log", "-1", "--format=%s", "reconcile-status") == "ep removed"


def test_a_folder_outside_git_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(GitSourceError, match="not inside a git repository"):
        GitSource(tmp_path)


def test_a_repository_is_the_same_one_in_each_clone_and_by_each_way_of_naming_its_url(
    repo: RepoBuilder, tmp_path: Path
) -> None:
    repo.write("a.txt", "a")
    repo.commit("first")
    # No remote: the checkout's folder.
    assert GitSource(repo.root).identity() == f"path:{repo.root.resolve()}"
    repo.git("remote", "add", "origin", "https://example.invalid/placeholder")
    for url in (
        "https://user:secret@GitHub.com/org/models.git",
        "git@github.com:org/models",
        "ssh://git@github.com/org/models/",
    ):
        repo.git("remote", "set-url", "origin", url)
        assert GitSource(repo.root).identity() == "github.com/org/models"
    # A repository in a sub-folder of a checkout is that folder of it.
    (repo.root / "deploy").mkdir()
    assert GitSource(repo.root / "deploy").identity() == "github.com/org/models//deploy"
    # The daemon's cache clone of the remote is the same repository as the checkout.
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.root), str(bare)], check=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(bare), str(clone)], check=True)
    repo.git("remote", "set-url", "origin", f"file://{bare}")
    assert GitSource(clone).identity() == GitSource(repo.root).identity() == str(bare)[:-4]


@pytest.mark.parametrize(
    "url",
    [
        "user:tok3nSECRET@github.com:org/models",  # scp form with a password
        "https://user:tok/3nSECRET@github.com/org/models",  # a password holding a '/'
        "https://github.com/org/models.git?private_token=tok3nSECRET",
        "https://github.com/org/models#tok3nSECRET",
    ],
)
def test_no_part_of_a_credential_in_a_remote_url_reaches_the_identity(
    repo: RepoBuilder, url: str
) -> None:
    # The identity is written into Docker labels and Kubernetes annotations, and named in
    # errors: no piece of a token may be in it.
    repo.git("remote", "add", "origin", url)
    identity = GitSource(repo.root).identity()
    assert "tok3n" not in identity and "SECRET" not in identity
    assert identity == "github.com/org/models"


def test_the_clones_of_one_repository_are_one_owner_however_their_remote_is_written(
    repo: RepoBuilder, tmp_path: Path
) -> None:
    from reconciler.targets.ownership import made_here, same_repository

    repo.write("a.txt", "a")
    repo.commit("first")
    source = GitSource(repo.root)
    # A remote renamed (origin -> upstream) is the same repository; with several and no
    # origin, the first by name.
    repo.git("remote", "add", "origin", "https://github.com/Org/Models")
    named = source.identity()
    repo.git("remote", "rename", "origin", "upstream")
    assert source.identity() == named
    repo.git("remote", "add", "zz-fork", "https://github.com/someone/fork")
    assert source.identity() == named
    # ssh and https, `.git` and a trailing '/', a host in capitals: one repository.
    https = named
    for url in ("git@GitHub.com:org/models.git", "ssh://git@GITHUB.COM/org/models.git/"):
        repo.git("remote", "set-url", "upstream", url)
        assert same_repository(source.identity(), https), url
        assert same_repository(https, source.identity()), url
    # A host that matches names with case still ignores the case of its own name (DNS).
    assert same_repository("Git.Example.com/org/m", "git.example.com/org/m")
    assert not same_repository("git.example.com/Org/m", "git.example.com/org/m")
    # A checkout with no remote, cloned elsewhere: the clone's origin is that folder, so
    # each takes the other's endpoints as its own.
    repo.git("remote", "remove", "upstream")
    repo.git("remote", "remove", "zz-fork")
    first = GitSource(repo.root).identity()
    clone = tmp_path / "elsewhere"
    subprocess.run(["git", "clone", "-q", str(repo.root), str(clone)], check=True)
    second = GitSource(clone).identity()
    assert same_repository(first, second) and same_repository(second, first)
    assert made_here(second, repository=first, checkout=repo.root.resolve())
    # ... also once the first folder gained a remote (it knew itself as `path:` before).
    repo.git("remote", "add", "origin", "https://github.com/org/models")
    assert made_here(
        second, repository=GitSource(repo.root).identity(), checkout=repo.root.resolve()
    )
    # Two folders with no remote that were never cloned from one another stay two.
    other = RepoBuilder(tmp_path / "other")
    assert not same_repository(GitSource(other.root).identity(), first)


@pytest.mark.parametrize(
    "subdir",
    [
        "deploy",
        "deploy/",
        "./deploy",
        "deploy/x/..",
    ],
)
def test_the_daemons_clone_and_a_persons_are_one_repository_however_the_folder_is_written(
    repo: RepoBuilder, tmp_path: Path, subdir: str
) -> None:
    """`reconcile watch --url URL --subdir ./deploy` and `reconcile --repo clone/deploy` are
    one repository: were they two, each would call the other's endpoints another's."""
    from reconciler.gitsource import RemoteCheckout

    repo.write("deploy/x/a.txt", "a")
    repo.commit("first")
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.root), str(bare)], check=True)
    mine = tmp_path / "mine"
    subprocess.run(["git", "clone", "-q", str(bare), str(mine)], check=True)
    daemons = RemoteCheckout(str(bare), branch="main", cache_dir=tmp_path / "cache", subdir=subdir)
    assert daemons.identity() == GitSource(mine / "deploy").identity()


def test_status_history_reads_logs_with_paths_and_files_at_commits(repo: RepoBuilder) -> None:
    repo.write("a.txt", "a\n")
    repo.commit("first")
    source = GitSource(repo.root)
    one = source.write_status({"status/x.yaml": "v: 1\n", "status/y.yaml": "v: 1\n"}, message="s1")
    two = source.write_status({"status/x.yaml": "v: 2\n", "status/y.yaml": "v: 1\n"}, message="s2")
    assert one.commit and two.commit
    log = source.log("reconcile-status", paths=True)
    assert [(c.commit, c.subject, c.paths) for c in log] == [
        (two.commit, "s2", ("status/x.yaml",)),
        (one.commit, "s1", ("status/x.yaml", "status/y.yaml")),
    ]
    assert log[0].author == "reconciler"
    assert [c.commit for c in source.log("reconcile-status", path="status/y.yaml")] == [one.commit]
    texts = source.read_files_at(
        [(two.commit, "status/x.yaml"), (one.commit, "status/x.yaml"), (one.commit, "nope.yaml")]
    )
    assert texts == {
        (two.commit, "status/x.yaml"): "v: 2\n",
        (one.commit, "status/x.yaml"): "v: 1\n",
    }
    assert source.commit_info("0" * 40) is None
    info = source.commit_info("HEAD")
    assert info is not None and info.subject == "first" and info.author == "Test"
    before = source.status_fingerprint()
    source.write_status({"status/x.yaml": "v: 3\n"}, message="s3")
    assert source.status_fingerprint() != before


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_commit_file_edits_a_utf16_file_and_writes_it_back_in_utf16_with_its_mark(
    repo: RepoBuilder, encoding: str
) -> None:
    (repo.root / "e.yml").write_bytes(("\ufeffname: é\ntraffic:\n  a: 100\n").encode(encoding))
    repo.commit("utf-16")
    source = GitSource(repo.root)
    seen: list[str | None] = []

    def change(text: str | None) -> str | None:
        seen.append(text)
        return None if text is None else text.replace("a: 100", "a: 90")

    made = source.commit_file(
        "e.yml", change, message="edit", branch=repo.git("branch", "--show-current").strip()
    )
    assert made.commit is not None
    assert seen == ["\ufeffname: é\ntraffic:\n  a: 100\n"]
    raw = subprocess.run(
        ["git", "-C", str(repo.root), "show", f"{made.commit}:e.yml"],
        check=True,
        capture_output=True,
    ).stdout
    assert raw == "\ufeffname: é\ntraffic:\n  a: 90\n".encode(encoding)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ("name: é\n".encode("latin-1"), "e.yml is not UTF-8 (byte 6)"),
        ("\ufeffname: a\n".encode("utf-32"), "e.yml is UTF-32 encoded"),
    ],
)
def test_commit_file_refuses_a_file_in_another_encoding_with_a_reason(
    repo: RepoBuilder, data: bytes, words: str
) -> None:
    (repo.root / "e.yml").write_bytes(data)
    repo.commit("odd encoding")
    source = GitSource(repo.root)
    with pytest.raises(GitSourceError, match=re.escape(words)):
        source.commit_file(
            "e.yml",
            lambda t: t,
            message="edit",
            branch=repo.git("branch", "--show-current").strip(),
        )
