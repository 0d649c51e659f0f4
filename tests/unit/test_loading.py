"""Loading: repositories -> DesiredState, with every default filled and every error reported.

Valid repositories are built in memory (MemoryTree) or on disk (DirectoryTree); the invalid
ones live in tests/invalid/NN-name/, each with an expected.yaml of the errors it must give.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from repo_builder import RepoBuilder

from reconciler import loading
from reconciler.filetree import Digester, DirectoryTree, MemoryTree
from reconciler.loading import load_desired_state, load_yaml_document
from reconciler.model.diagnostics import DesiredStateInvalid, Diagnostic
from reconciler.model.instance_types import InstanceType
from reconciler.model.specs import (
    CodeSpec,
    DeploymentSpec,
    EndpointSpec,
    EnvironmentSpec,
    InferenceConfig,
    ModelSpec,
    ProbeSettings,
    RequestSettings,
    Resources,
    Route,
    ScaleSettings,
    SourceLocation,
)
from reconciler.model.state import DesiredState
from reconciler.yamlsource import duplicate_key_diagnostics

AZURE = "https://azuremlschemas.azureedge.net/latest/"
SCORE = "def init():\n    pass\n\n\ndef run(data):\n    return data\n"
CONDA = "name: env\ndependencies:\n  - python=3.10\n  - pip\n  - pip:\n      - numpy==1.26.4\n"
INVALID = Path(__file__).parent.parent / "invalid"


def text(block: str) -> bytes:
    return dedent(block).lstrip("\n").encode()


ENDPOINT = text(
    f"""
    $schema: {AZURE}managedOnlineEndpoint.schema.json
    name: my-endpoint
    auth_mode: key
    tags:
      team: ml
      replicas: 3
    traffic:
      blue: 90
      green: 10
    """
)


def deployment(
    name: str = "blue", *, extra: str = "", endpoint: str = "my-endpoint", root: str = ""
) -> bytes:
    """A deployment file; root is the way from its folder to the repository's root."""
    body = f"""
    $schema: {AZURE}managedOnlineDeployment.schema.json
    name: {name}
    endpoint_name: {endpoint}
    model:
      path: {root}model/model.pkl
    code_configuration:
      code: {root}src
      scoring_script: score.py
    environment:
      image: python:3.11-slim
      conda_file: {root}conda.yml
    instance_type: Standard_DS2_v2
    """
    return text(body) + text(extra)


def files(**overrides: bytes | str | None) -> dict[str, bytes]:
    """A small valid repository; keyword names use '__' for '/' and '_dot_' for '.'."""
    tree: dict[str, bytes] = {
        "endpoint.yml": ENDPOINT,
        "blue.yml": deployment("blue"),
        "green.yml": deployment("green", extra="instance_count: 2\n"),
        "src/score.py": SCORE.encode(),
        "model/model.pkl": b"weights",
        "conda.yml": CONDA.encode(),
    }
    for key, content in overrides.items():
        path = key.replace("__", "/").replace("_dot_", ".")
        if content is None:
            tree.pop(path, None)
        else:
            tree[path] = content.encode() if isinstance(content, str) else content
    return tree


def load(tree: Mapping[str, bytes], **kwargs: Any) -> DesiredState:
    return load_desired_state(MemoryTree(dict(tree)), **kwargs)


def errors_of(tree: Mapping[str, bytes]) -> tuple[Diagnostic, ...]:
    with pytest.raises(DesiredStateInvalid) as caught:
        load(tree)
    return caught.value.errors


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    loading.clear_cache()


# --- valid repositories --------------------------------------------------------------


def test_a_small_repository_loads_with_every_default_filled() -> None:
    tree = files()
    state = load(tree, revision="abc123")
    digester = Digester(MemoryTree(tree))

    assert state.revision == "abc123"
    assert state.endpoints == (
        EndpointSpec(
            name="my-endpoint",
            flavor="managed",
            auth_mode="key",
            traffic=(("blue", 90), ("green", 10)),
            tags=(("replicas", "3"), ("team", "ml")),
        ),
    )
    assert state.endpoints[0].source == SourceLocation("endpoint.yml", 1)
    blue = state.deployments[0]
    environment = blue.environment
    assert environment.digest.startswith("sha256:")
    assert environment == EnvironmentSpec(
        image="python:3.11-slim",
        conda_file="conda.yml",
        conda_packages=("python=3.10", "pip"),
        pip_packages=("numpy==1.26.4",),
        python_version="3.10",
        digest=environment.digest,
    )
    assert blue == DeploymentSpec(
        endpoint_name="my-endpoint",
        name="blue",
        environment=environment,
        flavor="managed",
        model=ModelSpec(
            name="model",
            version="1",
            path="model/model.pkl",
            type="custom_model",
            digest=digester.digest("model/model.pkl"),
        ),
        code=CodeSpec(path="src", scoring_script="score.py", digest=digester.digest("src")),
        instance_type="Standard_DS2_v2",
        instance_count=1,
        scale_settings=ScaleSettings(),
        request_settings=RequestSettings(5000, 1, 500),
        liveness_probe=ProbeSettings(10, 10, 2, 1, 30),
        readiness_probe=ProbeSettings(10, 10, 2, 1, 30),
    )
    assert blue.source == SourceLocation("blue.yml", 1)
    assert [d.name for d in state.deployments] == ["blue", "green"]
    assert state.deployments[1].instance_count == 2
    assert state.warnings == ()


