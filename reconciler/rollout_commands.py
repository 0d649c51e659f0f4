"""`reconcile rollout status|pause|resume|abort ENDPOINT`: a rollout seen and steered from git.

status reads the endpoint's `rollout:` block on the status branch and the rollout commits
of the checked-out branch (their trailers, machine.read_mark). pause, resume and abort are
commits on the checked-out branch with the person's own git identity, so a pull request can
carry them too (rollouts.control): pause and resume are empty commits with the trailer
`Reconcile-Rollout-Control: ENDPOINT pause|resume`; abort is the rollback edit itself
(traffic back to the stable deployment, mirror off) with the rollback trailer and
`Reconcile-Rollout-Control: ENDPOINT abort`. `--push` pushes the branch to origin (never
forced); without it, a daemon watching a remote sees the commit once the person pushes.

Exit codes as the other commands: 0 done, 1 an error (no such endpoint, no rollout to
abort, a branch that moved under the commit, an endpoint file the edit cannot change safely,
a push refused: the commit then stays, and the message says so).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import yaml

from reconciler.engine import load
from reconciler.gitsource import GitSource, GitSourceError
from reconciler.model.diagnostics import DesiredStateInvalid
from reconciler.model.specs import EndpointSpec
from reconciler.repoconfig import RepoConfig, load_repo_config
from reconciler.rollouts.control import Verb, control_trailer, read_controls
from reconciler.rollouts.machine import Rollout, edited_file, read_mark
from reconciler.rollouts.policy import RolloutPolicy
from reconciler.rollouts.yamledit import WeightsEditError

EXIT_OK, EXIT_ERRORS = 0, 1
HISTORY = 300


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_ERRORS)


def _open(repo: str) -> tuple[GitSource, str, str]:
    """The checkout, its branch and the branch's tip."""
    if not Path(repo).is_dir():
        _fail(f"repository folder {repo} does not exist")
    try:
        git_source = GitSource(repo)
    except GitSourceError as exc:
        _fail(str(exc))
    branch = git_source.current_branch()
    if branch is None or not git_source.has_commits():
        _fail(f"{repo} is on no branch with commits: a rollout is steered by commits on one")
    return git_source, branch, git_source.resolve(f"refs/heads/{branch}")


def _config(git_source: GitSource, commit: str) -> RepoConfig:
    try:
        return load_repo_config(git_source.tree(commit))
    except DesiredStateInvalid as invalid:
        _fail("; ".join(str(e) for e in invalid.errors))


def _endpoint(git_source: GitSource, commit: str, name: str) -> tuple[EndpointSpec, RolloutPolicy]:
    config = _config(git_source, commit)
    policy = config.rollouts.for_endpoint(name)
    desired, invalid = load(git_source.tree(commit), revision=commit)
    if desired is None:
        errors = invalid.errors if invalid is not None else ()
        _fail(f"the desired state at {commit[:12]} is invalid: {errors[0] if errors else ''}")
    spec = desired.endpoint(name)
    if spec is None:
        _fail(f"no endpoint {name} at {commit[:12]}")
    if policy is None:
        _fail(f"endpoint {name} is under no rollout policy (rollouts: of reconciler.yaml)")
    return spec, policy


def _history(git_source: GitSource, commit: str, endpoint: str) -> list[dict[str, Any]]:
    """The endpoint's rollout commits and controls on the branch, newest first."""
    found: list[dict[str, Any]] = []
    for sha, message in git_source.branch_messages(commit, limit=HISTORY):
        mark = read_mark(message, endpoint)
        controls = [c.verb.value for c in read_controls(message) if c.endpoint == endpoint]
        if (mark is None or mark.endpoint != endpoint) and not controls:
            continue
        row: dict[str, Any] = {"commit": sha, "subject": message.splitlines()[0]}
        if mark is not None and mark.endpoint == endpoint:
            row.update(
                action="rollback" if mark.rollback else "step",
                step=mark.step,
                total=mark.total,
                stable=mark.stable,
                canary=mark.canary,
            )
        if controls:
            row["controls"] = controls
        found.append(row)
    return found


def _emit(output: str, data: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False) if output == "json" else text)


@click.group("rollout")
def rollout() -> None:
    """See and steer a rollout (progressive delivery), through git."""


