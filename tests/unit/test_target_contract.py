"""The contract between the engine and its targets: typed step payloads and their dispatch,
capabilities asked for by Protocol, and the registry of target types."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest
from click.testing import CliRunner
from specs_factory import deployment, endpoint

from reconciler.cli import main
from reconciler.model.plan import (
    Action,
    CreateDeployment,
    CreateEndpoint,
    DeleteDeployment,
    DeleteEndpoint,
    Payload,
    RepairDeployment,
    RepairEndpoint,
    ScaleDeployment,
    SetMirrorTraffic,
    SetTraffic,
    Step,
    UpdateDeployment,
    UpdateEndpoint,
)
from reconciler.repoconfig import TARGET_TYPES as CONFIG_TYPES
from reconciler.repoconfig import TargetConfig
from reconciler.targets.base import Target, dispatch
from reconciler.targets.capabilities import (
    Autoscales,
    Builds,
    ChecksDesired,
    HasConnections,
    HasCredentials,
    HasLogs,
)
from reconciler.targets.memory import MemoryTarget
from reconciler.targets.registry import PREFLIGHTS, TARGET_TYPES
from reconciler.targets.status import StatusTarget

ROOT = Path(__file__).resolve().parents[2]
CAPABILITIES = (HasCredentials, HasLogs, HasConnections, Autoscales, Builds, ChecksDesired)

BLUE = deployment("blue")
PAYLOADS: tuple[Payload, ...] = (
    CreateEndpoint(endpoint()),
    UpdateEndpoint(endpoint()),
    RepairEndpoint(endpoint()),
    DeleteEndpoint(),
    CreateDeployment(BLUE, 2, BLUE.scale_settings),
    ScaleDeployment(BLUE, 3, BLUE.scale_settings),
    UpdateDeployment(BLUE, 3, BLUE.scale_settings),
    RepairDeployment("blue", None, 1, BLUE.scale_settings),
    DeleteDeployment("blue"),
    SetTraffic((("blue", 100),)),
    SetMirrorTraffic((("blue", 10),)),
)


def test_every_action_has_exactly_one_payload_type() -> None:
    actions = [payload_type.action for payload_type in get_args(Payload)]
    assert sorted(actions) == sorted(Action)
    assert sorted(type(p).action for p in PAYLOADS) == sorted(Action)


class _Recorder:
    """Handlers that record which one was called with what (any `_<action>` name)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        def handler(step: Step, do: Any, say: Any) -> None:
            self.calls.append((name, do))
            say(f"{name} ran")

        return handler


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: type(p).__name__)
def test_dispatch_calls_the_handler_of_the_payload_type_with_that_payload(
    payload: Payload,
) -> None:
    recorder = _Recorder()
    said: list[str] = []
    dispatch(recorder, Step(payload, "ep", "blue"), said.append)  # type: ignore[arg-type]
    assert recorder.calls == [(f"_{payload.action.value}", payload)]
    assert said == [f"_{payload.action.value} ran"]


def test_every_deployment_payload_names_its_deployment_and_the_step_agrees() -> None:
    """Handlers read the deployment's name from their payload (a str), never assert that
    the step's optional `deployment` is set (issue 12)."""
    names = {
        type(p).__name__: getattr(p, "name", None) or p.spec.name  # type: ignore[union-attr]
        for p in PAYLOADS
        if "Deployment" in type(p).__name__
    }
    assert set(names.values()) == {"blue"} and len(names) == 5
    with pytest.raises(ValueError, match="names deployment blue"):
        Step(DeleteDeployment("blue"), "ep", "green")
    with pytest.raises(ValueError, match="names deployment blue"):
        Step(ScaleDeployment(BLUE, 3, BLUE.scale_settings), "ep")
    targets = ROOT / "reconciler" / "targets"
    asserted = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted(targets.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "assert step.deployment is not None" in line or "assert key.deployment" in line
    ]
    assert asserted == []


def test_steps_read_their_payload_under_the_old_field_names() -> None:
    scale = Step(ScaleDeployment(BLUE, 3, BLUE.scale_settings), "ep", "blue")
    assert (scale.action, scale.deployment_spec, scale.instance_count) == (
        Action.SCALE_DEPLOYMENT,
        BLUE,
        3,
    )
    assert (scale.endpoint_spec, scale.traffic, scale.mirror_traffic) == (None, None, None)
    traffic = Step(SetTraffic((("blue", 100),)), "ep")
    assert (traffic.traffic, traffic.mirror_traffic, traffic.instance_count) == (
        (("blue", 100),),
        None,
        None,
    )
    assert traffic.as_json() == {
        "action": "set_traffic",
        "endpoint": "ep",
        "deployment": None,
        "changes": [],
        "reason": "",
    }


def _opened(kind: str, tmp_path: Path) -> Target:
    return TARGET_TYPES[kind](TargetConfig("t", kind), repo_root=tmp_path, repository="r")


def test_the_docker_target_has_every_capability(tmp_path: Path) -> None:
    target = _opened("docker", tmp_path)  # opening does not reach the engine
    assert [c.__name__ for c in CAPABILITIES if isinstance(target, c)] == [
        c.__name__ for c in CAPABILITIES
    ]