def test_paths_are_relative_to_the_file_and_stored_repository_relative() -> None:
    tree = files(
        blue_dot_yml=None,
        green_dot_yml=None,
        endpoint_dot_yml=ENDPOINT.replace(b"  green: 10\n", b"").replace(b"90", b"100"),
        endpoints__my__blue_dot_yml=deployment(root="./../.././"),
    )
    (blue,) = load(tree).deployments
    assert blue.model is not None and blue.model.path == "model/model.pkl"
    assert blue.code is not None and blue.code.path == "src"
    assert blue.environment.conda_file == "conda.yml"
    assert blue.source == SourceLocation("endpoints/my/blue.yml", 1)


def test_the_document_start_skips_comments_and_blank_lines() -> None:
    commented = b"# The blue deployment.\n\n---\n" + deployment()
    state = load(files(blue_dot_yml=commented))
    assert state.deployments[0].source == SourceLocation("blue.yml", 4)


def test_registered_models_and_environments_resolve_by_version_and_latest() -> None:
    model_file = "$schema: {s}model.schema.json\nname: sk\nversion: {v}\npath: {p}\n"
    env_file = "$schema: {s}environment.schema.json\nname: env\nversion: {v}\nimage: {i}\n"
    tree = files(
        models__sk2_dot_yml=model_file.format(s=AZURE, v=2, p="../model/model.pkl"),
        models__sk10_dot_yml=model_file.format(s=AZURE, v=10, p="../model"),
        envs__a_dot_yml=env_file.format(s=AZURE, v="'1.9'", i="python:3.9"),
        envs__b_dot_yml=env_file.format(s=AZURE, v="'1.10'", i="python:3.10"),
        blue_dot_yml=deployment(extra="")
        .replace(b"model:\n  path: model/model.pkl", b"model: azureml:sk:2")
        .replace(
            b"environment:\n  image: python:3.11-slim\n  conda_file: conda.yml",
            b"environment: azureml:env:1.9",
        ),
        green_dot_yml=deployment("green")
        .replace(b"model:\n  path: model/model.pkl", b"model: azureml:sk@latest")
        .replace(
            b"environment:\n  image: python:3.11-slim\n  conda_file: conda.yml",
            b"environment: azureml:env@latest",
        ),
    )
    blue, green = load(tree).deployments
    assert blue.model is not None and green.model is not None
    assert (blue.model.name, blue.model.version, blue.model.path) == ("sk", "2", "model/model.pkl")
    assert blue.model.registered
    # Integer versions compare as numbers: 10 is later than 2.
    assert (green.model.version, green.model.path) == ("10", "model")
    assert blue.environment.version == "1.9"
    # Versions that are not all integers compare as text: "1.9" sorts after "1.10".
    assert (green.environment.version, green.environment.image) == ("1.9", "python:3.9")


def test_a_code_change_changes_the_deployment_digest_and_nothing_else() -> None:
    before = load(files())
    after = load(files(src__score_dot_py=SCORE + "\n# tuned\n"))
    assert before.endpoints == after.endpoints
    assert before.deployments[0].digest != after.deployments[0].digest
    assert before.deployments[0].environment == after.deployments[0].environment
    assert before.deployments[0].model == after.deployments[0].model


def test_a_conda_change_changes_the_environment_digest() -> None:
    before = load(files())
    after = load(files(conda_dot_yml=CONDA + "      - pandas\n"))
    old, new = before.deployments[0].environment, after.deployments[0].environment
    assert old.digest != new.digest
    assert new.pip_packages == ("numpy==1.26.4", "pandas")


def test_an_instance_count_change_keeps_the_template_digest() -> None:
    before = load(files())
    after = load(files(blue_dot_yml=deployment(extra="instance_count: 3\n")))
    assert before.deployments[0].digest == after.deployments[0].digest
    assert after.deployments[0].instance_count == 3


def test_numbers_written_with_a_point_are_integers() -> None:
    endpoint = ENDPOINT.replace(b"blue: 90", b"blue: 90.0")
    extra = "instance_count: 2.0\nrequest_settings:\n  request_timeout_ms: 3000.0\n"
    state = load(files(endpoint_dot_yml=endpoint, blue_dot_yml=deployment(extra=extra)))
    blue = state.deployments[0]
    assert state.endpoints[0].traffic == (("blue", 90), ("green", 10))
    assert (blue.instance_count, blue.request_settings.request_timeout_ms) == (2, 3000)
    assert type(blue.instance_count) is int
    assert type(blue.request_settings.request_timeout_ms) is int


def test_yaml_that_is_not_ours_is_ignored() -> None:
    state = load(
        files(
            **{
                ".github__workflows__ci_dot_yml": "on: push\njobs: {}\n",
                ".gitlab-ci_dot_yml": "name: x\ntraffic: 1\n",
                "reconciler_dot_yaml": "name: settings\ntraffic: policy\n",
                "status__my-endpoint_dot_yaml": "name: my-endpoint\ntraffic: {blue: 90}\n",
                "k8s__manifest_dot_yaml": "kind: Service\n---\nkind: Deployment\n",
                "sample-request_dot_yml": "data: [[1, 2, 3]]\n",
                "jobs__train_dot_yml": f"$schema: {AZURE}commandJob.schema.json\nname: j\n",
                "batch__dep_dot_yml": (
                    f"$schema: {AZURE}batchDeployment.schema.json\nendpoint_name: b\n"
                ),
                "cfn__stack_dot_yml": "Resources:\n  Bucket: !Ref Name\n",
                "empty_dot_yml": "",
                "comment_dot_yml": "# nothing here\n",
            }
        )
    )
    assert [e.name for e in state.endpoints] == ["my-endpoint"]
    assert len(state.deployments) == 2
    assert state.warnings == ()


