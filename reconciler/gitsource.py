"""The only module that runs git: revisions as file trees, and status commits.

A revision is read straight from the object database (`git ls-tree` once for the listing
and the blob ids, one `git cat-file --batch` for contents), so reading a commit never
touches the working tree, and the blob ids double as content ids for digests.
Status commits are made with plumbing (hash-object, mktree, commit-tree, update-ref) on
their own branch: the checkout, its index and its working tree are never touched, so the
reconciler's own commits cannot look like a user's edit.

Every command is a plain `git` process (GitCommands): gitpython's import, and the
`git version` it runs on import, cost a short command such as `reconcile diff`,
`validate` or `status` a tenth of a second (issue 15). `GitSource.repo` still gives a
gitpython Repo, made on first use, to callers that want one.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import os
import posixpath
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from reconciler.filetree import DirectoryTree, resolve_links
from reconciler.lazyimport import lazy_module

if TYPE_CHECKING:
    import git
else:
    # gitpython costs a short command 0.1 s (it runs `git --version` on import): loaded
    # only when GitSource.repo is asked for.
    git = lazy_module("git")

DEFAULT_STATUS_BRANCH = "reconcile-status"
COMMITTER_NAME = "reconciler"
COMMITTER_EMAIL = "reconciler@localhost"
# A fetch in CI must fail, not wait for a password nobody will type.
_NO_PROMPT = {"GIT_TERMINAL_PROMPT": "0"}


_IDENTITY = {
    "GIT_AUTHOR_NAME": COMMITTER_NAME,
    "GIT_AUTHOR_EMAIL": COMMITTER_EMAIL,
    "GIT_COMMITTER_NAME": COMMITTER_NAME,
    "GIT_COMMITTER_EMAIL": COMMITTER_EMAIL,
}


# git's messages in English whatever the user's locale: some are matched below ("couldn't
# find remote ref"), as gitpython ran every command.
_C_LOCALE = {"LANGUAGE": "C", "LC_ALL": "C"}


class GitFailed(Exception):
    """A git command that exited with a non-zero status: the status and git's stderr."""

    def __init__(self, command: tuple[str, ...], status: int, stderr: str) -> None:
        super().__init__(f"git {' '.join(command[:2])} exited with status {status}")
        self.command = command
        self.status = status
        self.stderr = stderr


def run_git(
    cwd: str | os.PathLike[str],
    *args: str,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
) -> bytes:
    """`git ARGS` in a folder: its output. Raises GitFailed (OSError when git is missing)."""
    environment = {**os.environ, **_C_LOCALE, **(env or {})}
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=environment,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise GitFailed(tuple(args), done.returncode, done.stderr.decode(errors="replace"))
    return done.stdout


class _Command(Protocol):
    def __call__(self, *args: str, env: Mapping[str, str] | None = None) -> str: ...


class GitCommands:
    """`git SUB-COMMAND ARGS` as `commands.sub_command(*args, env=...)` in one folder,
    returning git's output as text with its last newline removed (gitpython's `repo.git`
    convention, which the code below was written against)."""

    def __init__(self, cwd: str | os.PathLike[str]) -> None:
        self.cwd = cwd

    def __getattr__(self, name: str) -> _Command:
        if name.startswith("_"):
            raise AttributeError(name)
        sub_command = name.replace("_", "-")

        def command(*args: str, env: Mapping[str, str] | None = None) -> str:
            out = run_git(self.cwd, sub_command, *args, env=env)
            return out.decode(errors="replace").removesuffix("\n")

        return command


class GitSourceError(Exception):
    """A git repository or revision cannot be read; the message says which and why.

    git_said: git's own message in full (credentials in URLs masked), when git failed.
    """

    def __init__(self, message: str, *, git_said: str = "") -> None:
        super().__init__(message)
        self.git_said = git_said


def _status_not_written(branch: str, failed: GitFailed) -> str:
    """The error of a status commit git refused: git's first line, and the way out of a
    lock file that a git process killed midway left (git never removes one by itself)."""
    said = failed.stderr.strip()
    first = said.splitlines()[0] if said else str(failed)
    message = f"status not written to branch {branch}: {first.removeprefix('fatal: ')}"
    if ".lock': File exists" in said:
        message += (
            "; a git command killed while it wrote the branch leaves that lock file behind: "
            "when no git command runs in this repository, remove it"
        )
    return message


