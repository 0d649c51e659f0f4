"""The `reconcile` command: plan, apply, diff, validate, status.

Picks the git source and the target, runs the engine, prints the plan. Exit codes are a
contract (DESIGN.md): 0 nothing to change (apply: converged), 2 changes planned (dry-run
and diff), 1 errors, and 3 when `reconcile --no-wait` left steps in progress.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from reconciler.outputformats import OUTPUT_FORMATS

# The rest of the package is imported by the commands that use it: `reconcile --help` and
# the commands that touch no target start without loading what they do not run (issue 15).
if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from reconciler.engine import PassResult
    from reconciler.filetree import FileTree
    from reconciler.gitsource import GitSource, WorktreeChange
    from reconciler.model.diagnostics import Diagnostic
    from reconciler.model.plan import Plan, PlanRevision
    from reconciler.model.state import DesiredState, LiveState
    from reconciler.repoconfig import RepoConfig, TargetConfig
    from reconciler.targets.base import Target
    from reconciler.targets.capabilities import ConnectionStore, EndpointAccess
    from reconciler.writerlock import Holder
    from reconciler.yamlsource import FieldLines, FieldPath

EXIT_OK, EXIT_ERRORS, EXIT_CHANGES = 0, 1, 2
# `reconcile --no-wait` whose pass left steps in progress (added after 0, 1 and 2).
EXIT_IN_PROGRESS = 3
# Seconds between the passes of a one-shot `reconcile` while steps are in progress.
PASS_PAUSE_S = 1.0
# Log lines of a failed step printed under it.
LOG_LINES = 20
STATUS_TARGET = "status"
# Differences from HEAD that `validate` lists one per line (all of them in its JSON).
DIFFERENCES_LISTED = 50
# How long a one-shot command waits for another writer of its target (--lock-timeout).
DEFAULT_LOCK_TIMEOUT_S = 600.0
# `reconcile ui`: where the dashboard's token comes from when no --token-file is given.
UI_TOKEN_ENV = "RECONCILER_UI_TOKEN"


_Data = TypeVar("_Data", bound="DataclassInstance")


def replace(value: _Data, /, **changes: Any) -> _Data:
    """dataclasses.replace, imported on first use: `reconcile --help` needs no dataclasses."""
    import dataclasses

    return dataclasses.replace(value, **changes)


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_ERRORS)


class Source:
    """Where the desired state comes from: a revision of a git repository, or a folder.

    A plain class, not a dataclass: `reconcile --help` then never imports dataclasses."""

    def __init__(self, *, path: Path, git: GitSource | None, worktree: bool) -> None:
        self.path = path
        self.git = git
        self.worktree = worktree

    def tree(self) -> tuple[FileTree, str | None]:
        from reconciler.filetree import DirectoryTree

        commit = None if self.git is None or self.worktree else self.git.head_commit()
        if self.git is None or commit is None:
            return DirectoryTree(self.path), None
        return self.git.tree(commit), commit

    def tree_at(self, rev: str) -> tuple[FileTree, str]:
        from reconciler.gitsource import GitSourceError

        if self.git is None:
            fail(f"{self.path} is not a git repository: cannot read revision {rev!r}")
        try:
            commit = self.git.resolve(rev)
        except GitSourceError as exc:
            fail(str(exc))
        return self.git.tree(commit), commit


def revision_of(
    source: Source, revision: str | None
) -> tuple[PlanRevision | None, tuple[WorktreeChange, ...]]:
    """Which revision a plan made from `source` read (None outside git), and the working
    tree's differences from HEAD. `revision` is the commit read, None for the files on disk."""
    from reconciler.gitsource import GitSourceError
    from reconciler.model.revision import PlanRevision

    if source.git is None:
        return None, ()
    try:
        changes = source.git.worktree_changes()
        head = source.git.head()
    except GitSourceError:
        return None, ()
    return PlanRevision(commit=head, dirty=bool(changes), worktree=revision is None), changes


def with_revision(
    plan: Plan, source: Source, revision: str | None, desired: DesiredState | None
) -> Plan:
    """The plan saying which revision it read, with a warning for each uncommitted file a
    deployment needs (or the working tree read before any commit)."""
    from reconciler.desired import load
    from reconciler.filetree import DirectoryTree
    from reconciler.worktree import declared_paths, revision_warnings

    found, changes = revision_of(source, revision)
    if found is None:
        return plan
    states: list[DesiredState | None] = [desired]
    if desired is None and changes and not found.worktree:
        # The commit does not load (a model never `git add`ed is missing from it): the
        # working tree's files tell which of its changes the deployments need.
        states.append(load(DirectoryTree(source.path))[0])
    warnings = revision_warnings(changes, declared=declared_paths(states), revision=found)
    return replace(plan, revision=found, warnings=warnings + plan.warnings)


def uncommitted_files_images_take(source: Source, tree: FileTree) -> list[str]:
    """Files of the working tree that differ from the commit applied (`tree`) and that a
    deployment of it needs (its code, model, conda file, build context): an image would
    take them from disk. Every difference when neither the commit nor the files load."""
    from reconciler.desired import load
    from reconciler.filetree import SKIPPED_DIRS
    from reconciler.worktree import declared_paths, needed_changes

    if source.git is None or source.worktree:
        return []
    changes = source.git.worktree_changes()
    if not changes:
        return []
    desired = load(tree)[0]
    if desired is None:
        # The commit does not load (a model never `git add`ed is missing from it): the
        # working tree's files tell what the deployments need, as with_revision does.
        from reconciler.filetree import DirectoryTree

        desired = load(DirectoryTree(source.path))[0]
        if desired is None:
            return [c.path for c in changes]
    declared = declared_paths([desired])
    return [c.path for c in needed_changes(changes, declared=declared, skipped=SKIPPED_DIRS)]


def open_source(repo: str, *, worktree: bool = False) -> Source:
    from reconciler.gitsource import GitSource, GitSourceError

    path = Path(repo)
    if not path.is_dir():
        fail(f"repository folder {repo} does not exist")
    try:
        git_source: GitSource | None = GitSource(path)
    except GitSourceError:
        git_source = None
    return Source(path=path, git=git_source, worktree=worktree)


def repo_config(tree: FileTree) -> RepoConfig:
    from reconciler.model.diagnostics import DesiredStateInvalid
    from reconciler.repoconfig import load_repo_config

    try:
        return load_repo_config(tree)
    except DesiredStateInvalid as invalid:
        for e in invalid.errors:
            click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_ERRORS)


def open_target(
    name: str | None,
    config: RepoConfig,
    *,
    source: Source,
    status_dir: str | None,
) -> Target:
    """The target to plan against or apply to, by name."""
    from reconciler.targets.base import TargetError

    if name == STATUS_TARGET or status_dir is not None:
        return _status_target(source, config=config, status_dir=status_dir)
    chosen = config.target(name)
    if chosen is None:
        known = ", ".join([t.name for t in config.targets] + [STATUS_TARGET])
        fail(f"no target named {name!r} in reconciler.yaml (known: {known})")
    try:
        return target_from_entry(chosen, source=source)
    except TargetError as exc:
        fail(str(exc))


def target_from_entry(chosen: TargetConfig, *, source: Source) -> Target:
    """The target an entry of reconciler.yaml describes. Raises TargetError."""
    from reconciler.model.errors import ErrorCode
    from reconciler.targets.base import TargetError
    from reconciler.targets.registry import TARGET_TYPES

    factory = TARGET_TYPES.get(chosen.type)
    if factory is None:
        raise TargetError(
            f"target {chosen.name!r} is of type {chosen.type}, which this build cannot drive "
            f"yet; plan against the status files with --target {STATUS_TARGET}",
            code=ErrorCode.INVALID_TARGET_CONFIG,
        )
    return factory(chosen, repo_root=source.path.resolve(), repository=_repository(source))