def test_a_broken_file_that_is_not_ours_is_a_warning_not_an_error() -> None:
    state = load(files(charts__templates__svc_dot_yaml="port: {{ .Values.port }}\n"))
    (warning,) = state.warnings
    assert warning.file == "charts/templates/svc.yaml"
    assert "does not look like an endpoint file" in warning.message


def test_a_kubernetes_endpoint_and_deployment() -> None:
    tree = files(
        endpoint_dot_yml=ENDPOINT.replace(b"auth_mode: key\n", b"compute: azureml:k8s\n"),
        blue_dot_yml=deployment(extra="type: kubernetes\n")
        .replace(b"instance_type: Standard_DS2_v2\n", b"")
        .replace(b"managedOnline", b"kubernetesOnline")
        + text(
            """
            resources:
              requests: {cpu: 1, memory: 2Gi}
              limits: {nvidia.com/gpu: 1}
            """
        ),
        green_dot_yml=deployment("green", extra="type: kubernetes\ninstance_count: 60\n"),
    )
    state = load(tree)
    (endpoint,) = state.endpoints
    assert (endpoint.flavor, endpoint.compute) == ("kubernetes", "azureml:k8s")
    blue, green = state.deployments
    assert blue.flavor == green.flavor == "kubernetes"
    assert blue.instance_type is None
    assert blue.resources == Resources(
        requests=(("cpu", "1"), ("memory", "2Gi")), limits=(("nvidia.com/gpu", "1"),)
    )
    assert green.resources is None
    assert green.instance_count == 60  # the managed bound of 50 does not apply


def test_autoscaling_defaults_and_the_starting_count() -> None:
    autoscaled = "scale_settings:\n  type: target_utilization\n  max_instances: 4\n"
    state = load(
        files(
            blue_dot_yml=deployment(extra=autoscaled),
            green_dot_yml=deployment("green", extra=autoscaled + "instance_count: 9\n"),
        )
    )
    blue, green = state.deployments
    assert blue.scale_settings == ScaleSettings("target_utilization", 1, 4, 70, 1)
    assert blue.instance_count == 1  # starts at min_instances
    assert green.instance_count == 9
    (warning,) = state.warnings
    assert (warning.file, warning.field, warning.line) == ("green.yml", "instance_count", 16)
    assert "outside min_instances..max_instances (1..4)" in warning.message


def test_fields_without_effect_are_accepted_with_a_warning() -> None:
    endpoint = ENDPOINT + text(
        """
        public_network_access: disabled
        identity:
          type: user_assigned
          user_assigned_identities:
            - resource_id: /sub/x
        """
    )
    extra = """
    app_insights_enabled: true
    egress_public_network_access: disabled
    data_collector:
      sampling_rate: 0.5
      collections:
        model_inputs:
          enabled: 'True'
    """
    state = load(files(endpoint_dot_yml=endpoint, blue_dot_yml=deployment(extra=extra)))
    fields = [(w.file, w.field) for w in state.warnings]
    assert fields == [
        ("blue.yml", "app_insights_enabled"),
        ("blue.yml", "egress_public_network_access"),
        ("blue.yml", "data_collector"),
        ("endpoint.yml", "public_network_access"),
        ("endpoint.yml", "identity"),
    ]
    assert all("accepted, no effect on this target" in w.message for w in state.warnings)
    identity = {"type": "user_assigned", "user_assigned_identities": [{"resource_id": "/sub/x"}]}
    assert state.endpoints[0].identity == json.dumps(identity, sort_keys=True)
    blue = state.deployments[0]
    assert blue.data_collector == (
        '{"collections": {"model_inputs": {"enabled": "True"}}, "sampling_rate": 0.5}'
    )
    assert (blue.app_insights_enabled, blue.egress_public_network_access) == (True, "disabled")


def test_a_custom_container_needs_no_code_and_may_mount_the_model() -> None:
    custom = text(
        f"""
        $schema: {AZURE}managedOnlineDeployment.schema.json
        name: blue
        endpoint_name: my-endpoint
        model: model
        model_mount_path: /models
        environment:
          image: ghcr.io/example/server:1
          inference_config:
            liveness_route: {{port: 8000, path: /health}}
            readiness_route: {{port: 8000, path: /ready}}
            scoring_route: {{port: 8000, path: /predict}}
        instance_type: Standard_DS2_v2
        """
    )
    blue = load(files(blue_dot_yml=custom)).deployments[0]
    assert blue.code is None
    assert blue.model_mount_path == "/models"
    assert blue.model is not None and (blue.model.name, blue.model.path) == ("model", "model")
    assert blue.environment.inference_config == InferenceConfig(
        Route(8000, "/health"), Route(8000, "/ready"), Route(8000, "/predict")
    )
    assert blue.environment.custom_container