class GitTree:
    """The files of one commit, read from the object database.

    Symbolic links (mode 120000, a blob holding the target) are listed like files and
    resolved as reconciler.filetree resolves them on disk, so a commit and its checkout read
    the same: a link inside the repository reads as the file it names, any other raises.
    """

    def __init__(self, git_dir: str, commit: str) -> None:
        self.git_dir = git_dir
        self.commit = commit
        self._blobs: dict[str, str] = {}
        self._links: dict[str, str] = {}  # path -> blob id of the link's target text
        self._dirs: set[str] = {""}
        self._sizes: dict[str, int] | None = None
        # Every blob's size comes with the listing (--long): loading asks the size of each
        # YAML file before reading it, which cost each revision a `git cat-file
        # --batch-check` of its own (issue 15).
        self._all_sizes: dict[str, int] = {}
        try:
            listing = run_git(
                git_dir, "ls-tree", "-r", "--long", "-z", "--full-tree", commit
            ).decode(errors="surrogateescape")
        except GitFailed as exc:
            raise GitSourceError(
                f"cannot list commit {commit}: {_gist(git_message(exc))}"
            ) from None
        for entry in listing.split("\0"):
            if not entry:
                continue
            meta, path = entry.split("\t", 1)
            # The size is right-aligned with spaces ("-" for a submodule).
            mode, kind, sha, size = meta.split()
            # Submodules (commit) carry no content of ours.
            if kind != "blob":
                continue
            self._blobs[path] = sha
            self._all_sizes[path] = int(size)
            if mode == "120000":
                self._links[path] = sha
            # Its folders, up to the first one already known (siblings share them).
            folder = path.rpartition("/")[0]
            while folder and folder not in self._dirs:
                self._dirs.add(folder)
                folder = folder.rpartition("/")[0]

    def paths(self) -> Iterable[str]:
        return self._blobs.keys()

    def _link_target(self, path: str) -> str | None:
        sha = self._links.get(path)
        if sha is None:
            return None
        return self._raw(sha).decode(errors="replace")

    def _resolve(self, path: str) -> str:
        if path not in self._links:
            if path not in self._blobs:
                raise KeyError(path)
            return path
        return resolve_links(
            path,
            link_target=self._link_target,
            is_regular=lambda p: p in self._blobs and p not in self._links,
            is_dir=lambda p: p in self._dirs,
        )

    def _raw(self, sha: str) -> bytes:
        data = _BLOBS.get(sha)
        if data is None:
            data = _read_blob(self.git_dir, sha)
        return data

    def read(self, path: str) -> bytes:
        sha = self._blobs[self._resolve(path)]
        data = _BLOBS.get(sha)
        if data is None:
            # Loading reads every YAML file of a revision: fetch them all in one
            # `git cat-file --batch` instead of one round trip per file; files larger than
            # the blob cache keeps are left out (a data file of gigabytes named *.yaml).
            wanted = [sha]
            if path.endswith((".yml", ".yaml")):
                sizes = self._yaml_sizes()
                wanted = [self._blobs[p] for p, n in sizes.items() if n <= _BLOBS.largest] + [sha]
            _read_blobs(self.git_dir, wanted)
            data = _BLOBS.get(sha)
            if data is None:
                data = _read_blob(self.git_dir, sha)
        return data

    def _yaml_sizes(self) -> dict[str, int]:
        """Sizes of the YAML files (links left out), from the listing."""
        if self._sizes is None:
            self._sizes = {
                p: n
                for p, n in self._all_sizes.items()
                if p.endswith((".yml", ".yaml")) and p not in self._links
            }
        return self._sizes

    def size(self, path: str) -> int:
        resolved = self._resolve(path)
        known = self._all_sizes.get(resolved)
        if known is not None:
            return known
        return int(run_git(self.git_dir, "cat-file", "-s", self._blobs[resolved]))

    def blob_id(self, path: str) -> str:
        return self._blobs[self._resolve(path)]

    def is_file(self, path: str) -> bool:
        return path in self._blobs

    def is_dir(self, path: str) -> bool:
        return path.strip("/") in self._dirs


def _read_blob(git_dir: str, sha: str) -> bytes:
    """One blob's content (one larger than the blob cache keeps)."""
    return run_git(git_dir, "cat-file", "blob", sha)


def _cat_file(git_dir: str, names: Sequence[str], *, contents: bool) -> list[_Object | None]:
    """`git cat-file --batch` (contents) or `--batch-check` (sizes only) of object names
    (ids, or `commit:path`), one answer per name in the order asked: None where git has
    no such object."""
    if not names:
        return []
    done = subprocess.run(
        ["git", "cat-file", "--batch" if contents else "--batch-check"],
        input="".join(f"{name}\n" for name in names).encode(),
        cwd=git_dir,
        capture_output=True,
        check=True,
    )
    out = done.stdout
    answers: list[_Object | None] = []
    pos = 0
    for _ in names:
        header_end = out.index(b"\n", pos)
        fields = out[pos:header_end].decode(errors="replace").split(" ")
        pos = header_end + 1
        # Found: "<id> <type> <size>", then the content and a newline with --batch;
        # anything else ("<name> missing", "<name> ambiguous") has no content.
        if len(fields) != 3 or not fields[2].isdigit():
            answers.append(None)
            continue
        size = int(fields[2])
        data = out[pos : pos + size] if contents else b""
        if contents:
            pos += size + 1
        answers.append(_Object(fields[0], fields[1], size, data))
    return answers


@dataclass(frozen=True, slots=True)
class _Object:
    """One answer of `git cat-file --batch[-check]`; data is empty with --batch-check."""

    sha: str
    kind: str
    size: int
    data: bytes


class _BlobCache:
    """Blob contents by id, shared by every tree: revisions share most of their files.

    Bounded by total size; YAML files are small, so a large repository's worth fits.
    """

    def __init__(self, limit_bytes: int = 256 * 1024 * 1024) -> None:
        self.limit = limit_bytes
        self.largest = limit_bytes // 16  # the largest blob kept
        self.size = 0
        self.items: dict[str, bytes] = {}

    def get(self, sha: str) -> bytes | None:
        return self.items.get(sha)

    def put(self, sha: str, data: bytes) -> None:
        if sha in self.items or len(data) > self.largest:
            return
        while self.items and self.size + len(data) > self.limit:
            _, dropped = self.items.popitem()
            self.size -= len(dropped)
        self.items[sha] = data
        self.size += len(data)


_BLOBS = _BlobCache()


def _read_blobs(git_dir: str, shas: Iterable[str]) -> None:
    """Reads blobs into the cache with a single `git cat-file --batch`."""
    missing = sorted({sha for sha in shas if _BLOBS.get(sha) is None})
    for found in _cat_file(git_dir, missing, contents=True):
        if found is not None:
            _BLOBS.put(found.sha, found.data)


# The largest status file readers read (status files are a few kilobytes).
MAX_STATUS_FILE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class FoundStatus:
    """Status files as a reader finds them, and where: `ref` is refs/heads/BRANCH or
    refs/remotes/REMOTE/BRANCH, None when there is no status at all. `problem` says why
    the remote's could not be read, when it could not (unreachable, refused), and which
    files were left out or read with replaced bytes (too large, not UTF-8)."""

    branch: str
    ref: str | None
    commit: str | None
    files: dict[str, str]
    problem: str = ""


@dataclass(frozen=True, slots=True)
class WorktreeChange:
    """One file of the working tree that differs from HEAD: its path relative to the
    repository folder, and how (modified, untracked, added, deleted, renamed)."""

    path: str
    change: str


def _change_kind(xy: str) -> str:
    """The word for a `git status --porcelain` XY code, staged or not."""
    if xy == "??":
        return "untracked"
    for code, word in (("R", "renamed"), ("C", "copied"), ("A", "added"), ("D", "deleted")):
        if code in xy:
            return word
    return "modified"


@dataclass(frozen=True, slots=True)
class CommitInfo:
    """A commit as a reader's timeline shows it: who, when (committer time, seconds since
    the epoch) and the first line of its message."""

    commit: str
    author: str
    time: int
    subject: str
    paths: tuple[str, ...] = ()  # the files it changed, when asked for