def _status_target(source: Source, *, config: RepoConfig, status_dir: str | None) -> Target:
    from reconciler.desired import load
    from reconciler.gitsource import GitSourceError
    from reconciler.status import STATUS_DIR
    from reconciler.targets.status import StatusTarget

    files: dict[str, str] = {}
    warnings: tuple[Diagnostic, ...] = ()
    if status_dir is not None:
        folder = Path(status_dir)
        if not folder.is_dir():
            fail(f"status folder {status_dir} does not exist")
        files = {f"{STATUS_DIR}/{p.name}": p.read_text() for p in sorted(folder.glob("*.yaml"))}
    elif source.git is not None:
        # The local branch or origin's (fetched when a CI clone lacks it), the newer.
        found = source.git.find_status(config.status_branch)
        files = found.files
        if found.ref is None:
            warnings = (_no_status_warning(config.status_branch, found.problem),)
    else:
        warnings = (_no_status_warning(config.status_branch, "not a git repository"),)

    cache: dict[str, DesiredState | None] = {}

    def resolve(commit: str) -> DesiredState | None:
        if commit not in cache:
            cache[commit] = None
            if source.git is not None:
                try:
                    desired, _ = load(source.git.tree(commit), revision=commit)
                    cache[commit] = desired
                except GitSourceError:
                    pass
        return cache[commit]

    return StatusTarget(files, resolve_specs=resolve, warnings=warnings)


def _no_status_warning(branch: str, problem: str) -> Diagnostic:
    """Planning against no status plans everything from nothing: never silently."""
    from reconciler.model.diagnostics import Diagnostic

    message = (
        f"no status found on branch {branch} (local or origin): "
        "planning as if the target were empty"
    )
    return Diagnostic("", None, "", f"{message} ({problem})" if problem else message)


@contextlib.contextmanager
def writer_lock(target_name: str, *, command: str, timeout_s: float) -> Iterator[None]:
    """Hold the target's writer lock (the one `reconcile watch` holds) for the body.

    Waits up to `timeout_s`, saying who holds it; then exits 1 naming the holder.
    """
    from reconciler.writerlock import LockTimeout, describe, lock_path, writing

    path = lock_path(target_name)

    def waiting(holder: Holder | None) -> None:
        if timeout_s > 0:
            click.echo(
                f"target {target_name} is being changed by {describe(holder)}; "
                f"waiting up to {timeout_s:g} s for it to finish (--lock-timeout)...",
                err=True,
            )

    try:
        with writing(path, command=command, timeout_s=timeout_s, on_wait=waiting):
            yield
    except LockTimeout as timeout:
        fail(
            f"target {target_name} is being changed by {describe(timeout.holder)}; "
            f"gave up after {timeout.waited_s:.0f} s (--lock-timeout {timeout_s:g}): "
            f"let it finish or stop it, then run this again (lock file {path})"
        )


LOCK_TIMEOUT_HELP = (
    "Seconds to wait while another writer (reconcile watch, another reconcile) changes the "
    "target; 0 fails at once."
)


def emit(plan: Plan, output: str) -> None:
    from reconciler.presentation import render_plan

    click.echo(render_plan(plan, output), nl=False)


class _Commands(click.Group):
    """The command group, with command groups of their own modules loaded only when one
    of their commands runs (or help lists them): `reconcile --help` stays light."""

    # name -> (module, attribute, the short help `reconcile --help` lists without loading it)
    LAZY: Mapping[str, tuple[str, str, str]] = {
        "rollout": (
            "reconciler.rollout_commands",
            "rollout",
            "See and steer a rollout (progressive delivery), through git.",
        )
    }

    # Where parse_args keeps the sub-command's own arguments for the group's callback.
    SUB_ARGS = "reconciler.sub_args"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if set(args) & set(ctx.help_option_names):
            # A help text is printed and the process exits: not after a collection that
            # walks every object of the imports (~8% of `reconcile --help`'s CPU).
            from reconciler.gcpause import no_collection_at_exit

            no_collection_at_exit()
        rest = super().parse_args(ctx, args)
        ctx.meta[self.SUB_ARGS] = tuple(rest)  # the callback runs before the sub-command
        return rest

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY])

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max((len(n) for n in names), default=0)
        rows: list[tuple[str, str]] = []
        for name in names:
            if name in self.LAZY:
                rows.append((name, self.LAZY[name][2]))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY:
            import importlib

            module, name, _ = self.LAZY[cmd_name]
            command = getattr(importlib.import_module(module), name)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=_Commands,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option("--repo", default=".", show_default=True, help="Folder of the GitOps repository.")