def test_a_route_path_without_its_slash_is_taken_from_the_root_with_a_warning() -> None:
    custom = text(
        f"""
        $schema: {AZURE}managedOnlineDeployment.schema.json
        name: blue
        endpoint_name: my-endpoint
        environment:
          image: ghcr.io/example/server:1
          inference_config:
            liveness_route: {{port: 8000, path: /health}}
            readiness_route: {{port: 8000, path: /ready}}
            scoring_route: {{port: 8000, path: v1/predict}}
        instance_type: Standard_DS2_v2
        """
    )
    state = load(files(blue_dot_yml=custom))
    config = state.deployments[0].environment.inference_config
    assert config is not None and config.scoring_route == Route(8000, "/v1/predict")
    (warning,) = state.warnings
    assert (warning.file, warning.field) == (
        "blue.yml",
        "environment.inference_config.scoring_route.path",
    )
    assert "'/v1/predict'" in warning.message


def test_an_environment_made_by_a_model_package_is_refused_as_a_local_limit() -> None:
    """`az ml model package --file package.yml` makes the environment target_environment
    names in a workspace; a deployment naming it cannot run here, and the error says why
    and what to write instead (not merely "declare it")."""
    package = text(
        """
        $schema: http://azureml/sdk-2-0/ModelVersionPackage.json
        target_environment: regression-pkg
        inferencing_server:
          type: azureml_online
        """
    )
    packaged = text(
        f"""
        $schema: {AZURE}managedOnlineDeployment.schema.json
        name: blue
        endpoint_name: my-endpoint
        environment: azureml:regression-pkg@latest
        instance_type: Standard_DS3_v2
        """
    )
    (error,) = errors_of(files(blue_dot_yml=packaged, package_dot_yml=package))
    assert (error.file, error.field) == ("blue.yml", "environment")
    assert "a model package makes (package.yml, target_environment)" in error.message
    assert "model packages are not built here" in error.message
    assert "model:, environment:, code_configuration:" in error.message
    # Without the package spec in the repository it is an undeclared environment, as before.
    (plain,) = errors_of(files(blue_dot_yml=packaged))
    assert "declare it with an environment file" in plain.message


def test_a_build_context_environment_digests_the_context() -> None:
    built = "environment:\n  build:\n    path: docker\n    dockerfile_path: images/Dockerfile\n"
    blue = deployment().replace(
        b"environment:\n  image: python:3.11-slim\n  conda_file: conda.yml\n", built.encode()
    )
    tree = files(blue_dot_yml=blue, docker__images__Dockerfile="FROM python:3.11\n")
    first = load(tree).deployments[0].environment
    assert (first.build_context, first.dockerfile_path, first.image) == (
        "docker",
        "images/Dockerfile",
        None,
    )
    tree["docker/images/Dockerfile"] = b"FROM python:3.12\n"
    assert load(tree).deployments[0].environment.digest != first.digest


def test_an_unchanged_file_is_analysed_once_across_loads() -> None:
    first = load(files())
    second = load(files(green_dot_yml=deployment("green", extra="instance_count: 5\n")))
    # The same blob gives the very same spec object: the work was cached, not redone.
    assert second.endpoints[0] is first.endpoints[0]
    assert second.deployments[1].instance_count == 5
    assert second.deployments[0] == first.deployments[0]


def test_a_directory_tree_loads_like_a_memory_tree(tmp_path: Path) -> None:
    tree = files()
    for path, content in tree.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(content)
    from_disk = load_desired_state(DirectoryTree(tmp_path))
    loading.clear_cache()
    assert from_disk == load(tree)
    assert [d.digest for d in from_disk.deployments] == [d.digest for d in load(tree).deployments]


def test_the_instance_type_table_is_the_callers() -> None:
    table = {"gpu-small": InstanceType("gpu-small", 4, 16, gpus=1)}
    tree = files(
        blue_dot_yml=deployment().replace(b"Standard_DS2_v2", b"gpu-small"),
        green_dot_yml=None,
        endpoint_dot_yml=ENDPOINT.replace(b"  green: 10\n", b"").replace(b"90", b"100"),
    )
    assert load(tree, instance_types=table).deployments[0].instance_type == "gpu-small"
    with pytest.raises(DesiredStateInvalid) as caught:
        load(tree)
    assert [e.field for e in caught.value.errors] == ["instance_type"]


def test_endpoints_and_deployments_come_out_sorted() -> None:
    other = ENDPOINT.replace(b"my-endpoint", b"alpha").replace(b"  green: 10\n", b"")
    other = other.replace(b"90", b"100")
    state = load(
        files(
            z_dot_yml=other,
            a__zeta_dot_yml=deployment("zeta", endpoint="alpha", root="../"),
            a__blue_dot_yml=deployment("blue", endpoint="alpha", root="../"),
        )
    )
    assert [e.name for e in state.endpoints] == ["alpha", "my-endpoint"]
    keys = [(d.endpoint_name, d.name) for d in state.deployments]
    assert keys == [
        ("alpha", "blue"),
        ("alpha", "zeta"),
        ("my-endpoint", "blue"),
        ("my-endpoint", "green"),
    ]


# --- errors ----------------------------------------------------------------------------