@rollout.command("status")
@click.argument("endpoint")
@click.option("--repo", default=".", show_default=True)
@click.option("--status-branch", default=None, help="Defaults to reconciler.yaml's.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def rollout_status(endpoint: str, repo: str, status_branch: str | None, output: str) -> None:
    """The rollout's state (status branch) and its commits (the branch's trailers)."""
    git_source, branch, tip = _open(repo)
    config = _config(git_source, tip)
    found = git_source.find_status(status_branch or config.status_branch)
    block: dict[str, Any] | None = None
    text = found.files.get(f"status/{endpoint}.yaml")
    if text is not None:
        doc = yaml.safe_load(text)
        if isinstance(doc, dict) and isinstance(doc.get("rollout"), dict):
            block = doc["rollout"]
    commits = _history(git_source, tip, endpoint)
    if block is None and not commits:
        _fail(f"no rollout of {endpoint} in status or in the history of {branch}")
    data = {"endpoint": endpoint, "branch": branch, "rollout": block, "commits": commits}
    lines = [f"{endpoint}:"]
    if block is not None:
        lines.append(
            f"  {block.get('state')}: step {block.get('step')}/{block.get('steps')} "
            f"({block.get('step_spec') or '-'}), {block.get('canary')} after "
            f"{block.get('stable')}; {block.get('reason')}"
        )
        analysis = block.get("analysis")
        if isinstance(analysis, dict):
            for check in analysis.get("checks") or []:
                lines.append(f"    {check['threshold']}: {check['text']} ({check['state']})")
    for row in commits:
        what = (
            f"{row['action']} {row['step']}/{row['total']}"
            if "action" in row
            else ", ".join(row["controls"])
        )
        lines.append(f"  {row['commit'][:12]} {what}: {row['subject']}")
    _emit(output, data, "\n".join(lines))


def _control(endpoint: str, repo: str, verb: Verb, push: bool, output: str) -> None:
    git_source, branch, tip = _open(repo)
    _endpoint(git_source, tip, endpoint)
    message = f"rollout {endpoint}: {verb.value}\n\n{control_trailer(endpoint, verb)}\n"
    _commit(git_source, None, message, branch, endpoint, verb, push, output)


def _commit(
    git_source: GitSource,
    path: str | None,
    message: str,
    branch: str,
    endpoint: str,
    verb: Verb,
    push: bool,
    output: str,
    new_text: str | None = None,
) -> None:
    try:
        before = git_source.resolve(f"refs/heads/{branch}")
        made = git_source.commit_file(
            path,
            lambda _old: new_text if path is not None else "",
            message=message,
            branch=branch,
            as_reconciler=False,
        )
        if made.commit is None:
            _fail(f"nothing to commit for {verb.value} of {endpoint}")
    except GitSourceError as exc:
        _fail(str(exc))
    if push:
        try:
            git_source.push_branch(branch)
        except GitSourceError as exc:
            # The branch moved on origin (the daemon committed a step, or a person pushed):
            # the commit was made for values that may no longer be there. Left behind, a
            # rebase replays it onto the new tip, where an abort made at step 1 is dropped
            # as already upstream once step 2 set the mirror off (the abort silently lost),
            # or keeps its rollback trailer over values it did not roll back. Undone.
            undone = git_source.undo_commit(branch, made.commit, before)
            what = (
                f"the {verb.value} commit {made.commit[:12]} was undone"
                if undone
                else f"the {verb.value} commit {made.commit[:12]} is still on {branch}"
            )
            _fail(
                f"{exc}; {what}: pull {branch} from origin (`git pull --rebase`) and run "
                f"`reconcile rollout {verb.value} {endpoint}` again"
            )
    data = {
        "endpoint": endpoint,
        "action": verb.value,
        "commit": made.commit,
        "branch": branch,
        "pushed": push,
    }
    after = "pushed" if push else "push it for a daemon watching a remote"
    _emit(
        output,
        data,
        f"{verb.value} of {endpoint} committed as {made.commit[:12]} on {branch} ({after})",
    )


_REPO = click.option("--repo", default=".", show_default=True)
_PUSH = click.option("--push", is_flag=True, help="Push the branch to origin (never forced).")
_OUTPUT = click.option(
    "--output", type=click.Choice(["text", "json"]), default="text", show_default=True
)


@rollout.command("pause")
@click.argument("endpoint")
@_REPO
@_PUSH
@_OUTPUT
def rollout_pause(endpoint: str, repo: str, push: bool, output: str) -> None:
    """Commit a pause: the daemon commits no step of the rollout until a resume."""
    _control(endpoint, repo, Verb.PAUSE, push, output)


@rollout.command("resume")
@click.argument("endpoint")
@_REPO
@_PUSH
@_OUTPUT
def rollout_resume(endpoint: str, repo: str, push: bool, output: str) -> None:
    """Commit a resume: the step's analysis starts again from now."""
    _control(endpoint, repo, Verb.RESUME, push, output)


@rollout.command("abort")
@click.argument("endpoint")
@_REPO
@_PUSH
@_OUTPUT
def rollout_abort(endpoint: str, repo: str, push: bool, output: str) -> None:
    """Commit the rollback: all traffic back to the stable deployment, mirror off."""
    git_source, branch, tip = _open(repo)
    spec, policy = _endpoint(git_source, tip, endpoint)
    mark = next(
        (
            m
            for _, message in git_source.branch_messages(tip, limit=HISTORY)
            if (m := read_mark(message, endpoint)) is not None
        ),
        None,
    )
    if mark is None or mark.rollback or mark.stable is None or mark.canary is None:
        _fail(f"no rollout of {endpoint} is under way on {branch}: nothing to abort")
    running = Rollout(endpoint, mark.stable, mark.canary, policy)
    step = running.position(spec.traffic, spec.mirror_traffic)
    if step == 0:
        _fail(f"all live traffic is on {mark.stable} already: nothing to abort")
    if step is None:
        _fail(f"{endpoint}'s values are no step of the rollout of {mark.canary}: nothing to abort")
    if spec.source is None:
        _fail(f"the file of endpoint {endpoint} is not known")
    try:
        text = git_source.tree(tip).read(spec.source.file).decode()
    except UnicodeDecodeError:
        _fail(
            f"cannot edit {spec.source.file}: it is not UTF-8 text; move all traffic to "
            f"{mark.stable} by hand"
        )
    try:
        new_text = edited_file(text, running.rollback_values())
    except WeightsEditError as exc:
        _fail(f"cannot edit {spec.source.file}: {exc}; move all traffic to {mark.stable} by hand")
    message = (
        f"rollout {endpoint}: abort, all traffic back to {mark.stable}\n\n"
        f"Aborted at step {step}/{policy.total} by a person.\n\n"
        f"{running.mark('rollback at step', step)}\n{control_trailer(endpoint, Verb.ABORT)}\n"
    )
    _commit(
        git_source,
        spec.source.file,
        message,
        branch,
        endpoint,
        Verb.ABORT,
        push,
        output,
        new_text=new_text,
    )