@click.option(
    "--target", "target_name", default=None, help="Target of reconciler.yaml, or 'status'."
)
@click.option("--dry-run", is_flag=True, help="Plan against the live target; change nothing.")
@click.option("--prune", is_flag=True, help="Delete endpoints that no file declares.")
@click.option("--output", type=click.Choice(OUTPUT_FORMATS), default="text", show_default=True)
@click.option("--worktree", is_flag=True, help="Use uncommitted edits instead of HEAD.")
@click.option("--status-dir", default=None, help="Status files in a folder (status target).")
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_LOCK_TIMEOUT_S,
    show_default=True,
    help=LOCK_TIMEOUT_HELP,
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "console"]),
    default="auto",
    show_default=True,
)
@click.option(
    "--no-wait",
    is_flag=True,
    help="Apply one pass and return; steps may be left in progress (exit code 3).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=900.0,
    show_default=True,
    help="Seconds to keep running passes while rollouts are in progress; then exit 1.",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="On a terminal: show pip and image build output as it comes (else only its tail "
    "when a step fails).",
)
@click.pass_context
def main(
    ctx: click.Context,
    repo: str,
    target_name: str | None,
    dry_run: bool,
    prune: bool,
    output: str,
    worktree: bool,
    status_dir: str | None,
    lock_timeout: float,
    log_format: str,
    no_wait: bool,
    timeout: float,
    verbose: bool,
) -> None:
    """Reconcile ML online endpoints from a git repository onto a target.

    Without a sub-command: plan against the live target and apply, pass after pass until
    the target has converged or failed (or only plan with --dry-run). Exit codes: 0 nothing
    to change (or applied and converged), 2 changes planned, 1 errors, 3 still in progress
    after --no-wait.
    """
    from reconciler import logs as logging_setup

    if ctx.invoked_subcommand in ("diff", "validate", "status"):
        # Commands that read a whole repository (or the status files), plan or print, and
        # exit: no cyclic collection walks their objects until they are done
        # (reconciler.gcpause; status's imports alone made collections of 8% of its CPU).
        from reconciler.gcpause import cyclic_gc_paused, no_collection_at_exit

        ctx.with_resource(cyclic_gc_paused())
        no_collection_at_exit()
    # The methods of the dataclasses the command loads, compiled by an earlier process;
    # a sub-command's --help prints before it runs (this callback runs first all the same).
    if not set(ctx.help_option_names) & set(ctx.meta.get(_Commands.SUB_ARGS, ())):
        from reconciler import codecache

        codecache.install(ctx.invoked_subcommand or "reconcile")
    # Applying and watching report their progress; reading commands only their warnings.
    progress = ctx.invoked_subcommand in (None, "watch")
    logging_setup.configure(fmt=log_format, level="info" if progress else "warning")
    if ctx.invoked_subcommand is not None:
        return  # before importing what applying needs: a sub-command imports its own
    from reconciler.engine import converge, plan_pass, run_pass
    from reconciler.executor import Gate
    from reconciler.model.results import Outcome
    from reconciler.presentation import exit_code
    from reconciler.progress import (
        PassDisplay,
        StepDisplay,
        display_for,
        failure_lines,
        step_lines,
        terminal_console,
        terminal_logging,
    )
    from reconciler.targets.base import TargetError
    from reconciler.targets.status import StatusTarget

    source = open_source(repo, worktree=worktree)
    tree, revision = source.tree()
    config = repo_config(tree)
    target = open_target(target_name, config, source=source, status_dir=status_dir)
    try:
        if dry_run:
            live = target.observe()
            plan, desired = plan_pass(
                tree, live, prune=prune or config.prune, revision=revision, target=target
            )
            if isinstance(target, StatusTarget) and target.warnings:
                plan = replace(plan, warnings=target.warnings + plan.warnings)
            if desired is not None:
                chosen = config.target(target_name)
                plan = replace(
                    plan, warnings=plan.warnings + target_warnings(tree, desired, chosen)
                )
            plan = with_revision(plan, source, revision, desired)
            emit(plan, output)
            sys.exit(exit_code(plan))
        needed = uncommitted_files_images_take(source, tree)
        if needed:
            # Images are built from the files on disk: those they take must be the
            # commit's. Other uncommitted files are the plan's warning, as in --dry-run.
            changed = ", ".join(needed[:5]) + (f" and {len(needed) - 5} more" if needed[5:] else "")
            fail(
                f"uncommitted changes under {source.path} that deployments need ({changed}): "
                "images are built from the files on disk; commit them, or pass --worktree "
                "to apply the working tree as it is"
            )
        writer = None
        # A status commit git refused (a lock file a killed git left): the passes go on,
        # the run ends naming it (exit 1) rather than in a traceback after the steps.
        status_failed: list[str] = []
        if source.git is not None and revision is not None:
            git = source.git

            def writer(files: Mapping[str, str], message: str) -> None:
                from reconciler.gitsource import GitSourceError

                try:
                    git.write_status(files, message=message, branch=config.status_branch)
                except GitSourceError as exc:
                    if not status_failed:
                        status_failed.append(str(exc))

        passes: list[PassResult] = []
        # On a terminal the plan comes first, then a line per step (unless a log format was
        # asked for); elsewhere plain lines beside the logs, and the plan at the end.
        console = terminal_console(sys.stderr) if log_format == "auto" else None
        plan_shown = False

        def show_plan(plan: Plan, desired: DesiredState | None) -> None:
            nonlocal plan_shown
            if output != "text":
                return  # stdout holds one document, written at the end
            if desired is not None:
                extra = target_warnings(tree, desired, config.target(target_name))
                plan = replace(plan, warnings=plan.warnings + extra)
            emit(with_revision(plan, source, revision, desired), output)
            plan_shown = True

        display: PassDisplay
        watcher: StepDisplay | None = None
        if console is not None:
            display = watcher = StepDisplay(console, show_plan=show_plan, verbose=verbose)
            # Warnings still show (each once), above the live line rather than through it.
            terminal_logging(console)
        else:
            display = display_for(sys.stderr, live=False)

        def on_pass(result: PassResult) -> None:
            passes.append(result)
            display.pass_done(result)

        # One writer per target: a running `reconcile watch` (or another apply) would undo
        # this one's steps as it makes them. A dry run changes nothing and takes no lock.
        try:
            with writer_lock(target.name, command="reconcile", timeout_s=lock_timeout):
                if no_wait:
                    on_pass(
                        run_pass(
                            tree,
                            target,
                            prune=prune or config.prune,
                            dry_run=False,
                            revision=revision,
                            write_status=writer,
                            watcher=watcher,
                        )
                    )
                else:
                    converge(
                        tree,
                        target,
                        prune=prune or config.prune,
                        revision=revision,
                        gate=Gate(timeout_s=timeout, poll_s=PASS_PAUSE_S),
                        write_status=writer,
                        on_pass=on_pass,
                        watcher=watcher,
                    )
        finally:
            display.close()
    except TargetError as exc:
        fail(f"target {target.name}: {exc}")
    result = passes[-1]
    # The plan of the first pass: every step the run took (later passes continue it).
    shown = passes[0].plan
    if result.desired is not None:
        # The same warnings as --dry-run printed for this plan.
        changed_by_target = target_warnings(tree, result.desired, config.target(target_name))
        shown = replace(shown, warnings=shown.warnings + changed_by_target)
    shown = with_revision(shown, source, revision, result.desired)
    if not plan_shown:
        emit(shown, output)
    if output == "text":
        for name, doc in sorted(result.status.items()):
            if doc.get("scoring_uri"):
                click.echo(
                    f"{name}: {doc['provisioning_state']}, scoring_uri {doc['scoring_uri']}\n"
                    f"  key:    reconcile credentials {name} --repo {repo}\n"
                    f"  invoke: reconcile invoke {name} --repo {repo} --request-file FILE"
                )
    failed = [r for r in result.results if r.outcome == Outcome.FAILED]
    for line in failure_lines(result, log_lines=LOG_LINES, on_a_terminal=watcher is not None):
        click.echo(line, err=True)
    _, _, waiting = step_lines(result)
    if status_failed:
        click.echo(f"error: {status_failed[0]}", err=True)
    if result.plan.errors or failed or result.degraded or status_failed:
        sys.exit(EXIT_ERRORS)
    if result.in_progress:
        for line in waiting:
            click.echo(f"in progress: {line}", err=True)
        if no_wait:
            # Started, not converged: neither 0 (done) nor 1 (failed).
            click.echo(
                "not converged yet (--no-wait): the next `reconcile` or `reconcile watch` "
                "continues from what the target shows",
                err=True,
            )
            sys.exit(EXIT_IN_PROGRESS)
        fail(f"not converged after {timeout:g} s (--timeout): still in progress")
    sys.exit(EXIT_OK)


def target_warnings(
    tree: FileTree, desired: DesiredState, chosen: TargetConfig | None
) -> tuple[Diagnostic, ...]:
    """What the chosen target does differently from Azure ML (a Docker target: an image
    replaced by its image_map, another Python than the conda file pins, Kubernetes
    resources as limits), said before anything is applied, each with the file and line of
    its field (targets.registry.PREFLIGHTS)."""
    from reconciler.targets.registry import PREFLIGHTS
    from reconciler.yamlsource import FieldLines

    preflight = PREFLIGHTS.get(chosen.type) if chosen is not None else None
    if chosen is None or preflight is None or not desired.deployments:
        return ()
    lines: dict[str, FieldLines] = {}

    def line_of(file: str, field: FieldPath) -> int | None:
        if file not in lines:
            try:
                lines[file] = FieldLines(tree.read(file))
            except Exception:  # a file gone since loading: the document's line stands
                lines[file] = FieldLines(None)
        return lines[file].line(field)

    return preflight(chosen, desired, line_of)


@main.command()
@click.option("--repo", default=".", show_default=True)
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--target",
    "target_name",
    default=None,
    help="Also say what this target of reconciler.yaml does differently (image_map, ...).",
)
def validate(repo: str, output: str, target_name: str | None) -> None:
    """Check every file of the repository (working tree) and the policies that need no
    base (min_instances_with_traffic, the syntax of all); exit 1 on errors. With --target,
    warn of what that target changes (an image replaced, another Python, resources)."""
    from reconciler.desired import load
    from reconciler.model.diagnostics import DesiredStateInvalid
    from reconciler.policies import check_policies
    from reconciler.repoconfig import load_repo_config
    from reconciler.worktree import declared_paths, revision_warnings

    source = open_source(repo, worktree=True)
    tree, _ = source.tree()
    config: RepoConfig | None = None
    errors: tuple[Diagnostic, ...] = ()
    try:
        config = load_repo_config(tree)
    except DesiredStateInvalid as invalid:
        errors = invalid.errors
    desired, failed = load(tree)
    errors += failed.errors if failed else ()
    warnings = desired.warnings if desired else ()
    if desired is not None and config is not None:
        errors += check_policies(None, desired, policies=config.policies)
    if target_name is not None and config is not None:
        chosen = config.target(target_name)
        if chosen is None:
            known = ", ".join(t.name for t in config.targets)
            fail(f"no target named {target_name!r} in reconciler.yaml (known: {known})")
        if desired is not None:
            warnings += target_warnings(tree, desired, chosen)
    # validate reads the files on disk; apply reads HEAD: say so, and what differs.
    checked, changes = revision_of(source, None)
    if checked is not None and checked.commit is not None:
        as_applied = replace(checked, worktree=False)
        warnings = (
            revision_warnings(
                changes,
                declared=declared_paths([desired]),
                revision=as_applied,
                command="`reconcile` (apply and --dry-run)",
            )
            + warnings
        )
    if output == "json":
        import json

        click.echo(
            json.dumps(
                {
                    "errors": [e.as_json() for e in errors],
                    "warnings": [w.as_json() for w in warnings],
                    # Added later: what was checked (the working tree) against HEAD.
                    "checked": {
                        "source": "worktree",
                        "commit": checked.commit if checked else None,
                        "differences": [{"path": c.path, "change": c.change} for c in changes],
                    },
                },
                indent=2,
            )
        )
    else:
        click.echo(_checked_line(checked))
        if checked is not None and checked.commit is not None:
            # Before the first commit every file is a difference: none is listed.
            for c in changes[:DIFFERENCES_LISTED]:
                click.echo(f"  {c.change:<10} {c.path}")
            if len(changes) > DIFFERENCES_LISTED:
                click.echo(f"  ... and {len(changes) - DIFFERENCES_LISTED} more (git status)")
        for e in errors:
            click.echo(f"error: {e}")
        for w in warnings:
            click.echo(f"warning: {w}")
        if desired is not None and not errors:
            click.echo(
                f"valid: {len(desired.endpoints)} endpoint(s), "
                f"{len(desired.deployments)} deployment(s)"
            )
    sys.exit(EXIT_ERRORS if errors else EXIT_OK)


