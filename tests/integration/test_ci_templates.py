"""The CI templates and the pre-commit hook: they parse, they call only `reconcile`
command lines that the CLI accepts, and the hook passes and fails a real repository."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from repo_builder import RepoBuilder

from reconciler.cli import main

ROOT = Path(__file__).resolve().parents[2]
GITHUB = ROOT / "ci" / "github-actions" / "reconcile-review.yml"
GITLAB = ROOT / "ci" / "gitlab" / "reconcile-review.gitlab-ci.yml"
EXAMPLE_WORKFLOW = ROOT / "example-repo" / ".github" / "workflows" / "reconcile-review.yml"
HOOKS = ROOT / ".pre-commit-hooks.yaml"
RECONCILE = Path(sys.executable).parent / "reconcile"
PRE_COMMIT = shutil.which(
    "pre-commit", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
)

# What shell expansions stand for when a command line is checked: an array of approvals
# expands to options, every other variable to one word.
_ARRAYS = re.compile(r'"\$\{(\w+)\[@\]\}"')
_EXPRESSIONS = re.compile(r"\$\{\{[^}]*\}\}")
_VARIABLES = re.compile(r"\$\{?\w+\}?")
_OPERATORS = {";", "&&", "||", "|", ">", ">>", "<", "&", "(", ")"}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def github_scripts() -> list[str]:
    steps = load(GITHUB)["jobs"]["review"]["steps"]
    return [step["run"] for step in steps if "run" in step]


def gitlab_scripts() -> list[str]:
    job = load(GITLAB)["reconcile-review"]
    return [*job["before_script"], *job["script"]]


def reconcile_commands(script: str) -> list[list[str]]:
    """Every `reconcile ...` command of a shell script, as argument lists."""
    script = script.replace("\\\n", " ")
    script = _ARRAYS.sub("--approve my-endpoint", script)
    script = _EXPRESSIONS.sub("main", script)
    script = _VARIABLES.sub("value", script)
    found: list[list[str]] = []
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
        for i, token in enumerate(tokens):
            at_start = i == 0 or tokens[i - 1] in _OPERATORS
            if token == "reconcile" and at_start:
                end = next((j for j in range(i + 1, len(tokens)) if tokens[j] in _OPERATORS), None)
                found.append(tokens[i + 1 : end])
    return found


def parse_with_click(args: list[str]) -> str:
    """Parses a command line against the CLI without running it; returns the sub-command."""
    ctx = main.make_context("reconcile", list(args))
    # Click 8 keeps the sub-command apart from `args`; Click 9 will leave it in `args`.
    remaining = [*getattr(ctx, "_protected_args", ()), *ctx.args]
    name, command, rest = main.resolve_command(ctx, remaining)
    assert command is not None and name is not None
    command.make_context(name, rest, parent=ctx)
    return name


def test_the_github_workflow_runs_on_pull_requests_with_full_history() -> None:
    workflow = load(GITHUB)
    # YAML 1.1 reads the key `on` as true.
    triggers = workflow.get("on", workflow.get(True))
    assert "pull_request" in triggers
    assert workflow["permissions"]["pull-requests"] == "write"
    steps = workflow["jobs"]["review"]["steps"]
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    assert any(s.get("uses", "").startswith("actions/github-script@") for s in steps)


def test_the_example_repository_carries_the_same_workflow() -> None:
    assert EXAMPLE_WORKFLOW.read_text() == GITHUB.read_text()


def test_the_gitlab_job_runs_on_merge_requests_with_full_history() -> None:
    job = load(GITLAB)["reconcile-review"]
    assert job["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    assert job["variables"]["GIT_DEPTH"] == "0"
    script = "\n".join(job["script"])
    assert "merge_requests/$CI_MERGE_REQUEST_IID/notes" in script
    assert "PRIVATE-TOKEN: $RECONCILER_GITLAB_TOKEN" in script


@pytest.mark.parametrize(
    ("scripts", "expected"),
    [
        (github_scripts, ["validate", "diff"]),
        (gitlab_scripts, ["validate", "diff"]),
    ],
    ids=["github", "gitlab"],
)
def test_templates_call_only_command_lines_the_cli_accepts(
    scripts: Any, expected: list[str]
) -> None:
    commands = [c for script in scripts() for c in reconcile_commands(script)]
    assert [parse_with_click(c) for c in commands] == expected
    diff = commands[1]
    assert diff[diff.index("--output") + 1] == "markdown"
    assert diff[diff.index("--base") + 1].startswith("origin/")


@pytest.mark.parametrize("scripts", [github_scripts, gitlab_scripts], ids=["github", "gitlab"])
def test_template_scripts_are_valid_bash(scripts: Any) -> None:
    for script in scripts():
        # GitHub replaces its ${{ }} expressions before the shell sees the script.
        text = _EXPRESSIONS.sub("main", script)
        checked = subprocess.run(["bash", "-n", "-c", text], capture_output=True, text=True)
        assert checked.returncode == 0, (script, checked.stderr)


def test_the_command_line_check_catches_a_wrong_option() -> None:
    import click

    with pytest.raises(click.UsageError):
        parse_with_click(["diff", "--base", "origin/main", "--output", "html"])
    with pytest.raises(click.UsageError):
        parse_with_click(["validate", "--no-such-option"])
    (command,) = reconcile_commands('set +e\nreconcile diff --base "origin/$X" > plan.md')
    assert command == ["diff", "--base", "origin/value"]


def hook() -> dict[str, Any]:
    (only,) = load(HOOKS)
    assert isinstance(only, dict)
    return only


def test_the_pre_commit_hook_definition() -> None:
    definition = hook()
    assert definition["id"] == "reconcile-validate"
    assert definition["entry"] == "reconcile validate"
    assert definition["language"] == "python"
    assert definition["pass_filenames"] is False
    assert parse_with_click(shlex.split(definition["entry"])[1:]) == "validate"


def valid_repository(r: RepoBuilder) -> None:
    r.basics()
    r.endpoint("my-endpoint", traffic={"blue": 100})
    r.deployment("my-endpoint", "blue")


def break_it(r: RepoBuilder) -> None:
    r.endpoint("my-endpoint", traffic={"blue": 100, "green": 10})


def test_the_hook_entry_passes_a_valid_repository_and_fails_a_broken_one(
    repo: RepoBuilder,
) -> None:
    entry = [str(RECONCILE), *shlex.split(hook()["entry"])[1:]]
    valid_repository(repo)
    ok = subprocess.run(entry, cwd=repo.root, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "valid: 1 endpoint(s), 1 deployment(s)" in ok.stdout
    break_it(repo)
    broken = subprocess.run(entry, cwd=repo.root, capture_output=True, text=True)
    assert broken.returncode == 1
    assert "endpoints/my-endpoint/endpoint.yml" in broken.stdout


@pytest.mark.skipif(PRE_COMMIT is None, reason="pre-commit is not installed")
def test_the_hook_through_pre_commit(repo: RepoBuilder, tmp_path: Path) -> None:
    definition = hook()
    # pre-commit would install this project from its repository for `language: python`
    # (network); a local hook runs the same entry with the reconcile already installed.
    config = {
        "repos": [
            {
                "repo": "local",
                "hooks": [
                    {
                        **definition,
                        "entry": f"{RECONCILE} {definition['entry'].split(' ', 1)[1]}",
                        "language": "system",
                    }
                ],
            }
        ]
    }
    repo.write_yaml(".pre-commit-config.yaml", config)
    valid_repository(repo)
    repo.git("add", "-A")
    assert PRE_COMMIT is not None
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home")}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PRE_COMMIT, "run", "--all-files", "reconcile-validate"],
            cwd=repo.root,
            capture_output=True,
            text=True,
            env=env,
        )

    manifest = subprocess.run(
        [PRE_COMMIT, "validate-manifest", str(HOOKS)], capture_output=True, text=True, env=env
    )
    assert manifest.returncode == 0, manifest.stdout + manifest.stderr
    ok = run()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    break_it(repo)
    repo.git("add", "-A")
    broken = run()
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "traffic" in broken.stdout