def test_both_targets_route_a_deployment_by_one_shared_function(tmp_path: Path) -> None:
    """Route building is shared plumbing (issue 12): the Docker and Kubernetes targets give
    the router the same request settings and paths for a deployment (images.layout)."""
    from dataclasses import replace

    from reconciler.images.layout import route_of
    from reconciler.model.specs import RequestSettings
    from reconciler.router.config import RouterConfig
    from reconciler.targets.docker.target import DockerTarget
    from reconciler.targets.kubernetes import manifests as m
    from reconciler.targets.kubernetes.options import KubernetesOptions

    spec = deployment("blue", request_settings=RequestSettings(7000, 3, 900))
    docker = _opened("docker", tmp_path)
    assert isinstance(docker, DockerTarget)
    by_docker = docker._with_route(RouterConfig("ep"), "blue", ["10.0.0.1:5001"], spec)
    options = KubernetesOptions(name="cluster", namespace="ml", registry="r.example/ml")
    by_kubernetes = m.deployment_route(m.RenderContext("ml", options, "img"), spec, replicas=1)
    shared = route_of(spec)
    assert (shared.request_timeout_ms, shared.max_concurrent_requests_per_instance) == (7000, 3)
    assert replace(by_docker.deployments[0], instances=()) == shared
    assert replace(by_kubernetes, instances=()) == shared


def test_the_kubernetes_target_keeps_no_connections_and_does_not_autoscale_itself(
    tmp_path: Path,
) -> None:
    target = _opened("kubernetes", tmp_path)
    assert isinstance(target, Target)
    assert [c.__name__ for c in CAPABILITIES if isinstance(target, c)] == [
        "HasCredentials",
        "HasLogs",
        "Builds",
        "ChecksDesired",
    ]


def test_memory_and_status_targets_only_observe_and_apply() -> None:
    for target in (MemoryTarget(), StatusTarget({})):
        assert isinstance(target, Target)
        assert [c.__name__ for c in CAPABILITIES if isinstance(target, c)] == []


def test_a_command_needing_a_capability_the_target_lacks_says_so(tmp_path: Path) -> None:
    (tmp_path / "reconciler.yaml").write_text(
        "targets:\n  cluster:\n    type: kubernetes\ndefault_target: cluster\n"
    )
    result = CliRunner().invoke(main, ["connection", "list", "--repo", str(tmp_path)])
    assert result.exit_code == 1
    assert "target cluster cannot store connections (on Kubernetes, create the Secrets)" in (
        result.output
    )


def test_the_registry_the_schema_and_repoconfig_name_the_same_target_types() -> None:
    schema = json.loads((ROOT / "reconciler/schemas/reconciler.schema.json").read_text())
    enum = schema["$defs"]["docker"]["properties"]["type"]["enum"]
    assert sorted(TARGET_TYPES) == sorted(enum) == sorted(CONFIG_TYPES)
    # A type's preflight warnings belong to a type the registry opens.
    assert set(PREFLIGHTS) <= set(TARGET_TYPES) and "docker" in PREFLIGHTS