def _checked_line(checked: PlanRevision | None) -> str:
    if checked is None:
        return "checked: the files on disk (not a git repository)"
    if checked.commit is None:
        return (
            "checked: the working tree (no commit yet; `reconcile` applies a commit, "
            "or the working tree with --worktree)"
        )
    if not checked.dirty:
        return f"checked: the working tree, the same as commit {checked.short} (HEAD)"
    return (
        f"checked: the working tree; `reconcile` reads commit {checked.short} (HEAD) unless "
        "--worktree, and the working tree differs from it:"
    )


@main.command()
@click.option("--base", required=True, help="Revision the plan starts from, as if applied.")
@click.option("--head", default="HEAD", show_default=True, help="Revision to plan towards.")
@click.option("--repo", default=".", show_default=True)
@click.option("--prune", is_flag=True, help="Plan deleting endpoints no file declares.")
@click.option("--output", type=click.Choice(OUTPUT_FORMATS), default="text", show_default=True)
@click.option(
    "--target",
    "target_name",
    default=None,
    help="Target whose capacity_cores the quota figure is held against (default_target).",
)
@click.option(
    "--approve",
    multiple=True,
    metavar="ENDPOINT",
    help="Approve changes of an endpoint that require_approval names (repeatable).",
)
def diff(
    base: str,
    head: str,
    repo: str,
    prune: bool,
    output: str,
    target_name: str | None,
    approve: tuple[str, ...],
) -> None:
    """Plan from the desired state at BASE to the one at HEAD; no target needed.

    Checks the policies of BASE's reconciler.yaml (a change is judged by the rules it
    merges into, so it cannot relax them for itself); a violation is an error (exit 1).
    A BASE missing from a shallow CI clone is fetched from the remote first.
    """
    from reconciler.desired import load, targets_instance_types
    from reconciler.diffing import assume_applied
    from reconciler.gcpause import freeze_what_lives_on
    from reconciler.gitsource import GitSourceError
    from reconciler.model.diagnostics import DesiredStateInvalid, Diagnostic
    from reconciler.model.state import DesiredState
    from reconciler.planning import invalid_plan, make_plan
    from reconciler.policies import approvals_from_messages, check_policies, mirror_history_needed
    from reconciler.presentation import exit_code, render_plan
    from reconciler.repoconfig import load_repo_config
    from reconciler.review import (
        mirror_history,
        quota_warnings,
        review_changes,
        rollout_previews,
    )

    source = open_source(repo)
    if source.git is None:
        source.tree_at(base)  # fails with the reason
    git_source = source.git
    assert git_source is not None
    try:
        base_commit = git_source.resolve(base)
    except GitSourceError:
        try:
            base_commit = git_source.fetch_revision(base)
        except GitSourceError as exc:
            remote, _, branch = base.partition("/")
            hint = f"git fetch {remote} {branch}" if branch else f"git fetch origin {base}"
            # git's whole message: its last line alone ("and the repository exists.")
            # says nothing of what went wrong.
            said = "".join(f"\n  {line}" for line in exc.git_said.splitlines())
            fail(
                f"cannot find BASE {base!r} in {source.path} ({exc}); fetch it with `{hint}` "
                "(in CI: check out with full history, e.g. fetch-depth: 0)"
                + (f"\ngit said:{said}" if said else "")
            )
    base_tree = git_source.tree(base_commit)
    head_tree, head_commit = source.tree_at(head)
    try:
        config = load_repo_config(head_tree)
    except DesiredStateInvalid as invalid:
        emit(invalid_plan(invalid.errors), output)
        sys.exit(EXIT_ERRORS)
    try:
        policies = load_repo_config(base_tree).policies
    except DesiredStateInvalid:
        policies = config.policies  # BASE's file is broken: HEAD's rules are all there is
    target = config.target(target_name)
    if target is None:
        known = ", ".join(t.name for t in config.targets)
        fail(f"no target named {target_name!r} in reconciler.yaml (known: {known})")
    base_state, base_failed = load(base_tree, revision=base_commit)
    warnings: tuple[Diagnostic, ...] = ()
    if base_state is None:
        assert base_failed is not None
        warnings = (
            Diagnostic(
                "",
                None,
                "",
                f"base {base} has {len(base_failed.errors)} error(s); "
                "planned as if nothing of it were applied",
            ),
        )
        base_state = DesiredState()
    freeze_what_lives_on()  # BASE's objects live until the command ends
    live: LiveState = assume_applied(base_state, target=f"base {base}")
    head_state, head_failed = load(head_tree, revision=head_commit)
    freeze_what_lives_on()
    if head_state is None:
        assert head_failed is not None
        emit(head_failed, output)
        sys.exit(EXIT_ERRORS)
    # The quota figures know each Kubernetes target's own instance types too.
    instance_types = targets_instance_types(config)
    plan = make_plan(
        head_state,
        live,
        prune=prune or config.prune,
        extra_warnings=warnings,
        instance_types=instance_types,
    )
    review = review_changes(
        plan,
        base_tree,
        head_tree,
        base=base_state,
        head=head_state,
        target=target.name,
        capacity_cores=target.capacity_cores,
        instance_types=instance_types,
    )
    # Rollouts follow HEAD's policies: once merged, the daemon reads them at that revision.
    previews, notes = rollout_previews(base_state, head_state, config.rollouts)
    review = replace(review, rollouts=previews, rollout_notes=notes)
    violations: tuple[Diagnostic, ...] = ()
    if not policies.empty:
        approvals = frozenset(approve)
        if policies.require_approval is not None:
            messages = git_source.commit_messages(base_commit, head_commit)
            approvals |= approvals_from_messages(messages)
        history = None
        mirrored = mirror_history_needed(base_state, head_state, policies=policies)
        if mirrored:
            # How long they have been mirrored is in the base branch's history only.
            commits, complete = git_source.first_parent_log(base_commit)
            history = mirror_history(
                ((when, functools.partial(git_source.tree, sha)) for sha, when in commits),
                base=base_state,
                deployments=mirrored,
                now=time.time(),
                complete=complete,
            )
        violations = check_policies(
            base_state, head_state, policies=policies, approvals=approvals, history=history
        )
    # Named with --target: what that target changes is part of the review (Docker only).
    changed_by_target = target_warnings(head_tree, head_state, target) if target_name else ()
    plan = replace(
        plan,
        errors=violations,
        warnings=plan.warnings + quota_warnings(review) + changed_by_target,
    )
    click.echo(render_plan(plan, output, review=review), nl=False)
    sys.exit(exit_code(plan))