def test_every_error_is_reported_at_once_and_sorted() -> None:
    errors = errors_of(
        files(
            blue_dot_yml=deployment(extra="instance_cout: 2\nliveness_probe:\n  period: 0\n"),
            green_dot_yml=deployment("green").replace(b"code: src", b"code: nowhere"),
            endpoint_dot_yml=ENDPOINT.replace(b"green: 10", b"green: 20"),
        )
    )
    assert [(e.file, e.line, e.field) for e in errors] == [
        ("blue.yml", 13, "instance_cout"),
        ("blue.yml", 15, "liveness_probe.period"),
        ("endpoint.yml", 7, "traffic"),
        ("green.yml", 7, "code_configuration.code"),
    ]
    assert errors[0].message == "unknown field 'instance_cout' (did you mean 'instance_count'?)"
    assert errors[1].message == "must be at least 1, got 0"


def test_an_error_names_the_versions_that_exist() -> None:
    model_file = f"$schema: {AZURE}model.schema.json\nname: sk\nversion: 3\npath: model\n"
    tree = files(
        sk_dot_yml=model_file,
        blue_dot_yml=deployment().replace(
            b"model:\n  path: model/model.pkl", b"model: azureml:sk:9"
        ),
    )
    (error,) = errors_of(tree)
    assert (error.file, error.line, error.field) == ("blue.yml", 4, "model")
    assert error.message == "model 'sk' has no version 9; declared: 3"


def _invalid_cases() -> list[Path]:
    return sorted(p for p in INVALID.iterdir() if p.is_dir())


def test_there_are_at_least_thirty_invalid_repositories() -> None:
    assert len(_invalid_cases()) >= 30


@pytest.mark.parametrize("case", _invalid_cases(), ids=lambda p: p.name)
def test_invalid_repository(case: Path) -> None:
    expected = yaml.safe_load((case / "expected.yaml").read_text())
    tree = {
        p.relative_to(case).as_posix(): p.read_bytes()
        for p in case.rglob("*")
        if p.is_file() and p.name != "expected.yaml"
    }
    errors = errors_of(tree)
    # Exactly the expected (file, field) pairs: no error missing, and no noise either.
    assert sorted({(e.file, e.field) for e in errors}) == sorted(
        {(item["file"], item["field"]) for item in expected}
    )
    for item in expected:
        matching = [e for e in errors if (e.file, e.field) == (item["file"], item["field"])]
        if "line" in item:
            assert item["line"] in [e.line for e in matching], (item, matching)
        if "message_contains" in item:
            assert any(item["message_contains"] in e.message for e in matching), (item, matching)
    assert list(errors) == sorted(errors, key=lambda e: (e.file, e.line or 0, e.field, e.message))


# --- robustness ------------------------------------------------------------------------


def test_load_yaml_document_never_raises() -> None:
    assert load_yaml_document(b"", "a.yml").documents == (None,)
    assert load_yaml_document(b"a: 1\n---\nb: 2\n", "a.yml").documents == ({"a": 1}, {"b": 2})
    broken = load_yaml_document(b"a: [1, 2\n", "a.yml")
    assert broken.error is not None and broken.error.line == 2
    assert load_yaml_document(b"\xff\xfe\x00junk", "a.yml").error is not None
    assert load_yaml_document(b"[" * 100_000 + b"]" * 100_000, "a.yml").error is not None
    assert load_yaml_document(b"when: 2024-13-45\n", "a.yml").error is not None
    tagged = load_yaml_document(b"a: !Ref b\n", "a.yml")
    assert tagged.value == {"a": "b"} and tagged.unsupported_tag is not None


