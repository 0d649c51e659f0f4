"""The CI templates and the pre-commit hook: they parse, they call only `reconcile`
command lines that the CLI accepts, and the hook passes and fails a real repository."""

from __future__ import annotations

import json
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
    script = re.sub(r"\s\d>", " >", script)  # 2> file: a redirection, not an argument
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


# --- the template scripts run: a CI clone, the real `reconcile`, a local comment API ---


@pytest.fixture
def ci_clone(repo: RepoBuilder, tmp_path: Path) -> Path:
    """A shallow CI checkout of a pull request's branch; its base, main, is not in it."""
    valid_repository(repo)
    repo.commit("valid")
    repo.git("checkout", "-q", "-b", "feature")
    repo.write("README.md", "notes\n")
    repo.commit("notes")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.root), str(remote)], check=True)
    path = tmp_path / "ci"
    subprocess.run(
        ["git", "clone", "-q", "--depth", "1", "--branch", "feature", remote.as_uri(), str(path)],
        check=True,
        capture_output=True,
    )
    return path


def lose_the_remote(path: Path, tmp_path: Path) -> str:
    """The origin of a shallow clone moved away: BASE cannot be fetched."""
    missing = tmp_path / "moved-away.git"
    subprocess.run(["git", "remote", "set-url", "origin", str(missing)], cwd=path, check=True)
    return f"fatal: '{missing}' does not appear to be a git repository"


def ci_env(**variables: str) -> dict[str, str]:
    return {
        **os.environ,
        # The `reconcile` of this checkout, as pip would have installed it.
        "PATH": f"{RECONCILE.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "RECONCILER_REPO": ".",
        **variables,
    }


def run_github_plan_step(path: Path) -> tuple[int, str, str]:
    """The Plan step as GitHub runs it (bash -eo pipefail); (exit code, plan.md, summary)."""
    (plan_step,) = [s for s in load(GITHUB)["jobs"]["review"]["steps"] if s.get("id") == "plan"]
    summary = path.parent / "summary.md"
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", plan_step["run"]],
        cwd=path,
        env=ci_env(BASE_REF="main", LABELS="", GITHUB_STEP_SUMMARY=str(summary)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    plan = (path / "plan.md").read_text() if (path / "plan.md").exists() else ""
    return done.returncode, plan, summary.read_text() if summary.exists() else ""


NODE = shutil.which("node")


def run_github_comment_step(path: Path) -> list[str]:
    """The comment step's script with a recording stand-in for GitHub's client."""
    assert NODE is not None
    (step,) = [
        s
        for s in load(GITHUB)["jobs"]["review"]["steps"]
        if s.get("uses", "").startswith("actions/github-script@")
    ]
    harness = f"""
const posted = [];
const record = async (args) => {{ posted.push(args.body); }};
const github = {{
  paginate: async () => [],
  rest: {{ issues: {{ listComments: null, createComment: record, updateComment: record }} }},
}};
const context = {{ repo: {{ owner: 'o', repo: 'r' }}, issue: {{ number: 1 }} }};
const core = {{ warning: (m) => console.error('warning: ' + m) }};
(async () => {{
{step["with"]["script"]}
}})().then(() => console.log(JSON.stringify(posted)));
"""
    done = subprocess.run(
        [NODE, "-e", harness], cwd=path, capture_output=True, text=True, timeout=60, check=True
    )
    posted = json.loads(done.stdout)
    assert isinstance(posted, list)
    return [str(body) for body in posted]


def test_github_plan_step_fails_and_shows_why_when_base_cannot_be_fetched(
    ci_clone: Path, tmp_path: Path
) -> None:
    said = lose_the_remote(ci_clone, tmp_path)
    code, plan, summary = run_github_plan_step(ci_clone)
    assert code != 0  # the step fails, so the check does
    assert plan.strip(), "an empty plan.md"
    assert said in plan and said in summary
    assert "cannot find BASE 'origin/main'" in plan
    if NODE is not None:
        (comment,) = run_github_comment_step(ci_clone)
        assert comment.startswith("<!-- reconcile-review -->")
        assert said in comment


def test_github_plan_step_passes_with_a_plan(ci_clone: Path) -> None:
    code, plan, summary = run_github_plan_step(ci_clone)
    assert code == 0, plan
    assert plan.startswith("## Reconciler plan") and plan in summary
    assert "cannot find BASE" not in plan


class NotesApi:
    """GitLab's notes API of one merge request, on a real socket: records what is posted."""

    def __init__(self) -> None:
        import http.server
        import threading
        import urllib.parse

        posted: list[tuple[str, str, str]] = []
        self.posted = posted

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer(b"[]")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                token = self.headers.get("PRIVATE-TOKEN") or ""
                posted.append((self.path, token, form.get("body", [""])[0]))
                self._answer(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v4"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def notes_api() -> Any:
    api = NotesApi()
    yield api
    api.close()


def run_gitlab_script(path: Path, api: NotesApi) -> tuple[int, str]:
    job = load(GITLAB)["reconcile-review"]
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", "\n".join(job["script"])],
        cwd=path,
        env=ci_env(
            CI_MERGE_REQUEST_TARGET_BRANCH_NAME="main",
            CI_MERGE_REQUEST_LABELS="",
            CI_API_V4_URL=api.url,
            CI_PROJECT_ID="7",
            CI_MERGE_REQUEST_IID="3",
            RECONCILER_GITLAB_TOKEN="glpat-test",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


def test_gitlab_job_fails_and_posts_why_when_base_cannot_be_fetched(
    ci_clone: Path, tmp_path: Path, notes_api: NotesApi
) -> None:
    said = lose_the_remote(ci_clone, tmp_path)
    code, log = run_gitlab_script(ci_clone, notes_api)
    assert code != 0, log
    assert said in log
    [(where, token, body)] = notes_api.posted
    assert where == "/api/v4/projects/7/merge_requests/3/notes"
    assert token == "glpat-test"
    assert body.startswith("<!-- reconcile-review -->\n")
    assert said in body


def test_gitlab_job_passes_and_posts_the_plan(ci_clone: Path, notes_api: NotesApi) -> None:
    code, log = run_gitlab_script(ci_clone, notes_api)
    assert code == 0, log
    [(_, _, body)] = notes_api.posted
    assert "## Reconciler plan" in body