@main.command()
@click.option("--repo", default=".", show_default=True)
@click.option("--status-branch", default=None, help="Defaults to reconciler.yaml's.")
@click.option("--output", type=click.Choice(["text", "yaml"]), default="text", show_default=True)
@click.option(
    "--live",
    is_flag=True,
    help="Ask the target now (like `az ml online-endpoint show`) instead of the status files.",
)
@click.option("--target", "target_name", default=None, help="With --live: the target to ask.")
def status(
    repo: str, status_branch: str | None, output: str, live: bool, target_name: str | None
) -> None:
    """Where each endpoint stands, read from the status branch (no target access needed),
    or with --live observed on the target now."""
    import yaml

    if live:
        _live_status(repo, target_name, output)
        return
    source = open_source(repo)
    if source.git is None:
        fail(f"{repo} is not a git repository: there is no status branch to read")
    tree, _ = source.tree()
    branch = status_branch or repo_config(tree).status_branch
    found = source.git.find_status(branch)
    if found.ref is None or found.commit is None:
        fail(
            f"no status found on branch {branch} (local or origin): no pass has been recorded"
            + (f" ({found.problem})" if found.problem else "")
        )
    files = found.files
    docs: list[Mapping[str, Any]] = [yaml.safe_load(files[p]) for p in sorted(files)]
    if output == "yaml":
        click.echo(yaml.safe_dump_all(docs, sort_keys=False), nl=False)
        return
    recorded = _utc(source.git.commit_time(found.commit))
    click.echo(
        f"status recorded {recorded} on {found.ref.removeprefix('refs/heads/')} "
        f"(commit {found.commit[:12]}; a pass that changes nothing records nothing; "
        "`reconcile status --live` asks the target now)"
    )
    if not docs:
        click.echo("no endpoints")
    _print_status(docs)


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _live_status(repo: str, target_name: str | None, output: str) -> None:
    """`reconcile status --live`: observe the target and show it as status shows files."""
    from reconciler.model.plan import Plan
    from reconciler.status import build_status
    from reconciler.targets.base import TargetError

    target = _operated_target(repo, target_name)
    try:
        state = target.observe()
    except TargetError as exc:
        fail(f"target {target.name}: {exc}")
    docs = build_status(revision=None, target=target.name, live=state, plan=Plan())
    for d in state.deployments:
        # What the target found out of line (an instance stopped or crashed, one not routed):
        # the next pass repairs it; status files hold it only as the deployment's state.
        if d.repair and d.name in docs[d.endpoint]["deployments"]:
            docs[d.endpoint]["deployments"][d.name]["repair"] = d.repair
    if output == "yaml":
        import yaml

        click.echo(yaml.safe_dump_all(list(docs.values()), sort_keys=False), nl=False)
        return
    click.echo(f"live: target {target.name} observed {_utc(time.time())}")
    if not docs:
        click.echo("no endpoints")
    _print_status([docs[name] for name in sorted(docs)])
    for name in state.unreadable:
        click.echo(f"{name}: unreadable on target {target.name}")


def _print_status(docs: list[Mapping[str, Any]]) -> None:
    for doc in docs:
        traffic = ", ".join(f"{k} {v}%" for k, v in (doc.get("traffic") or {}).items()) or "none"
        at = f" at {str(doc.get('commit'))[:12]}" if doc.get("commit") else ""
        click.echo(
            f"{doc['endpoint']}: {doc.get('provisioning_state')} ({doc.get('health')})"
            f"{at} on {doc.get('target')}; traffic {traffic}"
        )
        if doc.get("scoring_uri"):
            click.echo(f"  scoring_uri: {doc['scoring_uri']}")
        if doc.get("last_error"):
            click.echo(f"  last error: {str(doc['last_error']).splitlines()[0]}")
        for name, d in (doc.get("deployments") or {}).items():
            assets = ", ".join(
                f"{kind} {d[kind]}" for kind in ("model", "environment") if d.get(kind)
            )
            click.echo(
                f"  {name}: {d.get('provisioning_state')} ({d.get('health')}) "
                f"{d.get('ready_instances')}/{d.get('instance_count')} ready"
                + (f"; {assets}" if assets else "")
                + (
                    f"; last error: {d['last_error'].splitlines()[0]}"
                    if d.get("last_error")
                    else ""
                )
            )
            if d.get("repair"):
                click.echo(f"    out of line: {d['repair']}")
        for e in doc.get("errors") or []:
            click.echo(
                f"  error: {e.get('file')}:{e.get('line')} {e.get('field')}: {e.get('message')}"
            )
        for p in doc.get("in_progress_steps") or []:
            on = "/".join(n for n in (doc["endpoint"], p.get("deployment")) if n)
            click.echo(f"  in progress: {p.get('action')} {on} ({p.get('progress')})")
        for p in doc.get("pending_steps") or []:
            on = "/".join(n for n in (doc["endpoint"], p.get("deployment")) if n)
            click.echo(f"  left undone: {p.get('action')} {on} ({p.get('why')})")


@main.command("ui")
@click.option("--repo", default=".", show_default=True)
@click.option("--status-branch", default=None, help="Defaults to reconciler.yaml's.")
@click.option("--port", type=int, default=8780, show_default=True, help="0: any free port.")
@click.option(
    "--ui-host",
    default=None,
    help="Listen on this address instead of 127.0.0.1; a token is then required.",
)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help=f"File holding the token (else the environment variable {UI_TOKEN_ENV}).",
)
def ui(
    repo: str, status_branch: str | None, port: int, ui_host: str | None, token_file: str | None
) -> None:
    """A read-only dashboard of the status branch in the browser (no target access)."""
    from reconciler.ui.server import UiOptions, serve_forever
    from reconciler.ui.source import GitStatusSource

    source = open_source(repo)
    if source.git is None:
        fail(f"{repo} is not a git repository: there is no status branch to read")
    tree, _ = source.tree()
    branch = status_branch or repo_config(tree).status_branch
    token = _ui_token(token_file)
    if ui_host is not None and not token:
        fail(
            f"--ui-host {ui_host} serves beyond this machine: give a token with --token-file "
            f"or the environment variable {UI_TOKEN_ENV}"
        )
    host = ui_host or "127.0.0.1"

    def announce(url: str) -> None:
        click.echo(f"dashboard of {source.path} (status branch {branch}) at {url}", err=False)
        sys.stdout.flush()

    try:
        serve_forever(
            GitStatusSource(source.git, branch=branch),
            host=host,
            port=port,
            options=UiOptions(token=token or None),
            announce=announce,
        )
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def _ui_token(token_file: str | None) -> str | None:
    """The dashboard's token: from a file, else the environment; None when neither."""
    if token_file is not None:
        return Path(token_file).read_text().strip() or None
    return os.environ.get(UI_TOKEN_ENV, "").strip() or None


def _operated_target(repo: str, target_name: str | None) -> Target:
    """The target for a command that operates on a running endpoint (not the status one)."""
    source = open_source(repo, worktree=True)
    tree, _ = source.tree()
    return _real_target(target_name, repo_config(tree), source=source)


def _real_target(target_name: str | None, config: RepoConfig, *, source: Source) -> Target:
    """The target named (not the status one), opened."""
    from reconciler.targets.status import StatusTarget

    target = open_target(target_name, config, source=source, status_dir=None)
    if isinstance(target, StatusTarget):
        fail("this command needs a real target, not the status files")
    return target


def _cannot(target: Target, what: str) -> NoReturn:
    """A target lacks a capability (targets.capabilities) the command needs."""
    fail(f"target {target.name} cannot {what}")