@dataclass(frozen=True, slots=True)
class StatusCommit:
    """The status branch and the commit a write made on it (None: none needed)."""

    branch: str
    commit: str | None  # None: the content was unchanged, no commit was made


class GitSource:
    """A local git repository: its revisions, its working tree, its status branch."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        folder = Path(path).absolute()
        try:
            found = run_git(
                folder,
                "rev-parse",
                "--is-bare-repository",
                "--is-inside-git-dir",
                "--absolute-git-dir",
                "--show-cdup",
            )
        except (GitFailed, OSError):  # not a repository, no such folder, or no git at all
            raise GitSourceError(f"{path} is not inside a git repository") from None
        bare, inside_git_dir, git_dir, *rest = found.decode(errors="surrogateescape").split("\n")
        if bare == "true":
            raise GitSourceError(f"{path} is a bare repository; a checkout is needed")
        self.git_dir = git_dir
        # The checkout's folder as the user named it (symbolic links kept, as gitpython
        # kept them): --show-cdup is the way up from `path` to it.
        if inside_git_dir == "true":
            self.root = Path(git_dir).parent
        else:
            self.root = Path(os.path.normpath(folder / (rest[0] if rest else "")))
        self.cmd = GitCommands(self.root)
        self._repo: git.Repo | None = None
        # Commit ids resolve() found: reading a revision asks for its commit more than once.
        self._commits: set[str] = set()
        # The repository folder may be a sub-folder of the git checkout (example-repo/).
        self.subdir = Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        if self.subdir == ".":
            self.subdir = ""

    @property
    def repo(self) -> git.Repo:
        """The repository as a gitpython Repo, made on first use."""
        if self._repo is None:
            self._repo = git.Repo(self.root)
        return self._repo

    def remotes(self) -> list[str]:
        """The names of the repository's remotes, in git's order."""
        return [name for name in self.cmd.remote().splitlines() if name.strip()]

    def identity(self) -> str:
        """Which repository this is, the same in each of its clones (a user's checkout,
        the daemon's cache clone): its origin's URL without scheme, credentials or `.git`
        (`github.com/org/repo`), or the checkout's folder when it has no remote; with the
        sub-folder when the repository is one. Targets shared by two repositories tell
        their endpoints apart by it."""
        remotes = self.remotes()
        remote = "origin" if "origin" in remotes else next(iter(remotes), None)
        url = None
        if remote is not None:
            with contextlib.suppress(GitFailed):  # a remote with no URL configured
                url = self.cmd.config("--get", f"remote.{remote}.url").strip() or None
        base = normalise_url(url) if url else f"path:{self.root.resolve()}"
        return f"{base}//{self.subdir}" if self.subdir else base

    def resolve(self, rev: str) -> str:
        """The full commit id of a revision, or an error that names it."""
        if rev in self._commits:
            return rev  # a commit id found before: commits never change
        try:
            if rev.startswith("-"):
                raise ValueError(rev)  # an option, not a revision
            commit = self.cmd.rev_parse("--verify", "--quiet", f"{rev}^{{commit}}").strip()
        except (ValueError, GitFailed):
            raise GitSourceError(
                f"revision {rev!r} is not in the repository at {self.root} "
                "(a shallow clone may need `git fetch --deepen` or the base branch fetched)"
            ) from None
        self._commits.add(commit)
        return commit

    def tree(self, rev: str) -> GitTree | SubTree:
        commit = self.resolve(rev)
        tree = GitTree(self.git_dir, commit)
        return SubTree(tree, self.subdir) if self.subdir else tree

    def export(self, commit: str, dest: Path) -> Path:
        """A private linked worktree at `dest`, checked out at `commit`; returns the
        repository folder in it. Builds read these files: exactly the commit's, whatever
        is uncommitted in the user's checkout."""
        if not (dest / ".git").exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.cmd.worktree("prune")
            self.cmd.worktree("add", "--detach", "--force", str(dest), commit)
        else:
            other = GitCommands(dest)
            other.checkout("--force", "--detach", commit)
            other.clean("-ffdx", "--quiet")
        return dest / self.subdir if self.subdir else dest

    def working_tree(self) -> DirectoryTree:
        return DirectoryTree(self.root / self.subdir)

    def worktree_changes(self) -> tuple[WorktreeChange, ...]:
        """The working tree's differences from HEAD under the repository folder, untracked
        files one by one (ignored files left out), sorted by path. Before the first commit
        every file is one (untracked, or added when staged)."""
        out = str(
            self.cmd.status(
                "--porcelain=v1", "-z", "--untracked-files=all", "--", self.subdir or "."
            )
        )
        entries = out.split("\0")
        prefix = f"{self.subdir}/" if self.subdir else ""
        found: list[WorktreeChange] = []
        i = 0
        while i < len(entries):
            entry = entries[i]
            i += 1
            if len(entry) < 4:
                continue
            xy, path = entry[:2], entry[3:]
            if "R" in xy or "C" in xy:
                i += 1  # -z puts the rename's old path in the next entry
            found.append(WorktreeChange(path.removeprefix(prefix), _change_kind(xy)))
        return tuple(sorted(found, key=lambda c: c.path))

    def head(self) -> str | None:
        """HEAD's commit id, None before the first commit."""
        return self.resolve("HEAD") if self.has_commits() else None

    def commit_time(self, commit: str) -> int:
        """A commit's committer time, seconds since the epoch."""
        return self._commit_time(commit)

    def has_commits(self) -> bool:
        return self.head_commit() is not None

    # --- review: a base a CI clone lacks, the base branch's history, approvals ----------

    def is_shallow(self) -> bool:
        return str(self.cmd.rev_parse("--is-shallow-repository")).strip() == "true"

    def fetch_revision(self, rev: str, *, depth: int = 50) -> str:
        """Fetch a revision that a CI clone lacks, then resolve it; for `reconcile diff`.

        `REMOTE/BRANCH` (a remote-tracking name such as origin/main) fetches that branch
        into its remote-tracking ref, so the name resolves afterwards; anything else is
        fetched by name from `origin` (or the only remote) and resolved as FETCH_HEAD. A
        shallow clone fetches `depth` commits; a complete clone is fetched in full, since
        a --depth fetch would make it shallow.
        """
        remotes = self.remotes()
        head, _, branch = rev.removeprefix("refs/remotes/").partition("/")
        if branch and head in remotes:
            remote = head
            refspec = f"+refs/heads/{branch}:refs/remotes/{remote}/{branch}"
            fetched = f"refs/remotes/{remote}/{branch}"
        elif remotes:
            remote = "origin" if "origin" in remotes else remotes[0]
            refspec, fetched = rev, "FETCH_HEAD"
        else:
            raise GitSourceError(
                f"revision {rev!r} is not in the repository at {self.root}, "
                "which has no remote to fetch it from"
            )
        args = [f"--depth={depth}"] if self.is_shallow() else []
        try:
            self.cmd.fetch(*args, remote, refspec, env=_NO_PROMPT)
        except GitFailed as exc:
            said = git_message(exc)
            raise GitSourceError(
                f"cannot fetch {rev!r} from {remote}: {_gist(said)}", git_said=said
            ) from None
        return self.resolve(fetched)

    def first_parent_log(self, rev: str, *, limit: int = 500) -> tuple[list[tuple[str, int]], bool]:
        """(commit, committer time) back from `rev` along first parents, newest first, and
        whether that is the whole history (False: cut by `limit` or a shallow boundary).

        First parents, because on a main branch they are the states it was in one after
        the other (merge commits carry their merge time); a merged branch's own commits
        never were the state of main.
        """
        out = str(self.cmd.log("--first-parent", f"--max-count={limit}", "--format=%H %ct %P", rev))
        commits: list[tuple[str, int]] = []
        parents = ""
        for line in out.splitlines():
            sha, when, *rest = line.split(" ")
            commits.append((sha, int(when)))
            parents = " ".join(rest)
        if not commits:
            return commits, True
        shallow_file = Path(self.git_dir) / "shallow"
        shallow = set(shallow_file.read_text().split()) if shallow_file.is_file() else set()
        complete = not parents.strip() and commits[-1][0] not in shallow
        return commits, complete

    def commit_messages(self, base: str, head: str) -> list[str]:
        """Messages of the commits in base..head (those that head adds to base)."""
        out = str(self.cmd.log("-z", "--format=%B", f"{base}..{head}"))
        return [m for m in out.split("\0") if m.strip()]

    # --- the status branch ------------------------------------------------------------

    def read_status(self, branch: str = DEFAULT_STATUS_BRANCH) -> tuple[str | None, dict[str, str]]:
        """The status files on a branch: (its commit, {path: text}); (None, {}) if absent."""
        ref = self._branch_commit(branch)
        if ref is None:
            return None, {}
        tree = GitTree(self.git_dir, ref)
        files = {p: tree.read(p).decode() for p in tree.paths() if p.endswith(".yaml")}
        return ref, files

    def find_status(
        self, branch: str = DEFAULT_STATUS_BRANCH, *, fetch: bool = True
    ) -> FoundStatus:
        """The newest status this checkout can know of, for readers (`--target status`,
        `reconcile status`): the local branch or the remote's, whichever is newer.

        A CI clone has only the remote's, if that: a clone with history of all branches
        has `refs/remotes/origin/BRANCH`; a shallow or single-branch clone has neither, and
        then the branch is fetched from origin (or the only remote) into that ref, one commit
        deep in a shallow clone (the tip's files are all a reader needs), in full otherwise
        (a --depth fetch would make a complete clone shallow). When both exist, the one that
        contains the other wins (the daemon commits locally, then pushes: a local branch
        ahead of origin is a local daemon's newer status, one behind it is stale); if they
        diverged, the later commit time, origin on a tie.
        """
        local = self._branch_commit(branch)
        remotes = self.remotes()
        remote = "origin" if "origin" in remotes else (remotes[0] if remotes else None)
        remote_ref = f"refs/remotes/{remote}/{branch}" if remote else None
        remote_commit = self._ref_commit(remote_ref) if remote_ref else None
        problem = ""
        # Fetched only when neither is there: a local daemon's user, whose remote never
        # gets status, is not made to wait for the network on every read.
        neither = local is None and remote_commit is None
        if fetch and neither and remote is not None and remote_ref is not None:
            args = ["--depth=1"] if self.is_shallow() else []
            try:
                self.cmd.fetch(*args, remote, f"+refs/heads/{branch}:{remote_ref}", env=_NO_PROMPT)
                remote_commit = self._ref_commit(remote_ref)
            except GitFailed as exc:
                said = git_message(exc)
                # A remote without the branch is the common case of "no status yet";
                # anything else (unreachable, refused) is worth saying.
                if "couldn't find remote ref" not in said:
                    problem = f"cannot fetch {branch} from {remote}: {_gist(said)}"
        chosen: tuple[str, str] | None = None
        if local is not None and remote_commit is not None and remote_ref is not None:
            if local == remote_commit or self._is_ancestor(local, remote_commit):
                local_wins = False
            elif self._is_ancestor(remote_commit, local):
                local_wins = True
            else:  # diverged: the later commit, origin on a tie
                local_wins = self._commit_time(local) > self._commit_time(remote_commit)
            chosen = (f"refs/heads/{branch}", local) if local_wins else (remote_ref, remote_commit)
        elif local is not None:
            chosen = (f"refs/heads/{branch}", local)
        elif remote_commit is not None and remote_ref is not None:
            chosen = (remote_ref, remote_commit)
        if chosen is None:
            return FoundStatus(branch, None, None, {}, problem)
        ref, commit = chosen
        tree = GitTree(self.git_dir, commit)
        files: dict[str, str] = {}
        problems = [problem] if problem else []
        for path in sorted(tree.paths()):
            if not path.endswith(".yaml"):
                continue
            # A status file is a few kilobytes. One far larger is not ours (a push of
            # megabytes of one letter compresses to kilobytes): its size is asked of git
            # first and it is never read, so no reader holds it whole.
            if tree.size(path) > MAX_STATUS_FILE_BYTES:
                problems.append(f"{path} is larger than {MAX_STATUS_FILE_BYTES} bytes, not read")
                continue
            raw = tree.read(path)
            try:
                files[path] = raw.decode()
            except UnicodeDecodeError:
                # One file that is not UTF-8 must not hide every other endpoint's status.
                files[path] = raw.decode(errors="replace")
                problems.append(f"{path} is not UTF-8 text (its bytes are shown replaced)")
        return FoundStatus(branch, ref, commit, files, "; ".join(problems))

    def _ref_commit(self, ref: str) -> str | None:
        try:
            return str(self.cmd.rev_parse("--verify", "--quiet", f"{ref}^{{commit}}"))
        except GitFailed:
            return None

    def _is_ancestor(self, older: str, newer: str) -> bool:
        # False also where a shallow clone lacks the history to tell.
        try:
            self.cmd.merge_base("--is-ancestor", older, newer)
        except GitFailed:
            return False
        return True

    def _commit_time(self, commit: str) -> int:
        return int(str(self.cmd.log("-1", "--format=%ct", commit)).strip())

    # --- for readers of the status branch's past (the dashboard) ----------------------

    def status_fingerprint(self, branch: str = DEFAULT_STATUS_BRANCH) -> str:
        """Changes whenever the status branch (local or a remote's) or HEAD moves: one git
        call, cheap enough to poll every few seconds."""
        out = str(
            self.cmd.for_each_ref(
                "--format=%(objectname) %(refname)",
                f"refs/heads/{branch}",
                f"refs/remotes/*/{branch}",
            )
        )
        head = self.head_commit() or ""  # "" on an unborn branch
        return f"{head}\n{out.strip()}"

    def head_commit(self) -> str | None:
        """HEAD's commit, None on an unborn branch."""
        try:
            commit = self.cmd.rev_parse("--verify", "--quiet", "HEAD^{commit}").strip()
        except GitFailed:
            return None
        if not commit:
            return None
        self._commits.add(commit)
        return commit

    def log(
        self, rev: str, *, path: str | None = None, limit: int = 100, paths: bool = False
    ) -> list[CommitInfo]:
        """Commits back from `rev` (touching `path` when given), newest first; with
        `paths`, each with the files it changed (one git call for all)."""
        args = [f"--max-count={limit}", "--format=%x1e%H%x1f%an%x1f%ct%x1f%s"]
        if paths:
            args.append("--name-only")
        args.append(rev)
        if path is not None:
            args += ["--", path]
        try:
            out = str(self.cmd.log(*args))
        except GitFailed as exc:
            raise GitSourceError(
                f"cannot read the log of {rev!r}: {_gist(git_message(exc))}"
            ) from None
        found: list[CommitInfo] = []
        for record in out.split("\x1e"):
            head, _, rest = record.partition("\n")
            fields = head.split("\x1f")
            if len(fields) == 4:
                sha, author, when, subject = fields
                changed = tuple(line for line in rest.splitlines() if line.strip())
                found.append(CommitInfo(sha, author, int(when), subject, changed))
        return found

    def commit_info(self, rev: str) -> CommitInfo | None:
        """Who made a commit, when, and its subject; None when the repository lacks it."""
        try:
            found = self.log(self._verified(rev), limit=1)
        except GitSourceError:
            return None
        return found[0] if found else None

    def read_files_at(self, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """Files' texts at commits, {(commit, path): text}, with one `git cat-file --batch`
        for all of them (a timeline reads one file at fifty commits); pairs the repository
        lacks are left out."""
        pairs = list(dict.fromkeys(wanted))
        answers = _cat_file(self.git_dir, [f"{c}:{p}" for c, p in pairs], contents=True)
        return {
            pair: found.data.decode(errors="replace")
            for pair, found in zip(pairs, answers, strict=True)
            if found is not None and found.kind == "blob"
        }

    def file_sizes_at(self, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Files' sizes at commits, {(commit, path): bytes}, from one `git cat-file
        --batch-check` (nothing is read); pairs the repository lacks are left out."""
        pairs = list(dict.fromkeys(wanted))
        answers = _cat_file(self.git_dir, [f"{c}:{p}" for c, p in pairs], contents=False)
        return {
            pair: found.size
            for pair, found in zip(pairs, answers, strict=True)
            if found is not None and found.kind == "blob"
        }

    def _verified(self, rev: str) -> str:
        sha = self._ref_commit(rev)
        if not sha:
            raise GitSourceError(f"revision {rev!r} is not in the repository")
        return sha

    def write_status(
        self, files: Mapping[str, str], *, message: str, branch: str = DEFAULT_STATUS_BRANCH
    ) -> StatusCommit:
        """Commit exactly these files to the status branch, if they differ from its tip.
        Raises GitSourceError naming the branch and what git said (and, for a lock file a
        killed git left, what to do)."""
        try:
            tree = self._make_tree({path: text.encode() for path, text in files.items()})
            parent = self._branch_commit(branch)
            if parent is not None and self._tree_of(parent) == tree:
                return StatusCommit(branch, None)
            args = [tree, "-m", message] + (["-p", parent] if parent else [])
            commit = self.cmd.commit_tree(*args, env=_IDENTITY).strip()
            # Compare-and-swap: a concurrent writer makes this fail instead of losing its
            # commit.
            self.cmd.update_ref(f"refs/heads/{branch}", commit, parent or "0" * 40)
        except GitFailed as exc:
            raise GitSourceError(_status_not_written(branch, exc), git_said=exc.stderr) from None
        return StatusCommit(branch, commit)

    def _branch_commit(self, branch: str) -> str | None:
        try:
            return str(self.cmd.rev_parse("--verify", "--quiet", f"refs/heads/{branch}"))
        except GitFailed:
            return None

    def _tree_of(self, commit: str) -> str:
        return self.cmd.rev_parse("--verify", f"{commit}^{{tree}}").strip()

    def _store_blob(self, data: bytes) -> str:
        return run_git(self.git_dir, "hash-object", "-w", "--stdin", stdin=data).decode().strip()

    def _make_tree(self, files: Mapping[str, bytes]) -> str:
        """A tree object holding files at nested paths; returns its id."""
        children: dict[str, dict[str, bytes]] = {}
        entries: list[str] = []
        for path, data in files.items():
            head, _, rest = path.partition("/")
            if rest:
                children.setdefault(head, {})[rest] = data
            else:
                entries.append(f"100644 blob {self._store_blob(data)}\t{head}")
        for name, sub in children.items():
            entries.append(f"040000 tree {self._make_tree(sub)}\t{name}")
        listing = "".join(f"{e}\n" for e in sorted(entries, key=lambda e: e.split("\t")[1]))
        done = subprocess.run(
            ["git", "mktree"],
            input=listing.encode(),
            cwd=self.git_dir,
            capture_output=True,
            check=True,
        )
        return done.stdout.decode().strip()

    # --- commits to the watched branch (rollout steps, rollout control) ----------------

    def branch_messages(self, rev: str, *, limit: int = 200) -> list[tuple[str, str]]:
        """(commit, message) back from `rev` along first parents, newest first: the order
        the watched branch was in, where rollout commits and their trailers are read."""
        out = str(
            self.cmd.log("--first-parent", f"--max-count={limit}", "-z", "--format=%H%x1f%B", rev)
        )
        found: list[tuple[str, str]] = []
        for entry in out.split("\0"):
            sha, sep, message = entry.strip("\n").partition("\x1f")
            if sep:
                found.append((sha, message))
        return found

    def parent(self, commit: str) -> str | None:
        """The first parent of a commit, None for a root commit (or one a shallow clone
        lacks)."""
        try:
            return str(self.cmd.rev_parse("--verify", "--quiet", f"{commit}^1")).strip()
        except GitFailed:
            return None

    def current_branch(self) -> str | None:
        """The branch checked out in this checkout, None when HEAD is detached."""
        try:
            return str(self.cmd.symbolic_ref("--quiet", "--short", "HEAD")).strip() or None
        except GitFailed:
            return None

    def commit_file(
        self,
        path: str | None,
        change: FileChange,
        *,
        message: str,
        branch: str,
        as_reconciler: bool = True,
        attempts: int = 3,
    ) -> FileCommit:
        """Commit one file's new text on top of `branch`: change(text at the tip, None if
        absent) gives it, or None to commit nothing. path None commits no file change (a
        message only: a control commit). Compare-and-swap on the branch: a commit made
        meanwhile (a person's) is re-read and change asked again, never overwritten.

        as_reconciler: the daemon's identity; else git's configured one (a person's CLI).
        When the branch is the one checked out here, its index and working tree follow,
        and uncommitted edits of the file refuse the commit.
        """
        full = self._in_repo(path)
        for attempt in range(1, attempts + 1):
            tip = self._branch_commit(branch)
            if tip is None:
                raise GitSourceError(f"branch {branch} does not exist in {self.root}")
            new = self._changed(tip, full, change)
            if new is None:
                return FileCommit(branch, None, attempt)
            checked_out = self.current_branch() == branch
            if checked_out and full is not None and self.dirty_paths_of(full):
                raise GitSourceError(
                    f"{full} has uncommitted edits in {self.root}: commit or stash them first"
                )
            commit = self._commit_on(tip, full, new, message, as_reconciler=as_reconciler)
            try:
                self.cmd.update_ref(f"refs/heads/{branch}", commit, tip)
            except GitFailed:
                continue  # the branch moved: read it again
            if checked_out and full is not None:
                (self.repo_root_path() / full).write_bytes(new)
                self.cmd.reset("-q", "--", full)
            return FileCommit(branch, commit, attempt)
        raise PushRejected(f"branch {branch} kept moving: {attempts} attempts to commit failed")

    def propose_file(
        self,
        path: str,
        change: FileChange,
        *,
        message: str,
        base: str,
        branch: str,
    ) -> FileCommit:
        """The file's change as a commit on `base`'s tip, on a branch of its own for a person
        to merge (mode pull-request). Idempotent: a branch already holding the same text
        is left as it is, so asking again each pass pushes nothing."""
        full = self._in_repo(path)
        assert full is not None
        tip = self._branch_commit(base)
        if tip is None:
            raise GitSourceError(f"branch {base} does not exist in {self.root}")
        new = self._changed(tip, full, change)
        if new is None:
            return FileCommit(branch, None, 1)
        existing = self._branch_commit(branch)
        if existing is not None and self._text_at(existing, full) == new:
            return FileCommit(branch, None, 1)
        commit = self._commit_on(tip, full, new, message, as_reconciler=True)
        self.cmd.update_ref(f"refs/heads/{branch}", commit)
        return FileCommit(branch, commit, 1)

    def undo_commit(self, branch: str, commit: str, parent: str) -> bool:
        """Move `branch` back from `commit` (its tip, as commit_file left it) to `parent`;
        when the branch is checked out here, its index and working tree follow (`reset
        --keep`: other uncommitted edits stay). False when the branch moved on since."""
        if self._branch_commit(branch) != commit:
            return False
        try:
            if self.current_branch() == branch:
                self.repo.git.reset("-q", "--keep", parent)
            else:
                self.repo.git.update_ref(f"refs/heads/{branch}", parent, commit)
        except git.GitCommandError:
            return False
        return True

    def push_branch(self, branch: str) -> None:
        """Push a local branch to origin as it is (fast-forward only: never forced)."""
        try:
            self.cmd.push("origin", f"refs/heads/{branch}:refs/heads/{branch}", env=_NO_PROMPT)
        except GitFailed as exc:
            said = git_message(exc)
            raise PushRejected(f"push of {branch} refused: {_gist(said)}", git_said=said) from None

    def repo_root_path(self) -> Path:
        return self.root

    def dirty_paths_of(self, full: str) -> list[str]:
        out = self.cmd.status("--porcelain", "--", full)
        return [line for line in out.splitlines() if line.strip()]

    def _in_repo(self, path: str | None) -> str | None:
        """A path of the repository folder as a path of the git tree (its sub-folder)."""
        if path is None:
            return None
        return f"{self.subdir}/{path}" if self.subdir else path

    def _text_at(self, commit: str, full: str) -> bytes | None:
        try:
            return GitTree(self.git_dir, commit).read(full)
        except KeyError:
            return None

    def _changed(self, tip: str, full: str | None, change: FileChange) -> bytes | None:
        if full is None:
            return b"" if change(None) is not None else None
        old = self._text_at(tip, full)
        encoding = "utf-8" if old is None else text_encoding(old, full)
        new = change(None if old is None else old.decode(encoding))
        if new is None or new.encode(encoding) == old:
            return None
        return new.encode(encoding)

    def _commit_on(
        self, parent: str, full: str | None, data: bytes, message: str, *, as_reconciler: bool
    ) -> str:
        """A commit whose tree is parent's with one file replaced (none: the same tree),
        made in a private index so the checkout's own is never touched."""
        if full is None:
            tree = self._tree_of(parent)
        else:
            blob = self._store_blob(data)
            mode = "100644"
            listed = str(self.cmd.ls_tree(parent, "--", full)).strip()
            if listed and listed.split(" ")[0] in ("100644", "100755"):
                mode = listed.split(" ")[0]
            import tempfile  # only here: its import (random, ...) costs reading commands

            with tempfile.TemporaryDirectory() as scratch:
                env = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
                self.cmd.read_tree(parent, env=env)
                self.cmd.update_index("--add", "--cacheinfo", f"{mode},{blob},{full}", env=env)
                tree = str(self.cmd.write_tree(env=env)).strip()
        env = _IDENTITY if as_reconciler else {}
        return str(self.cmd.commit_tree(tree, "-p", parent, "-m", message, env=env)).strip()


FileChange = Callable[[str | None], str | None]

_UTF16_BOMS: Final = ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


def text_encoding(data: bytes, path: str) -> str:
    """The encoding a file's edit keeps: UTF-16 with its byte order mark (what the loader
    reads too, as YAML does: some editors save "Unicode" so), else UTF-8. The mark stays
    in the decoded text (U+FEFF, which the edits keep), so it is written back as it was.
    GitSourceError for a file in neither (the caller says it cannot commit, and why)."""
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise GitSourceError(f"{path} is UTF-32 encoded: save it as UTF-8 to let it be edited")
    encoding = next((name for bom, name in _UTF16_BOMS if data.startswith(bom)), "utf-8")
    try:
        data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise GitSourceError(
            f"{path} is not {encoding.upper()} (byte {exc.start}): save it as UTF-8 to let "
            "it be edited"
        ) from None
    return encoding


@dataclass(frozen=True, slots=True)
class FileCommit:
    """The branch and the commit a change of one file made on it."""

    branch: str
    commit: str | None  # None: nothing to commit (the change gave None or the same text)
    attempts: int  # 2 or more: the branch moved meanwhile and was read again


class PushRejected(GitSourceError):
    """The remote refused the status branch (moved on, a hook, or it is unreachable)."""


class RemoteCheckout(GitSource):
    """A clone of a remote repository kept in a cache folder, fetched on demand.

    Its working tree is checked out (detached) at the reconciled commit: images are built
    from these files, which are exactly the commit's. Nobody edits this clone by hand.
    """

    def __init__(self, url: str, *, branch: str, cache_dir: Path, subdir: str = "") -> None:
        self.url = url
        self.branch = branch
        name = hashlib.sha256(url.encode()).hexdigest()[:16]
        folder = cache_dir / name
        if not (folder / ".git").exists():
            folder.parent.mkdir(parents=True, exist_ok=True)
            try:
                run_git(
                    folder.parent,
                    "clone",
                    "--no-checkout",
                    "--branch",
                    branch,
                    "--",
                    url,
                    str(folder),
                    env=_NO_PROMPT,
                )
            except GitFailed as exc:
                said = git_message(exc)
                raise GitSourceError(
                    f"cannot clone {redact(url)} (branch {branch}): {_gist(said)}",
                    git_said=said,
                ) from None
        super().__init__(folder)
        # The sub-folder may not be checked out yet: it is a path inside the tree, as a
        # checkout's own sub-folder names it (`./deploy/` is `deploy`): the identity of the
        # repository holds it, the same in a person's clone.
        folder_in = posixpath.normpath(subdir.strip("/")) if subdir.strip("/") else ""
        self.subdir = "" if folder_in == "." else folder_in

    def fetch(self) -> str:
        """Fetch the branch (and the status branch's remote tip); returns the branch's commit."""
        try:
            self.cmd.fetch(
                "--prune", "origin", f"+refs/heads/{self.branch}:refs/remotes/origin/{self.branch}"
            )
        except GitFailed as exc:
            said = git_message(exc)
            raise GitSourceError(
                f"cannot fetch {redact(self.url)}: {_gist(said)}", git_said=said
            ) from None
        return self.resolve(f"refs/remotes/origin/{self.branch}")

    def checkout(self, commit: str) -> None:
        self.cmd.checkout("--force", "--detach", commit)
        self.cmd.clean("-ffdx", "--quiet")

    def commit_file(
        self,
        path: str | None,
        change: FileChange,
        *,
        message: str,
        branch: str,
        as_reconciler: bool = True,
        attempts: int = 3,
    ) -> FileCommit:
        """The remote's branch gets the commit: made on its fetched tip and pushed, never
        forced. A push rejected because the branch moved (a person pushed meanwhile) is made
        again on the new tip, change asked again with the text there."""
        full = self._in_repo(path)
        reason = ""
        for attempt in range(1, attempts + 1):
            tip = self._fetch_branch(branch)
            new = self._changed(tip, full, change)
            if new is None:
                return FileCommit(branch, None, attempt)
            commit = self._commit_on(tip, full, new, message, as_reconciler=as_reconciler)
            try:
                self.cmd.push("origin", f"{commit}:refs/heads/{branch}", env=_NO_PROMPT)
            except GitFailed as exc:
                reason = _gist(git_message(exc))
                continue
            # The remote-tracking ref follows, so the next fetch finds nothing surprising.
            self.cmd.update_ref(f"refs/remotes/origin/{branch}", commit)
            return FileCommit(branch, commit, attempt)
        raise PushRejected(
            f"push to {branch} of {redact(self.url)} refused {attempts} times: {reason}"
        )

    def propose_file(
        self,
        path: str,
        change: FileChange,
        *,
        message: str,
        base: str,
        branch: str,
    ) -> FileCommit:
        """The change on a branch of its own pushed to the remote for a person to merge;
        idempotent: a remote branch already holding the same text is not pushed again."""
        full = self._in_repo(path)
        assert full is not None
        tip = self._fetch_branch(base)
        new = self._changed(tip, full, change)
        if new is None:
            return FileCommit(branch, None, 1)
        with contextlib.suppress(GitSourceError):
            existing = self._fetch_branch(branch)
            if self._text_at(existing, full) == new:
                return FileCommit(branch, None, 1)
        commit = self._commit_on(tip, full, new, message, as_reconciler=True)
        try:
            # The daemon's own proposal branch: replaced when the watched branch moved on.
            self.cmd.push("origin", f"+{commit}:refs/heads/{branch}", env=_NO_PROMPT)
        except GitFailed as exc:
            said = git_message(exc)
            raise PushRejected(f"push of {branch} refused: {_gist(said)}", git_said=said) from None
        return FileCommit(branch, commit, 1)

    def _fetch_branch(self, branch: str) -> str:
        ref = f"refs/remotes/origin/{branch}"
        try:
            self.cmd.fetch("origin", f"+refs/heads/{branch}:{ref}", env=_NO_PROMPT)
        except GitFailed as exc:
            said = git_message(exc)
            raise GitSourceError(
                f"cannot fetch {branch} of {redact(self.url)}: {_gist(said)}", git_said=said
            ) from None
        return self.resolve(ref)

    def push_status(self, branch: str = DEFAULT_STATUS_BRANCH) -> None:
        """Push the local status branch; on rejection, replay its files onto the remote's
        tip (the remote moved on) so that the next try is a fast-forward."""
        local = self._branch_commit(branch)
        if local is None:
            return
        try:
            self.cmd.push("origin", f"refs/heads/{branch}:refs/heads/{branch}")
            return
        except GitFailed as exc:
            reason = _gist(git_message(exc))
        # Rebase our files onto whatever the remote has, for the next attempt.
        try:
            self.cmd.fetch("origin", f"+refs/heads/{branch}:refs/remotes/origin/{branch}")
            remote_tip = self.resolve(f"refs/remotes/origin/{branch}")
        except (GitFailed, GitSourceError):
            raise PushRejected(f"status push to {redact(self.url)} failed: {reason}") from None
        _, files = self.read_status(branch)
        message = self.cmd.log("-1", "--format=%B", local)
        tree = self._make_tree({p: t.encode() for p, t in files.items()})
        if self._tree_of(remote_tip) != tree:
            commit = self.cmd.commit_tree(
                tree, "-m", message, "-p", remote_tip, env=_IDENTITY
            ).strip()
        else:
            commit = remote_tip
        self.cmd.update_ref(f"refs/heads/{branch}", commit, local)
        raise PushRejected(
            f"status push to {redact(self.url)} rejected ({reason}); replayed onto its tip"
        )


# user:password@ (or token@) in a URL: a remote URL may embed a CI token.
_URL_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@")


def normalise_url(url: str) -> str:
    """A remote's URL as one text for all the ways of writing it: `host/path`.

    https://user:token@GitHub.com/org/repo.git, git@github.com:org/repo and
    ssh://git@github.com/org/repo/ are all `github.com/org/repo`; a local path stays a path.
    No part of a credential is kept (the text is written into labels and named in errors):
    neither user nor password, also one holding a '/', nor a query or fragment.
    """
    text = url.strip()
    scheme, sep, rest = text.partition("://")
    if sep:
        text = rest.split("#", 1)[0].split("?", 1)[0]
        # user:password@ ends at the last '@' before the path; a password may hold a '/'
        # (then what precedes it is no host[:port]).
        head = text.split("/", 1)[0]
        if "@" in head:
            text = text[text.rindex("@", 0, len(head)) + 1 :]
        elif "@" in text and not re.fullmatch(r"[^:@]*(:\d*)?", head):
            text = text.rsplit("@", 1)[-1]
    else:
        head = text.split("/", 1)[0]
        user = "@" in head
        if user:  # [user[:password]@]host:path (scp form)
            text = text[text.rindex("@", 0, len(head)) + 1 :]
        if (user and re.match(r"^[^/:]+:", text)) or re.match(r"^[A-Za-z0-9.-]+:(?!/)", text):
            host, _, path = text.partition(":")
            text = f"{host.lower()}/{path}"  # scp form: git@host:org/repo
    text = text.rstrip("/").removesuffix(".git").rstrip("/")
    if sep and scheme != "file":
        host, slash, path = text.partition("/")
        text = re.sub(r":\d*$", "", host.lower()) + slash + path  # no port; [IPv6] kept
    return text


def redact(text: str) -> str:
    """The text with credentials of any URL in it masked: https://***@host/..."""
    return _URL_CREDENTIALS.sub(r"\1***@", text)


def git_message(exc: GitFailed | git.GitCommandError) -> str:
    """git's whole message of a failed command (its stderr, not gitpython's wrapping),
    credentials in URLs masked: `fatal: ... does not appear to be a git repository`
    and the lines that say why, not only the last one."""
    text = str(exc.stderr or "").strip()
    # gitpython wraps stderr as "stderr: '...'".
    if text.startswith("stderr:"):
        text = text.removeprefix("stderr:").strip()
        if len(text) >= 2 and text[0] == text[-1] == "'":
            text = text[1:-1]
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    if not lines:
        lines = [f"git exited with status {exc.status}"]
    return redact("\n".join(lines))


def _gist(said: str) -> str:
    """The line of git's message that says what went wrong: its first `fatal:` or
    `error:` line (the last line is often only advice, "and the repository exists.")."""
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("fatal:", "error:")):
            return line
    return lines[-1] if lines else said


class SubTree:
    """A folder of another tree seen as a repository root (a repository in a sub-folder).

    Links are resolved within the folder, as on disk in DirectoryTree(folder): a link to
    elsewhere in the enclosing repository is outside this one.
    """

    def __init__(self, tree: GitTree, prefix: str) -> None:
        self.tree = tree
        self.prefix = prefix.strip("/") + "/"
        self.commit = tree.commit

    def paths(self) -> Iterable[str]:
        n = len(self.prefix)
        return [p[n:] for p in self.tree.paths() if p.startswith(self.prefix)]

    def _full(self, path: str) -> str:
        """The enclosing tree's path of the regular file `path` is or links to."""
        full = self.prefix + path
        if full not in self.tree._links:
            return full
        resolved = resolve_links(
            path,
            link_target=lambda p: self.tree._link_target(self.prefix + p),
            is_regular=lambda p: (
                self.tree.is_file(self.prefix + p) and self.prefix + p not in self.tree._links
            ),
            is_dir=lambda p: self.tree.is_dir(self.prefix + p),
        )
        return self.prefix + resolved

    def read(self, path: str) -> bytes:
        return self.tree.read(self._full(path))

    def blob_id(self, path: str) -> str:
        return self.tree.blob_id(self._full(path))

    def size(self, path: str) -> int:
        return self.tree.size(self._full(path))

    def is_file(self, path: str) -> bool:
        return self.tree.is_file(self.prefix + path)

    def is_dir(self, path: str) -> bool:
        return self.tree.is_dir((self.prefix + path).rstrip("/"))