def _run_in_example_repo(script: str, *args: str, cache: Path | None = None) -> str:
    """The output of `script` run by a new Python in example-repo (this process has
    imported what other tests needed); `cache`: its RECONCILER_CACHE_DIR."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    if cache is not None:
        env["RECONCILER_CACHE_DIR"] = str(cache)
    run = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT / "example-repo",
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return run.stdout


def test_diff_and_validate_never_import_the_docker_sdk_or_the_kubernetes_client() -> None:
    # A process of its own: this one has imported both for other tests.
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from reconciler.cli import main\n"
        "for args in (['validate'], ['diff', '--base', 'HEAD']):\n"
        "    result = CliRunner().invoke(main, args)\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('docker', 'kubernetes')))\n"
    )
    stdout = _run_in_example_repo(script)
    assert stdout.strip() == "[]"


# Heavy libraries a short command must not load (issue 15: start-up): imported on first use.
_LAZY = ("structlog", "jsonschema", "deepdiff", "numpy", "rich", "aiohttp", "prometheus_client")


def test_help_validate_and_diff_never_import_the_heavy_libraries_made_lazy() -> None:
    # A process of its own, the commands as a user runs them (through click), in turn.
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from reconciler.cli import main\n"
        "heavy = set(sys.argv[1:])\n"
        "def loaded():\n"
        "    return sorted({m.split('.')[0] for m in sys.modules} & heavy)\n"
        "for args in (['--help'], ['credentials', '--help']):\n"
        "    result = CliRunner().invoke(main, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "    print('help', loaded(), [m for m in ('git.repo', 'yaml', 'reconciler.loading',"
        " 'reconciler.codecache') if m in sys.modules])\n"
        "for args in (['validate'], ['diff', '--base', 'HEAD']):\n"
        "    result = CliRunner().invoke(main, args)\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        "    print(args[0], loaded())\n"
    )
    stdout = _run_in_example_repo(script, *_LAZY)
    # --help loads none of the package's commands' work: no gitpython (only its lazy module
    # object is bound; its submodules load with it), no YAML, no loading, and no cached
    # code of dataclasses (a sub-command's --help runs the group's callback all the same).
    assert stdout.splitlines() == ["help [] []", "help [] []", "validate []", "diff []"]


def test_validate_and_diff_run_git_without_gitpython_and_load_no_executor() -> None:
    # gitpython's import runs `git version` twice (`git` itself is only bound to a lazy
    # module object, its submodules load with it); the executor, health and status
    # documents belong to apply: a short command loads neither (issue 15).
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from reconciler.cli import main\n"
        "for args in (['validate'], ['diff', '--base', 'HEAD']):\n"
        "    result = CliRunner().invoke(main, args)\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        "    print(args[0], [m for m in ('git.repo', 'gitdb', 'reconciler.executor',"
        " 'reconciler.engine', 'logging') if m in sys.modules])\n"
    )
    stdout = _run_in_example_repo(script)
    assert stdout.splitlines() == ["validate []", "diff []"]


def test_validate_with_its_compiled_checks_cached_never_imports_fastjsonschema(
    tmp_path: Path,
) -> None:
    # The first process compiles the schema checks (fastjsonschema) and caches them; the
    # next one only runs the cached code, whose exceptions are the package's own.
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from reconciler.cli import main\n"
        "result = CliRunner().invoke(main, ['validate'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastjsonschema'}))\n"
    )
    assert _run_in_example_repo(script, cache=tmp_path).split() == ["['fastjsonschema']"]
    assert _run_in_example_repo(script, cache=tmp_path).split() == ["[]"]


def test_validate_loads_neither_the_plan_nor_the_target_protocol_nor_the_no_code_modules() -> None:
    # Validate says which revision it checked (model.revision), catches target errors
    # (targets.errors) and reads example-repo's custom-model deployments: the plan's
    # steps, the Target protocol, the no-code model readers and the Kubernetes target's
    # options belong to other commands and repositories (issue 15: start-up).
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from reconciler.cli import main\n"
        "result = CliRunner().invoke(main, ['validate'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print([m for m in sys.argv[1:] if m in sys.modules])\n"
    )
    unneeded = (
        "reconciler.model.plan",
        "reconciler.targets.base",
        "reconciler.nocode.triton",
        "reconciler.nocode.mlflowmodel",
        "reconciler.targets.kubernetes.options",
    )
    assert _run_in_example_repo(script, *unneeded).split() == ["[]"]


def test_validate_diff_and_status_as_run_load_neither_decimal_nor_tempfile_nor_the_router() -> None:
    # As a user runs them (`python -m reconciler.cli`, without click.testing, which imports
    # tempfile itself), each in a process of its own: the schema checks bind Decimal lazily
    # (decimal's library), gitsource imports tempfile where it makes a commit, and a rollout
    # policy that leaves the shadow comparison to the router (example-repo's) needs none
    # of the router's config (issue 15: start-up). Status finds no status branch here
    # (exit 1), after reading reconciler.yaml as it always does.
    script = (
        "import atexit, runpy, sys\n"
        "unneeded = sys.argv[2:]\n"
        "atexit.register(lambda: print('loaded', [m for m in unneeded if m in sys.modules]))\n"
        "sys.argv = ['reconcile', *sys.argv[1].split()]\n"
        "runpy.run_module('reconciler.cli', run_name='__main__')\n"
    )
    unneeded = (
        "decimal",
        "tempfile",
        "random",
        "shutil",
        "reconciler.router.config",
        "reconciler.endpoints.comparison",
    )
    for command, code in (("validate", 0), ("diff --base HEAD", 0), ("status", 1)):
        run = subprocess.run(
            [sys.executable, "-c", script, command, *unneeded],
            cwd=ROOT / "example-repo",
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == code, (command, run.stderr)
        assert run.stdout.splitlines()[-1] == "loaded []", command


def test_the_dataclasses_validate_and_diff_load_all_have_a_docstring() -> None:
    # dataclasses writes the docstring of a class without one from inspect.signature: about
    # 0.1 ms a class, 2% of a `validate` for 30 classes (issue 15: start-up).
    script = (
        "import dataclasses, sys\n"
        "from click.testing import CliRunner\n"
        "from reconciler.cli import main\n"
        "for args in (['validate'], ['diff', '--base', 'HEAD']):\n"
        "    result = CliRunner().invoke(main, args)\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        "bare = sorted(\n"
        "    f'{name}.{k}' for name, m in list(sys.modules.items())\n"
        "    if name.startswith('reconciler') for k, v in vars(m).items()\n"
        "    if dataclasses.is_dataclass(v) and isinstance(v, type) and v.__module__ == name\n"
        "    and (v.__doc__ or '').startswith(v.__name__ + '(')\n"
        ")\n"
        "print(len([m for m in sys.modules if m.startswith('reconciler.')]) > 30, bare)\n"
    )
    assert _run_in_example_repo(script).split() == ["True", "[]"]