@main.command()
@click.argument("endpoint")
@click.option("--repo", default=".", show_default=True)
@click.option("--target", "target_name", default=None)
@click.option("--ttl", default=3600, show_default=True, help="aml_token mode: seconds valid.")
def credentials(endpoint: str, repo: str, target_name: str | None, ttl: int) -> None:
    """Print an endpoint's keys (key mode) or a fresh token (aml_token mode), as JSON."""
    import json
    import time

    from reconciler.router.tokens import issue_token
    from reconciler.targets.base import TargetError
    from reconciler.targets.capabilities import EndpointKeys, HasCredentials

    source = open_source(repo, worktree=True)
    tree, _ = source.tree()
    config = repo_config(tree)
    # Read without opening the target where its type can (as invoke does); else observed.
    found = _read_access(target_name, config, source=source, endpoint=endpoint)
    if found is not None:
        access = found[1]
        if access.auth_mode == "aml_token":
            secret = access.credentials.token_secret_bytes
            token = issue_token(secret, endpoint, now=time.time(), ttl_s=ttl)
            click.echo(json.dumps(token, indent=2))
            return
        creds: EndpointKeys = access.credentials
    else:
        target = _real_target(target_name, config, source=source)
        if not isinstance(target, HasCredentials):
            _cannot(target, "give credentials")
        live = None
        try:
            live = target.observe().endpoint(endpoint)
            if live is None:
                fail(f"endpoint {endpoint} does not exist on target {target.name}")
            if live.spec.auth_mode == "aml_token":
                issued = target.token(endpoint, now=time.time(), ttl_s=ttl)
                click.echo(json.dumps(issued, indent=2))
                return
            creds = target.endpoint_credentials(endpoint)
        except TargetError as exc:
            # A broken endpoint (its state lost): what the target found, and the way out.
            repair = live.repair if live is not None else None
            fail(f"{exc}: {repair}; `reconcile` repairs it" if repair else str(exc))
    click.echo(
        json.dumps({"primaryKey": creds.primary_key, "secondaryKey": creds.secondary_key}, indent=2)
    )


@main.command("regenerate-key")
@click.argument("endpoint")
@click.option("--key", "which", type=click.Choice(["primary", "secondary"]), required=True)
@click.option("--repo", default=".", show_default=True)
@click.option("--target", "target_name", default=None)
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_LOCK_TIMEOUT_S,
    show_default=True,
    help=LOCK_TIMEOUT_HELP,
)
def regenerate_key(
    endpoint: str, which: str, repo: str, target_name: str | None, lock_timeout: float
) -> None:
    """Replace one key; the other stays valid. The new key is shown by `credentials`."""
    from reconciler.targets.base import TargetError
    from reconciler.targets.capabilities import HasCredentials

    target = _operated_target(repo, target_name)
    if not isinstance(target, HasCredentials):
        _cannot(target, "regenerate keys")
    try:
        # It rewrites the endpoint's router configuration, as a pass does: one writer.
        command = f"reconcile regenerate-key {endpoint}"
        with writer_lock(target.name, command=command, timeout_s=lock_timeout):
            target.regenerate_key(endpoint, which)
    except TargetError as exc:
        fail(str(exc))
    other = "secondary" if which == "primary" else "primary"
    click.echo(f"{which} key of {endpoint} regenerated; the {other} key still works")


@main.command("gc")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    default=None,
    help="Unused images kept per deployment (default: the target's image_retention, 3).",
)
@click.option("--repo", default=".", show_default=True)
@click.option("--target", "target_name", default=None)
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_LOCK_TIMEOUT_S,
    show_default=True,
    help=LOCK_TIMEOUT_HELP,
)
def collect_garbage(
    dry_run: bool,
    keep: int | None,
    repo: str,
    target_name: str | None,
    output: str,
    lock_timeout: float,
) -> None:
    """Remove the images this target built that no container uses, beyond the newest
    `image_retention` per deployment; never another target's, the base or router image."""
    import json

    from reconciler.targets.base import TargetError
    from reconciler.targets.capabilities import CollectsImages

    target = _operated_target(repo, target_name)
    if not isinstance(target, CollectsImages):
        _cannot(target, "clean up images")
    try:
        if dry_run:
            done = target.collect_images(dry_run=True, keep=keep)
        else:
            # A build of a pass (or `reconcile watch`) must not lose its new image to this.
            with writer_lock(target.name, command="reconcile gc", timeout_s=lock_timeout):
                done = target.collect_images(dry_run=False, keep=keep)
    except TargetError as exc:
        fail(f"target {target.name}: {exc}")
    if output == "json":
        click.echo(
            json.dumps(
                {
                    "dry_run": dry_run,
                    "removed": [
                        {"image": i.name, "deployment": i.deployment or None, "size": i.size}
                        for i in done.removed
                    ],
                    "kept": [{"image": i.name, "why": why} for i, why in done.kept],
                    "failed": [{"image": i.name, "why": why} for i, why in done.failed],
                },
                indent=2,
            )
        )
    else:
        verb = "would remove" if dry_run else "removed"
        for i in done.removed:
            click.echo(f"{verb} {i.name} ({i.deployment or i.kind}, {i.size / 1e6:.0f} MB)")
        for i, why in done.kept:
            click.echo(f"kept {i.name} ({i.deployment or i.kind}): {why}")
        for i, why in done.failed:
            click.echo(f"not removed {i.name}: {why}", err=True)
        removed = f"{len(done.removed)} image(s)"
        click.echo(
            f"{f'would remove {removed}' if dry_run else f'{removed} removed'}, "
            f"{done.freed_bytes / 1e6:.0f} MB; {len(done.kept)} kept"
        )
    sys.exit(EXIT_ERRORS if done.failed else EXIT_OK)


@main.command("logs")
@click.argument("endpoint")
@click.argument("deployment")
@click.option("--instance", type=int, default=None, help="Only this instance (index).")
@click.option("--lines", type=int, default=100, show_default=True)
@click.option("--repo", default=".", show_default=True)
@click.option("--target", "target_name", default=None)
@click.option(
    "--previous",
    is_flag=True,
    help="What the instance wrote before its last restart (Docker: the earlier attempts of "
    "its container; Kubernetes: its container before the last restart).",
)
def show_logs(
    endpoint: str,
    deployment: str,
    instance: int | None,
    lines: int,
    repo: str,
    target_name: str | None,
    previous: bool,
) -> None:
    """The last lines of a deployment's container logs."""
    from reconciler.targets.base import TargetError
    from reconciler.targets.capabilities import HasLogs, HasPreviousLogs

    target = _operated_target(repo, target_name)
    if not isinstance(target, HasLogs):
        _cannot(target, "show logs")
    if previous and not isinstance(target, HasPreviousLogs):
        _cannot(target, "show the log of an attempt before a restart")
    try:
        if isinstance(target, HasPreviousLogs) and previous:
            text = target.previous_logs(endpoint, deployment, instance=instance, lines=lines)
        else:
            text = target.logs(endpoint, deployment, instance=instance, lines=lines)
        click.echo(text, nl=False)
    except TargetError as exc:
        fail(str(exc))


def _repository(source: Source) -> str:
    """Which repository applies (GitSource.identity), as targets shared by several tell
    their endpoints apart."""
    return source.git.identity() if source.git is not None else f"path:{source.path.resolve()}"


# What invoke needs of an endpoint: (target, scoring URI, deployments, bearer secret).
_Access = tuple[str, str, tuple[str, ...], str]


def _read_access(
    target_name: str | None, config: RepoConfig, *, source: Source, endpoint: str
) -> tuple[str, EndpointAccess] | None:
    """(target, what invoke and credentials need of `endpoint`) read by the target type's
    reader without opening the target (targets.registry.ENDPOINT_ACCESS); None when the
    type has none or it cannot tell (the caller opens the target then)."""
    from reconciler.targets.registry import ENDPOINT_ACCESS

    chosen = config.target(target_name) if target_name != STATUS_TARGET else None
    reader = ENDPOINT_ACCESS.get(chosen.type) if chosen is not None else None
    if chosen is None or reader is None:
        return None
    access = reader(chosen, endpoint=endpoint, repository=_repository(source))
    return (chosen.name, access) if access is not None else None


def _endpoint_access(
    target_name: str | None, config: RepoConfig, *, source: Source, endpoint: str
) -> _Access | None:
    """What invoke needs of `endpoint`, read without opening the target (_read_access). In
    aml_token mode the secret is a token of five minutes, signed with the endpoint's token
    secret as the target signs them."""
    import time

    from reconciler.router.tokens import issue_token

    found = _read_access(target_name, config, source=source, endpoint=endpoint)
    if found is None:
        return None
    name, access = found
    secret = access.credentials.primary_key
    if access.auth_mode == "aml_token":
        secret = str(
            issue_token(
                access.credentials.token_secret_bytes, endpoint, now=time.time(), ttl_s=300
            )["accessToken"]
        )
    return name, access.scoring_uri, access.deployments, secret