def test_an_alias_bomb_is_refused_quickly() -> None:
    lines = ["name: blue", "endpoint_name: my-endpoint", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    errors = errors_of(files(blue_dot_yml="\n".join(lines) + "\n"))
    assert any("YAML aliases" in e.message for e in errors)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 200_000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["azureml:sk:1", "azureml:x@latest", "../..", "/abs", "src", "key"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_keys = st.sampled_from(
    [
        "name", "endpoint_name", "model", "code_configuration", "environment", "instance_type",
        "instance_count", "scale_settings", "request_settings", "liveness_probe", "resources",
        "environment_variables", "model_mount_path", "type", "traffic", "mirror_traffic",
        "auth_mode", "identity", "data_collector", "tags", "compute", "$schema",
    ]
)  # fmt: skip


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(_keys, _values, max_size=4), which=st.sampled_from(["blue", "ep"]))
def test_any_document_gives_a_state_or_errors_never_a_traceback(
    changes: dict[str, Any], which: str
) -> None:
    path = "blue.yml" if which == "blue" else "endpoint.yml"
    tree = files()
    document = yaml.safe_load(tree[path])
    document.update(changes)
    tree[path] = yaml.safe_dump(document).encode()
    try:
        load(tree)
    except DesiredStateInvalid as exc:
        assert exc.errors
        assert all(isinstance(e, Diagnostic) and e.file for e in exc.errors)


@settings(max_examples=100, deadline=None)
@given(junk=st.binary(max_size=200))
def test_any_bytes_give_a_state_or_errors_never_a_traceback(junk: bytes) -> None:
    try:
        load(files(blue_dot_yml=b"endpoint_name: my-endpoint\n" + junk))
    except DesiredStateInvalid as exc:
        assert exc.errors


# --- limits, links and special files (issue 10, defects 8 to 10) -------------------------


def on_disk(root: Path, tree: Mapping[str, bytes]) -> DirectoryTree:
    for path, content in tree.items():
        full = root / path
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_bytes(content)
    return DirectoryTree(root)


def disk_errors(tree: DirectoryTree) -> tuple[Diagnostic, ...]:
    with pytest.raises(DesiredStateInvalid) as caught:
        load_desired_state(tree)
    return caught.value.errors


def test_a_scoring_script_linked_outside_the_repository_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "host-secret.txt"
    outside.write_text("root:x:0:0\n")
    tree = on_disk(tmp_path / "repo", files(src__score_dot_py=None))
    (tmp_path / "repo" / "src").mkdir()
    (tmp_path / "repo" / "src" / "score.py").symlink_to(outside)
    errors = disk_errors(tree)
    assert {(e.file, e.field) for e in errors} == {
        ("blue.yml", "code_configuration.scoring_script"),
        ("green.yml", "code_configuration.scoring_script"),
    }
    message = errors[0].message
    assert "'src/score.py' is a symbolic link to" in message and str(outside) in message
    assert "outside the repository" in message


def test_a_model_file_linked_outside_the_repository_is_refused(tmp_path: Path) -> None:
    tree = on_disk(tmp_path / "repo", files(model__model_dot_pkl=None))
    (tmp_path / "repo" / "model").mkdir()
    (tmp_path / "repo" / "model" / "model.pkl").symlink_to("../../elsewhere/model.pkl")
    errors = disk_errors(tree)
    assert {(e.file, e.field, e.line) for e in errors} == {
        ("blue.yml", "model.path", 5),
        ("green.yml", "model.path", 5),
    }
    assert errors[0].message == (
        "'model/model.pkl' is a symbolic link to '../../elsewhere/model.pkl', outside the "
        "repository: links are followed only inside it"
    )


def test_a_link_inside_the_repository_reads_as_the_file_it_names(tmp_path: Path) -> None:
    tree = on_disk(tmp_path / "repo", files(model__model_dot_pkl=None, weights_dot_bin=b"w1"))
    (tmp_path / "repo" / "model").mkdir()
    (tmp_path / "repo" / "model" / "model.pkl").symlink_to("../weights.bin")
    state = load_desired_state(tree)
    model = state.deployments[0].model
    assert model is not None
    same = Digester(MemoryTree({"model/model.pkl": b"w1"})).digest("model/model.pkl")
    assert model.digest == same


@pytest.mark.timeout(60)  # a guard: before the fix, this read blocked forever
def test_a_fifo_where_a_model_file_is_expected_is_an_error_not_a_hang(tmp_path: Path) -> None:
    import os

    tree = on_disk(tmp_path / "repo", files(model__model_dot_pkl=None))
    (tmp_path / "repo" / "model").mkdir()
    os.mkfifo(tmp_path / "repo" / "model" / "model.pkl")
    errors = disk_errors(tree)
    assert {(e.file, e.field) for e in errors} == {
        ("blue.yml", "model.path"),
        ("green.yml", "model.path"),
    }
    assert errors[0].message == (
        "'model/model.pkl' is a named pipe (FIFO), not a regular file: it is never read"
    )


@pytest.mark.timeout(60)
def test_a_fifo_named_like_a_yaml_file_is_reported_and_never_opened(tmp_path: Path) -> None:
    import os

    tree = on_disk(tmp_path / "repo", files())
    os.mkfifo(tmp_path / "repo" / "pipe.yml")
    errors = disk_errors(tree)
    assert [(e.file, e.message) for e in errors] == [
        ("pipe.yml", "'pipe.yml' is a named pipe (FIFO), not a regular file: it is never read")
    ]


def test_a_big_model_file_is_digested_without_being_read_whole(tmp_path: Path) -> None:
    import subprocess
    import tracemalloc

    big = tmp_path / "big.bin"
    with big.open("wb") as handle:  # sparse: 64 MiB that take no room on disk
        handle.truncate(64 * 1024 * 1024)
    tree = DirectoryTree(tmp_path)
    tracemalloc.start()
    try:
        blob = tree.blob_id("big.bin")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    expected = subprocess.run(
        ["git", "hash-object", str(big)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert blob == expected
    assert peak < 8 * 1024 * 1024, f"{peak} bytes held to digest a 64 MiB file"


def test_a_yaml_file_above_the_size_limit_is_not_parsed() -> None:
    big = b"rows:\n" + b"  - [1, 2, 3, 4, 5, 6, 7, 8]\n" * (loading.MAX_YAML_BYTES // 28 + 1)
    assert len(big) > loading.MAX_YAML_BYTES
    state = load(files(data__rows_dot_yaml=big))
    assert [(w.file, w.line, w.field) for w in state.warnings] == [("data/rows.yaml", None, "")]
    assert state.warnings[0].message.startswith(
        f"not read: {len(big):,} bytes, more than the {loading.MAX_YAML_BYTES:,} a YAML file "
        "may hold; ignored"
    )


def test_a_document_of_ours_nested_deeper_than_the_limit_is_refused() -> None:
    deep = "deep:\n" + "".join(f"{'  ' * (i + 1)}k{i}:\n" for i in range(150)) + "  " * 151 + "x\n"
    errors = errors_of(files(endpoint_dot_yml=ENDPOINT + deep.encode()))
    assert [(e.file, e.field) for e in errors] == [("endpoint.yml", "")]
    assert errors[0].message == (
        f"nests deeper than {loading.MAX_NESTING_OF_OURS} levels; a file of ours needs a few"
    )


def test_merge_keys_may_override_but_a_key_of_the_mapping_itself_may_not_repeat() -> None:
    merged = load_yaml_document(b"base: &b {a: 1, b: 2}\nuse:\n  <<: *b\n  b: 3\n", "m.yml")
    assert merged.duplicate_keys == () and merged.value["use"] == {"a": 1, "b": 3}
    twice = load_yaml_document(b"base: &b {a: 1}\nuse:\n  <<: *b\n  b: 3\n  b: 4\n", "m.yml")
    (duplicate,) = twice.duplicate_keys
    assert (duplicate.key, duplicate.line, duplicate.first_line) == ("b", 5, 4)
    deep = load_yaml_document(b"x:\n  - y:\n      k: 1\n      k: 2\n", "m.yml")
    (found,) = duplicate_key_diagnostics(b"x:\n  - y:\n      k: 1\n      k: 2\n", deep)
    assert (found.line, found.field, found.message) == (
        4,
        "x[0].y.k",
        "duplicate key `k` (first at line 3)",
    )


def test_a_code_folder_that_is_a_link_to_a_folder_is_named_as_such(tmp_path: Path) -> None:
    tree = on_disk(tmp_path / "repo", files(src__score_dot_py=None, real__score_dot_py=SCORE))
    (tmp_path / "repo" / "src").symlink_to("real")
    errors = disk_errors(tree)
    assert {(e.file, e.field) for e in errors} == {
        ("blue.yml", "code_configuration.code"),
        ("green.yml", "code_configuration.code"),
    }
    assert errors[0].message == (
        "'src' is a symbolic link to the folder 'real': links to folders are not followed"
    )


def _diff_json(repo_root: Path, base: str, head: str) -> tuple[int, dict[str, Any]]:
    from click.testing import CliRunner

    from reconciler.cli import main

    args = ["diff", "--base", base, "--head", head, "--repo", str(repo_root), "--output", "json"]
    result = CliRunner().invoke(main, args)
    return result.exit_code, json.loads(result.output)


def _forget_everything() -> None:
    from reconciler.model import specs

    loading.clear_cache()
    specs._DIGESTS.clear()


def _two_blue_green_endpoints_committed(repo: RepoBuilder) -> None:
    """alpha and beta, each blue 90 / green 10, committed as "base"."""
    repo.basics()
    for name in ("alpha", "beta"):
        repo.endpoint(name, traffic={"blue": 90, "green": 10})
        repo.deployment(name, "blue")
        repo.deployment(name, "green")
    repo.commit("base")


def test_blobs_cached_across_revisions_give_the_plans_and_errors_of_a_cold_load(
    repo: RepoBuilder,
) -> None:
    # Unchanged blobs are parsed and checked once per process, whichever revision reads
    # them first: the plans and errors of warm diffs must be those of cold ones.
    _two_blue_green_endpoints_committed(repo)
    repo.endpoint("beta", traffic={"blue": 50, "green": 50})
    repo.deployment("alpha", "green", instance_count=3)
    repo.deployment("beta", "blue", model="azureml:sklearn-regression:1", description="new")
    repo.commit("change")
    # HEAD only: a file that does not validate, and one that is not even YAML.
    repo.deployment("alpha", "red", instance_count="many")
    repo.write("endpoints/beta/broken.yml", "name: [unclosed\nendpoint_name: beta\n")
    repo.commit("broken")
    cases = [("HEAD~2", "HEAD~1"), ("HEAD~1", "HEAD"), ("HEAD~2", "HEAD"), ("HEAD~2", "HEAD~1")]
    _forget_everything()
    warm = [_diff_json(repo.root, base, head) for base, head in cases]
    cold = []
    for base, head in cases:
        _forget_everything()
        cold.append(_diff_json(repo.root, base, head))
    assert warm == cold
    (code, plan), (broken_code, broken) = cold[0], cold[1]
    assert code == 2
    assert {(s["action"], s["endpoint"], s["deployment"]) for s in plan["steps"]} >= {
        ("scale_deployment", "alpha", "green"),
        ("update_deployment", "beta", "blue"),
        ("set_traffic", "beta", None),
    }
    assert broken_code == 1 and broken["steps"] == []
    where = {(e["file"], e["line"], e["field"]) for e in broken["errors"]}
    red = (repo.root / "endpoints/alpha/red.yml").read_text().splitlines()
    line = next(n for n, text in enumerate(red, 1) if text.startswith("instance_count:"))
    assert ("endpoints/alpha/red.yml", line, "instance_count") in where
    assert any(e["file"] == "endpoints/beta/broken.yml" for e in broken["errors"])


def _counting_diff(
    repo_root: Path, monkeypatch: pytest.MonkeyPatch, base: str = "HEAD~1"
) -> tuple[int, dict[str, Any], dict[str, int], int]:
    """A cold `reconcile diff --base BASE`: its exit code, its JSON, how many times each
    file was parsed, and how many deployment specs were digested."""
    from reconciler.model import specs

    parsed: dict[str, int] = {}
    digested = [0]
    parse, template = loading.load_yaml_document, specs._template_text

    def counting_parse(data: bytes, file: str) -> Any:
        parsed[file] = parsed.get(file, 0) + 1
        return parse(data, file)

    def counting_template(spec: DeploymentSpec) -> str:
        digested[0] += 1
        return template(spec)

    monkeypatch.setattr(loading, "load_yaml_document", counting_parse)
    monkeypatch.setattr(specs, "_template_text", counting_template)
    _forget_everything()
    code, plan = _diff_json(repo_root, base, "HEAD")
    return code, plan, parsed, digested[0]


def test_a_diff_parses_an_unchanged_blob_once_and_digests_only_changed_deployments(
    repo: RepoBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    _two_blue_green_endpoints_committed(repo)
    repo.deployment("alpha", "green", instance_count=3, description="bigger")
    repo.commit("change")
    code, plan, parsed, digested = _counting_diff(repo.root, monkeypatch)
    assert code == 2
    assert [(s["action"], s["endpoint"], s["deployment"]) for s in plan["steps"]] == [
        ("scale_deployment", "alpha", "green"),
        ("update_deployment", "alpha", "green"),
    ]
    # The same blob in BASE and HEAD is parsed (and checked) once; a changed one once per
    # revision. (A conda file is read twice in one revision: as a YAML file, which it finds
    # not ours, and as the conda file an environment names.)
    conda = "environments/conda-sklearn-env-1.yaml"
    assert parsed.pop("endpoints/alpha/green.yml") == 2
    assert parsed.pop(conda) == 2
    assert "endpoints/beta/blue.yml" in parsed and "models/sklearn-regression-1.yml" in parsed
    assert set(parsed.values()) == {1}
    # Only the changed deployment is digested, once on each side: the three unchanged
    # ones are the very same spec objects in both revisions.
    assert digested == 2


def test_a_diff_from_an_invalid_base_still_says_so_and_names_heads_errors(
    repo: RepoBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo.basics()
    repo.endpoint("alpha", traffic={"blue": 100})
    repo.deployment("alpha", "blue")
    repo.deployment("alpha", "green", instance_count="many")  # invalid in BASE and HEAD
    repo.deployment("alpha", "red", instance_count="few")  # invalid in BASE only
    repo.commit("base")
    repo.deployment("alpha", "red")
    repo.commit("red fixed")
    code, plan, parsed, _ = _counting_diff(repo.root, monkeypatch)
    # HEAD's error was found in BASE's load and cached with its blob: still reported with
    # file, line and field, as a cold load of HEAD alone reports it.
    assert code == 1 and plan["steps"] == []
    green = (repo.root / "endpoints/alpha/green.yml").read_text().splitlines()
    line = next(n for n, text in enumerate(green, 1) if text.startswith("instance_count:"))
    assert [(e["file"], e["line"], e["field"]) for e in plan["errors"]] == [
        ("endpoints/alpha/green.yml", line, "instance_count")
    ]
    assert parsed["endpoints/alpha/green.yml"] == 1
    assert parsed["endpoints/alpha/red.yml"] == 2
    # Fixed in HEAD: the plan is made as if nothing of the invalid BASE were applied, and
    # says so.
    repo.deployment("alpha", "green")
    repo.commit("green fixed")
    code, plan, parsed, _ = _counting_diff(repo.root, monkeypatch, base="HEAD~2")
    assert code == 2 and plan["errors"] == []
    assert any(
        "has 2 error(s); planned as if nothing of it" in w["message"] for w in plan["warnings"]
    )
    assert {(s["action"], s["deployment"]) for s in plan["steps"]} >= {
        ("create_endpoint", None),
        ("create_deployment", "green"),
    }
    assert parsed["endpoints/alpha/green.yml"] == 2 and parsed["endpoints/alpha/blue.yml"] == 1


def test_settings_written_alike_are_one_object_and_digest_as_before() -> None:
    from reconciler.model import specs

    tree = files(
        green_dot_yml=deployment("green", extra="liveness_probe:\n  period: 5\n"),
        blue_dot_yml=deployment("blue", extra="liveness_probe:\n  period: 5.0\n"),
    )
    blue, green = load(tree).deployments
    # 5.0 is read as the integer 5 (JSON Schema's integer): the same block, one object.
    assert blue.liveness_probe is green.liveness_probe
    assert blue.readiness_probe is green.readiness_probe
    assert blue.code is green.code  # one code folder, digested once
    digests = [blue.digest, green.digest]
    # Digests as those of specs built afresh, sharing nothing.
    _forget_everything()
    specs._NESTED_TEXTS.clear()
    fresh = [
        replace(
            d,
            liveness_probe=ProbeSettings(**asdict(d.liveness_probe)),
            readiness_probe=ProbeSettings(**asdict(d.readiness_probe)),
            request_settings=RequestSettings(**asdict(d.request_settings)),
            code=replace(d.code) if d.code else None,
        )
        for d in (blue, green)
    ]
    assert [specs._text_digest(specs._template_text(d)) for d in fresh] == digests
    # Equal in Python is not enough: True and 1 differ in JSON, so never one object.
    assert loading._shared(ProbeSettings, {"period": True}) is not loading._shared(
        ProbeSettings, {"period": 1}
    )
    assert loading._shared(ProbeSettings, {"period": 1}) is loading._shared(
        ProbeSettings, {"period": 1}
    )