def _observed_access(
    target_name: str | None, config: RepoConfig, *, source: Source, endpoint: str
) -> _Access:
    """What invoke needs of `endpoint`, from the target opened and observed."""
    import time

    from reconciler.targets.base import TargetError
    from reconciler.targets.capabilities import HasCredentials, ObservesEndpoint

    target = _real_target(target_name, config, source=source)
    if not isinstance(target, HasCredentials):
        _cannot(target, "invoke endpoints")
    try:
        # Only the endpoint asked for, where the target can: with a thousand endpoints,
        # observing them all would cost more than the request itself.
        state = (
            target.observe_endpoint(endpoint)
            if isinstance(target, ObservesEndpoint)
            else target.observe()
        )
        live = state.endpoint(endpoint)
        if live is None:
            fail(f"endpoint {endpoint} does not exist on target {target.name}")
        if not live.scoring_uri:
            # Broken, not absent (`status --live` shows it Failed): what the target found.
            why = live.repair or "it has no scoring URI"
            fail(
                f"endpoint {endpoint} on target {target.name} cannot be called: {why}; "
                "`reconcile` repairs it"
            )
        names = tuple(sorted(d.name for d in state.deployments_of(endpoint)))
        if live.spec.auth_mode == "aml_token":
            secret = str(target.token(endpoint, now=time.time(), ttl_s=300)["accessToken"])
        else:
            secret = target.endpoint_credentials(endpoint).primary_key
    except TargetError as exc:
        fail(str(exc))
    return target.name, live.scoring_uri, names, secret


@main.command()
@click.argument("endpoint")
@click.option("--request-file", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--deployment", default=None, help="Send to this deployment (header pin).")
@click.option("--repo", default=".", show_default=True)
@click.option("--target", "target_name", default=None)
def invoke(
    endpoint: str, request_file: str, deployment: str | None, repo: str, target_name: str | None
) -> None:
    """POST a request file to the endpoint's scoring URI with its credentials."""
    import json
    import urllib.error
    import urllib.request

    source = open_source(repo, worktree=True)
    tree, _ = source.tree()
    config = repo_config(tree)
    # What the request needs, read without opening the target where its type can (the
    # Docker SDK's import alone costs more than the request: issue 15); else from the
    # target, observed as `reconcile` does.
    found = _endpoint_access(target_name, config, source=source, endpoint=endpoint)
    if found is None:
        found = _observed_access(target_name, config, source=source, endpoint=endpoint)
    name, scoring_uri, names, secret = found
    if deployment and deployment not in names:
        fail(
            f"endpoint {endpoint} has no deployment named {deployment!r} on target "
            f"{name}; its deployments: {', '.join(names) or 'none'}"
        )
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    if deployment:
        headers["azureml-model-deployment"] = deployment
    request = urllib.request.Request(
        scoring_uri, data=Path(request_file).read_bytes(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            body = answer.read().decode(errors="replace")
            who = answer.headers.get("azureml-model-deployment", "?")
    except urllib.error.HTTPError as err:
        fail(f"{err.code} from {scoring_uri}: {err.read().decode(errors='replace')[:500]}")
    except OSError as err:
        fail(f"{scoring_uri} did not answer: {err}")
    click.echo(f"deployment: {who}", err=True)
    try:
        click.echo(json.dumps(json.loads(body), indent=2))
    except ValueError:
        click.echo(body)


@main.command()
@click.option("--repo", default=None, help="A local checkout (default: the current folder).")
@click.option("--url", default=None, help="A remote repository to clone and fetch.")
@click.option("--branch", default="main", show_default=True, help="With --url: the branch.")
@click.option("--subdir", default="", help="With --url: the repository's folder in it.")
@click.option("--target", "target_name", default=None)
@click.option("--interval", default=30.0, show_default=True, help="Seconds between passes.")
@click.option(
    "--progress-interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds between passes while a rollout is in progress.",
)
@click.option("--status-branch", default=None, help="Defaults to reconciler.yaml's.")
@click.option("--worktree", is_flag=True, help="Reconcile uncommitted edits too (local dev).")
@click.option("--prune", is_flag=True)
@click.option("--metrics-port", type=int, default=None, help="Health, readiness, metrics.")
@click.option("--webhook-port", type=int, default=None, help="GitHub/GitLab push webhooks.")
@click.option(
    "--webhook-secret-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Shared secret of the webhook (or RECONCILER_WEBHOOK_SECRET).",
)
@click.option("--listen", default="127.0.0.1", show_default=True, help="Address of the ports.")
@click.option("--cache-dir", default=None, help="Where remote repositories are cloned.")
@click.option(
    "--ui-port",
    type=int,
    default=None,
    help="Serve the dashboard with live updates, charts, logs and a test form (0: any port).",
)
@click.option(
    "--ui-host",
    default=None,
    help="The dashboard listens on this address instead of 127.0.0.1; a token is then required.",
)
@click.option(
    "--ui-token-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help=f"File holding the dashboard's token (else the environment variable {UI_TOKEN_ENV}).",
)
@click.option(
    "--ui-plans",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Plans the dashboard keeps in memory.",
)
def watch(
    repo: str | None,
    url: str | None,
    branch: str,
    subdir: str,
    target_name: str | None,
    interval: float,
    progress_interval: float,
    status_branch: str | None,
    worktree: bool,
    prune: bool,
    metrics_port: int | None,
    webhook_port: int | None,
    webhook_secret_file: str | None,
    listen: str,
    cache_dir: str | None,
    ui_port: int | None,
    ui_host: str | None,
    ui_token_file: str | None,
    ui_plans: int,
) -> None:
    """Reconcile continuously: on every commit, webhook and interval; write status to git."""
    import os

    from reconciler.daemon import Daemon, LocalSource, RemoteSource, WatchOptions
    from reconciler.gitsource import GitSourceError
    from reconciler.targets.status import StatusTarget
    from reconciler.writerlock import lock_path

    if url and repo:
        fail("give --repo or --url, not both")
    ui_token = _ui_token(ui_token_file)
    if ui_port is not None and ui_host is not None and not ui_token:
        fail(
            f"--ui-host {ui_host} serves beyond this machine: give a token with "
            f"--ui-token-file or the environment variable {UI_TOKEN_ENV}"
        )
    state_home = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    work = state_home / "ml-endpoint-reconciler"
    try:
        if url:
            source: LocalSource | RemoteSource = RemoteSource(
                url,
                branch=branch,
                cache_dir=Path(cache_dir) if cache_dir else work / "clones",
                subdir=subdir,
            )
            source.refresh()
        else:
            path = Path(repo or ".").resolve()
            import hashlib

            build_dir = work / "builds" / hashlib.sha256(str(path).encode()).hexdigest()[:16]
            source = LocalSource(path, worktree=worktree, build_dir=build_dir)
        tree, _, root = source.current()
    except GitSourceError as exc:
        fail(str(exc))
    config = repo_config(tree)
    target = open_target(
        target_name,
        config,
        source=Source(path=root, git=source.git, worktree=True),
        status_dir=None,
    )
    if isinstance(target, StatusTarget):
        fail("watch needs a real target, not the status files")
    secret = os.environ.get("RECONCILER_WEBHOOK_SECRET")
    if webhook_secret_file:
        secret = Path(webhook_secret_file).read_text().strip()
    if webhook_port is not None and not secret:
        fail("a webhook port needs a secret: --webhook-secret-file or RECONCILER_WEBHOOK_SECRET")
    target_source = Source(path=root, git=source.git, worktree=True)
    daemon = Daemon(
        source,
        target,
        WatchOptions(
            interval_s=interval,
            progress_interval_s=progress_interval,
            # reconciler.yaml's `prune` is read at each pass's revision.
            prune=prune,
            status_branch=status_branch or config.status_branch,
            lock_path=lock_path(target.name),
            metrics_port=metrics_port,
            webhook_port=webhook_port,
            webhook_secret=secret,
            host=listen,
            ui_port=ui_port,
            ui_host=ui_host or "127.0.0.1",
            ui_token=ui_token,
            ui_plans=ui_plans,
        ),
        target_for=lambda entry: target_from_entry(entry, source=target_source),
    )
    daemon.install_signal_handlers()
    try:
        daemon.run()
    except OSError as exc:
        # A port that cannot be bound (the dashboard's, the metrics', the webhook's).
        fail(f"cannot serve: {exc.strerror or exc}")


@main.command("render")
@click.option("--repo", default=".", show_default=True)
@click.option(
    "--target",
    "target_name",
    default=None,
    help="A kubernetes target of reconciler.yaml; 'kubernetes' alone: the defaults.",
)
@click.option("--worktree", is_flag=True, help="Use uncommitted edits instead of HEAD.")
@click.option("--namespace", default=None, help="Overrides the target's namespace.")
@click.option(
    "--include-secrets",
    is_flag=True,
    help="Also print the Secrets (fresh keys, router config), e.g. to pipe to kubectl.",
)
@click.option(
    "--no-secrets", is_flag=True, help="Leave out the Secrets: the default (kept for scripts)."
)
@click.option("--push-images", is_flag=True, help="Build and push the images first (needs Docker).")
def render_manifests(
    repo: str,
    target_name: str | None,
    worktree: bool,
    namespace: str | None,
    include_secrets: bool,
    no_secrets: bool,
    push_images: bool,
) -> None:
    """Print the Kubernetes manifests of the desired state (like `helm template`).

    No Secret is printed unless --include-secrets: the output goes to reviews and git."""
    from reconciler.desired import load
    from reconciler.repoconfig import TargetConfig
    from reconciler.targets.base import TargetError

    if include_secrets and no_secrets:
        fail("--include-secrets and --no-secrets contradict each other: give one")
    from reconciler.targets.kubernetes.options import KubernetesOptions
    from reconciler.targets.kubernetes.render import render_yaml

    source = open_source(repo, worktree=worktree)
    tree, revision = source.tree()
    config = repo_config(tree)
    kube = [t for t in config.targets if t.type == "kubernetes"]
    chosen = config.target(target_name) if target_name else None
    if chosen is None and target_name in (None, "kubernetes"):
        default = config.target(None)
        chosen = default if default is not None and default.type == "kubernetes" else None
        chosen = chosen or (kube[0] if kube else TargetConfig("kubernetes", "kubernetes"))
    if chosen is None or chosen.type != "kubernetes":
        fail(f"target {target_name!r} is not a kubernetes target of reconciler.yaml")
    desired, failed = load(tree, revision=revision)
    if desired is None:
        assert failed is not None
        emit(failed, "text")
        sys.exit(EXIT_ERRORS)
    try:
        options = KubernetesOptions.from_config(chosen.name, chosen.options)
        text = render_yaml(
            desired,
            options,
            namespace=namespace,
            secrets=include_secrets,
            push=push_images,
            repo_root=source.path.resolve(),
            say=lambda message: click.echo(message, err=True),
        )
    except TargetError as exc:
        fail(str(exc))
    if include_secrets:
        click.echo(
            "warning: the output holds secrets (endpoint keys, token and admin secrets, "
            "base64 in its Secrets): pipe it to kubectl; keep it out of files, logs and git",
            err=True,
        )
    click.echo(text, nl=False)


if __name__ == "__main__":
    main()


# --- connections: secrets that environment variables reference ----------------------------


@main.group("connection")
def connection() -> None:
    """Connections of a target: the secrets `${{azureml://connections/...}}` references.

    Values live with the target (the Docker target: a volume of its own, files 0600),
    never in git; `list` shows names and keys only."""


def _connection_store(repo: str, target_name: str | None) -> ConnectionStore:
    from reconciler.targets.capabilities import HasConnections

    target = _operated_target(repo, target_name)
    if not isinstance(target, HasConnections):
        _cannot(target, "store connections (on Kubernetes, create the Secrets)")
    return target.connections()


def _secret_text(raw: bytes | str, what: str) -> str:
    text = raw.decode() if isinstance(raw, bytes) else raw
    # `echo` and editors end a file with one newline that is no part of the secret.
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        fail(f"{what} is empty")
    return text


@connection.command("set")
@click.argument("name")
@click.option("--target-url", default=None, help="The connection's target (a URL), not secret.")
@click.option(
    "--credential",
    "stdin_keys",
    multiple=True,
    help="KEY whose value is read from stdin (hidden prompt on a terminal). At most one.",
)
@click.option(
    "--credential-file",
    "file_keys",
    multiple=True,
    help="KEY=PATH: the value is the file's content (one trailing newline dropped).",
)
@click.option("--metadata", multiple=True, help="KEY=VALUE, not secret (…/metadata/KEY).")
@click.option("--repo", default=".", show_default=True)
@click.option("--target", "target_name", default=None)
def connection_set(
    name: str,
    target_url: str | None,
    stdin_keys: tuple[str, ...],
    file_keys: tuple[str, ...],
    metadata: tuple[str, ...],
    repo: str,
    target_name: str | None,
) -> None:
    """Create or update a connection; keys not given keep their values.

    Values never come from the command line, so they never sit in shell history:
    `--credential KEY` reads stdin, `--credential-file KEY=PATH` a file."""
    from reconciler.endpoints.connections import Connection
    from reconciler.targets.base import TargetError

    if len(stdin_keys) > 1:
        fail("only one --credential can read stdin; give the others as --credential-file KEY=PATH")
    credentials: dict[str, str] = {}
    for item in file_keys:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            fail(f"--credential-file wants KEY=PATH, got {item!r}")
        try:
            credentials[key] = _secret_text(Path(path).read_bytes(), f"credential file {path}")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"credential file {path}: {exc.__class__.__name__}: cannot read it as text")
    for key in stdin_keys:
        if key in credentials:
            fail(f"credential {key} given twice")
        if sys.stdin.isatty():
            value = click.prompt(f"value of {key}", hide_input=True, err=True)
        else:
            value = sys.stdin.read()
        credentials[key] = _secret_text(value, f"the value of {key} on stdin")
    meta: dict[str, str] = {}
    for item in metadata:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--metadata wants KEY=VALUE, got {item!r}")
        meta[key] = value
    if target_url is None and not credentials and not meta:
        fail("nothing to set: give --target-url, --credential, --credential-file or --metadata")
    store = _connection_store(repo, target_name)
    try:
        stored = store.set(Connection(name, target_url, credentials, meta))
    except ValueError as exc:
        fail(str(exc))
    except TargetError as exc:
        fail(f"target {store.target_name}: {exc}")
    keys = ", ".join(sorted(stored.credentials)) or "none"
    click.echo(f"connection {name} set on target {store.target_name} (credentials: {keys})")


@connection.command("list")
@click.option("--repo", default=".", show_default=True)
@click.option("--target", "target_name", default=None)
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def connection_list(repo: str, target_name: str | None, output: str) -> None:
    """Connections of the target: names, target URLs and keys; never a credential's value."""
    import json

    from reconciler.targets.base import TargetError

    store = _connection_store(repo, target_name)
    try:
        found = store.read()
    except TargetError as exc:
        fail(f"target {store.target_name}: {exc}")
    rows: list[dict[str, Any]] = [
        {
            "name": conn.name,
            "target": conn.target,
            "credentials": sorted(conn.credentials),
            "metadata": sorted(conn.metadata),
        }
        for conn in sorted(found.values(), key=lambda c: c.name)
    ]
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no connections on target {store.target_name}")
    for row in rows:
        keys = ", ".join(row["credentials"]) or "-"
        click.echo(f"{row['name']}  target: {row['target'] or '-'}  credentials: {keys}")


@connection.command("delete")
@click.argument("name")
@click.option("--repo", default=".", show_default=True)
@click.option("--target", "target_name", default=None)
def connection_delete(name: str, repo: str, target_name: str | None) -> None:
    """Forget a connection. Running instances keep the values they started with."""
    from reconciler.targets.base import TargetError

    store = _connection_store(repo, target_name)
    try:
        deleted = store.delete(name)
    except TargetError as exc:
        fail(f"target {store.target_name}: {exc}")
    if not deleted:
        fail(f"no connection {name} on target {store.target_name}")
    click.echo(f"connection {name} deleted from target {store.target_name}")
