"""Azure ML v2 YAML as Azure's own loaders (azure-ai-ml) take it: what they accept loads here.

Each repository below is written for these tests, modelled on the fields the official
azureml-examples samples under cli/endpoints/online/ use (the Kubernetes sample's
`auth_mode: Key`, the Triton sample's `STANDARD_NC4AS_T4_V3`, the curated-environment sample's
registry reference, the data-collector samples...). What Azure refuses is refused here too,
with a message naming file, line and field.
"""

from __future__ import annotations

from collections.abc import Mapping
from textwrap import dedent, indent
from typing import Any

import pytest

from reconciler import loading
from reconciler.filetree import MemoryTree
from reconciler.loading import load_desired_state
from reconciler.model.diagnostics import DesiredStateInvalid, Diagnostic
from reconciler.model.instance_types import (
    DEFAULT_INSTANCE_TYPES,
    KUBERNETES_DEFAULT_INSTANCE_TYPE,
    InstanceType,
    canonical_instance_type,
)
from reconciler.model.specs import spec_dict, to_json
from reconciler.model.state import DesiredState

AZURE = "https://azuremlschemas.azureedge.net/latest/"
SCORE = b"def init():\n    pass\n\n\ndef run(data):\n    return data\n"
CONDA = b"dependencies:\n  - python=3.11\n  - pip:\n      - numpy\n"


def text(block: str) -> bytes:
    return dedent(block).lstrip("\n").encode()


def endpoint(extra: str = "", *, kind: str = "managed", auth_mode: str = "key") -> bytes:
    compute = "compute: azureml:inference-cluster\n" if kind == "kubernetes" else ""
    return (
        text(
            f"""
            $schema: {AZURE}{kind}OnlineEndpoint.schema.json
            name: shop-endpoint
            auth_mode: {auth_mode}
            """
        )
        + compute.encode()
        + text(extra)
    )


def deployment(extra: str = "", *, instance_type: str | None = "Standard_DS3_v2") -> bytes:
    body = text(
        f"""
        $schema: {AZURE}managedOnlineDeployment.schema.json
        name: blue
        endpoint_name: shop-endpoint
        model:
          path: model/weights.bin
        code_configuration:
          code: src
          scoring_script: score.py
        environment:
          image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest
          conda_file: conda.yml
        instance_count: 1
        """
    )
    if instance_type is not None:
        body += f"instance_type: {instance_type}\n".encode()
    return body + text(extra)


def repo(**overrides: bytes | None) -> dict[str, bytes]:
    tree = {
        "endpoint.yml": endpoint(),
        "blue.yml": deployment(),
        "model/weights.bin": b"weights",
        "src/score.py": SCORE,
        "conda.yml": CONDA,
    }
    for name, content in overrides.items():
        path = name.replace("__", "/").replace("_dot_", ".")
        if content is None:
            tree.pop(path, None)
        else:
            tree[path] = content
    return tree


def load(tree: Mapping[str, bytes], **kwargs: Any) -> DesiredState:
    return load_desired_state(MemoryTree(dict(tree)), **kwargs)


def errors_of(tree: Mapping[str, bytes], **kwargs: Any) -> tuple[Diagnostic, ...]:
    with pytest.raises(DesiredStateInvalid) as caught:
        load(tree, **kwargs)
    return caught.value.errors


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    loading.clear_cache()


# --- enumerations are matched as Azure matches them, and normalised -----------------------


@pytest.mark.parametrize(
    ("written", "canonical"),
    [("Key", "key"), ("KEY", "key"), ("AMLToken", "aml_token"), ("aml_token", "aml_token")],
)
def test_auth_mode_is_matched_without_regard_to_case(written: str, canonical: str) -> None:
    state = load(repo(endpoint_dot_yml=endpoint(auth_mode=written)))
    assert state.endpoints[0].auth_mode == canonical


def test_aad_token_in_any_case_gets_the_entra_refusal_not_an_enum_error() -> None:
    (error,) = errors_of(repo(endpoint_dot_yml=endpoint(auth_mode="AADToken")))
    assert (error.file, error.line, error.field) == ("endpoint.yml", 3, "auth_mode")
    assert "Microsoft Entra" in error.message


@pytest.mark.parametrize("written", ["amltoken", "Aml_Token", "token"])
def test_auth_modes_azure_refuses_are_refused(written: str) -> None:
    (error,) = errors_of(repo(endpoint_dot_yml=endpoint(auth_mode=written)))
    assert error.field == "auth_mode"
    assert "key, aml_token, aad_token" in error.message and repr(written) in error.message


def test_other_enumerations_are_matched_without_regard_to_case() -> None:
    tree = repo(
        endpoint_dot_yml=endpoint(
            """
            public_network_access: Disabled
            identity:
              type: SystemAssigned
            """
        ),
        blue_dot_yml=deployment(
            """
            type: Managed
            egress_public_network_access: Disabled
            scale_settings:
              type: TargetUtilization
              max_instances: 3
            data_collector:
              rolling_rate: Hour
              collections:
                model_inputs:
                  enabled: 'True'
            """
        ).replace(
            b"  path: model/weights.bin\n", b"  path: model/weights.bin\n  type: Custom_Model\n"
        ),
    )
    state = load(tree)
    (shop,) = state.endpoints
    (blue,) = state.deployments
    assert shop.public_network_access == "disabled"
    assert shop.identity is not None and '"system_assigned"' in shop.identity
    assert blue.flavor == "managed"
    assert blue.egress_public_network_access == "disabled"
    assert blue.scale_settings.type == "target_utilization"
    assert blue.scale_settings.max_instances == 3
    assert blue.model is not None and blue.model.type == "custom_model"
    assert blue.data_collector is not None and '"hour"' in blue.data_collector


def test_type_kubernetes_in_any_case_selects_the_kubernetes_variant() -> None:
    tree = repo(
        endpoint_dot_yml=endpoint(kind="kubernetes"),
        blue_dot_yml=deployment("type: Kubernetes\n", instance_type=None),
    )
    (blue,) = load(tree).deployments
    assert blue.flavor == "kubernetes"


# --- instance types ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("STANDARD_NC4AS_T4_V3", "Standard_NC4as_T4_v3"),
        ("standard_ds3_v2", "Standard_DS3_v2"),
        ("Standard_D2as_v4", "Standard_D2as_v4"),
        ("STANDARD_NV36ADMS_A10_V5", "Standard_NV36adms_A10_v5"),
    ],
)
def test_instance_types_are_matched_without_regard_to_case(written: str, canonical: str) -> None:
    (blue,) = load(repo(blue_dot_yml=deployment(instance_type=written))).deployments
    assert blue.instance_type == canonical


def test_the_table_holds_every_sku_azure_lists_for_managed_online_endpoints() -> None:
    # Azure's "Managed online endpoints SKU list": 85 sizes; a few rows checked in full.
    assert len(DEFAULT_INSTANCE_TYPES) == 85
    assert DEFAULT_INSTANCE_TYPES["Standard_D2as_v4"] == InstanceType("Standard_D2as_v4", 2, 8)
    assert DEFAULT_INSTANCE_TYPES["Standard_F72s_v2"] == InstanceType("Standard_F72s_v2", 72, 144)
    assert DEFAULT_INSTANCE_TYPES["Standard_NC64as_T4_v3"].gpus == 4
    assert DEFAULT_INSTANCE_TYPES["Standard_ND96isr_H100_v5"].gpus == 8
    assert DEFAULT_INSTANCE_TYPES["Standard_FX48mds"].memory_gb == 1008
    for name, row in DEFAULT_INSTANCE_TYPES.items():
        assert row.name == name and row.cores > 0 and row.memory_gb > 0


def test_a_size_azure_does_not_list_is_still_an_error_with_close_names() -> None:
    (error,) = errors_of(repo(blue_dot_yml=deployment(instance_type="Standard_DS3_v9")))
    assert (error.file, error.field) == ("blue.yml", "instance_type")
    assert "unknown instance type 'Standard_DS3_v9'" in error.message
    assert "Standard_DS3_v2" in error.message


@pytest.mark.parametrize("written", ["Standard_DS3v2", "standard-ds3-v2", "Standard_DS3_v3"])
def test_an_instance_type_close_to_a_valid_one_gets_it_as_did_you_mean(written: str) -> None:
    (error,) = errors_of(repo(blue_dot_yml=deployment(instance_type=written)))
    assert f"unknown instance type '{written}' (did you mean 'Standard_DS3_v2'?)" in error.message


def test_canonical_instance_type_prefers_an_exact_entry_of_the_table() -> None:
    table = {"gpu-small": InstanceType("gpu-small", 4, 16, 1)}
    assert canonical_instance_type("GPU-Small", table) == "gpu-small"
    assert canonical_instance_type("gpu-large", table) is None


def test_kubernetes_defaultinstancetype_is_always_valid_on_kubernetes() -> None:
    tree = repo(
        endpoint_dot_yml=endpoint(kind="kubernetes"),
        blue_dot_yml=deployment("type: kubernetes\n", instance_type="defaultinstancetype"),
    )
    (blue,) = load(tree, instance_types={}).deployments
    assert blue.instance_type == KUBERNETES_DEFAULT_INSTANCE_TYPE
    (blue,) = load(
        {
            **tree,
            "blue.yml": tree["blue.yml"].replace(b"defaultinstancetype", b"DefaultInstanceType"),
        }
    ).deployments
    assert blue.instance_type == KUBERNETES_DEFAULT_INSTANCE_TYPE


def test_defaultinstancetype_is_not_a_managed_size() -> None:
    (error,) = errors_of(repo(blue_dot_yml=deployment(instance_type="defaultinstancetype")))
    assert error.field == "instance_type"
    assert "Kubernetes" in error.message


# --- every field of Azure's schemas is accepted -------------------------------------------


def test_properties_are_accepted_on_endpoints_deployments_and_inline_models() -> None:
    tree = repo(
        endpoint_dot_yml=endpoint("properties:\n  owner: shop-team\n  tier: 1\n"),
        blue_dot_yml=deployment("properties:\n  ticket: ML-12\n").replace(
            b"  path: model/weights.bin\n",
            b"  path: model/weights.bin\n  properties:\n    framework: sklearn\n",
        ),
    )
    state = load(tree)
    (shop,) = state.endpoints
    (blue,) = state.deployments
    assert shop.properties == (("owner", "shop-team"), ("tier", "1"))
    assert blue.properties == (("ticket", "ML-12"),)
    assert blue.model is not None and blue.model.properties == (("framework", "sklearn"),)
    assert state.warnings == ()


def test_properties_stay_out_of_the_digest_when_absent() -> None:
    # Specs gained `properties`: a deployment that has none keeps the digest it had, so
    # upgrading the reconciler restarts nothing.
    (blue,) = load(repo()).deployments
    assert "properties" not in spec_dict(blue)
    assert blue.model is not None and "properties" not in to_json(blue.model)


def test_fields_azure_reports_but_never_reads_are_accepted_with_a_warning() -> None:
    tree = repo(
        endpoint_dot_yml=endpoint(
            """
            id: /subscriptions/0/resourceGroups/rg/providers/x/onlineEndpoints/shop-endpoint
            location: westeurope
            provisioning_state: Succeeded
            scoring_uri: https://shop-endpoint.westeurope.inference.ml.azure.com/score
            openapi_uri: https://shop-endpoint.westeurope.inference.ml.azure.com/swagger.json
            kind: Managed
            """
        ),
        blue_dot_yml=deployment(
            """
            id: /subscriptions/0/x/deployments/blue
            provisioning_state: Succeeded
            private_network_connection: false
            """
        ),
    )
    state = load(tree)
    fields = {(w.file, w.field) for w in state.warnings}
    for field in ("id", "location", "provisioning_state", "scoring_uri", "openapi_uri", "kind"):
        assert ("endpoint.yml", field) in fields
    for field in ("id", "provisioning_state", "private_network_connection"):
        assert ("blue.yml", field) in fields
    assert all("no effect" in w.message for w in state.warnings)


def test_model_and_environment_files_accept_azures_fields() -> None:
    model = text(
        f"""
        $schema: {AZURE}model.schema.json
        name: shop-model
        version: 3
        path: ../model/weights.bin
        type: MLFlow_Model
        stage: Production
        flavors:
          python_function: {{loader_module: mlflow.sklearn}}
        datastore: workspaceblobstore
        properties:
          source: training-run-7
        """
    )
    environment = text(
        f"""
        $schema: {AZURE}environment.schema.json
        name: shop-env
        version: 2
        image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04
        conda_file: ../conda.yml
        os_type: Linux
        datastore: workspaceblobstore
        """
    )
    tree = repo(
        models__shop_dot_yml=model,
        envs__shop_dot_yml=environment,
        blue_dot_yml=deployment()
        .replace(b"model:\n  path: model/weights.bin\n", b"model: azureml:shop-model:3\n")
        .replace(
            b"environment:\n  image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest\n"
            b"  conda_file: conda.yml\n",
            b"environment: azureml:shop-env@latest\n",
        ),
    )
    (blue,) = load(tree).deployments
    assert blue.model is not None and blue.model.type == "mlflow_model"
    assert blue.model.properties == (("source", "training-run-7"),)
    assert blue.environment.name == "shop-env" and blue.environment.version == "2"


def test_a_user_assigned_identity_may_carry_its_client_and_principal_ids() -> None:
    tree = repo(
        endpoint_dot_yml=endpoint(
            """
            identity:
              type: user_assigned
              principal_id: 11111111-0000-0000-0000-000000000000
              tenant_id: 22222222-0000-0000-0000-000000000000
              user_assigned_identities:
                - resource_id: /subscriptions/0/resourceGroups/rg/providers/x/uai
                  client_id: 33333333-0000-0000-0000-000000000000
            """
        )
    )
    (shop,) = load(tree).endpoints
    assert shop.identity is not None and "33333333" in shop.identity


# --- registry references -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "reference"),
    [
        ("environment", "azureml://registries/azureml/environments/sklearn-1.5/labels/latest"),
        ("environment", "azureml://registries/azureml/environments/sklearn-1.5/versions/3"),
        ("model", "azureml://registries/azureml/models/distilbert-base-uncased/versions/12"),
    ],
)
def test_a_registry_reference_says_registries_are_not_available_and_what_to_do(
    field: str, reference: str
) -> None:
    blue = deployment()
    if field == "environment":
        blue = blue.replace(
            b"environment:\n  image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest\n"
            b"  conda_file: conda.yml\n",
            f"environment: {reference}\n".encode(),
        )
    else:
        blue = blue.replace(
            b"model:\n  path: model/weights.bin\n", f"model: {reference}\n".encode()
        )
    (error,) = errors_of(repo(blue_dot_yml=blue))
    assert (error.file, error.field) == ("blue.yml", field)
    assert error.line is not None
    assert "registry" in error.message and "not available" in error.message
    assert "azureml:NAME:VERSION" not in error.message.split(";")[0]
    name = reference.split("/")[5]
    assert f"name: {name}" in error.message and f"azureml:{name}" in error.message


def test_a_registry_model_with_no_environment_is_one_error_not_also_a_missing_environment() -> None:
    # The shape of Azure's foundation-model samples (cli/foundation-models/**/deploy.yml, the
    # model given by `--set model=azureml://registries/...`): no environment, no code, since
    # the registry's model says what serves it. Its type is unknown here, so "environment
    # missing" would be a guess; the registry error alone says what to do.
    blue = text(
        f"""
        $schema: {AZURE}managedOnlineDeployment.schema.json
        name: demo
        endpoint_name: shop-endpoint
        model: azureml://registries/azureml/models/gpt2/versions/7
        instance_type: Standard_DS3_v2
        instance_count: 1
        request_settings:
          request_timeout_ms: 60000
        """
    )
    (error,) = errors_of(repo(blue_dot_yml=blue))
    assert (error.file, error.line, error.field) == ("blue.yml", 4, "model")
    assert "registry 'azureml'" in error.message and "name: gpt2" in error.message


# --- what Azure refuses is refused --------------------------------------------------------


def _collector(block: str) -> bytes:
    return deployment("data_collector:\n" + indent(dedent(block), "  "))


@pytest.mark.parametrize(
    ("block", "field", "words"),
    [
        (
            """\
              collections:
                model_inputs:
                  enabled: 'True'
                  data:
                    name: shop_inputs
                    path: azureml://datastores/workspaceblobstore/paths/shop/inputs
                    version: 1
            """,
            "data_collector.collections.model_inputs.data.version",
            "quote it",
        ),
        (
            """\
              collections:
                request:
                  enabled: true
            """,
            "data_collector.collections.request.enabled",
            "'True' or 'False'",
        ),
        ("  sampling_rate: 2\n", "data_collector.sampling_rate", "at most 1"),
        ("  rolling_rate: week\n", "data_collector.rolling_rate", "minute, hour, day"),
    ],
)
def test_data_collector_values_azure_refuses_are_refused(
    block: str, field: str, words: str
) -> None:
    (error,) = errors_of(repo(blue_dot_yml=_collector(block)))
    assert (error.file, error.field) == ("blue.yml", field)
    assert error.line is not None
    assert words in error.message


def test_data_collector_fields_azure_accepts_are_accepted() -> None:
    blue = _collector(
        """\
          collections:
            request:
              enabled: 'True'
              data: azureml:shop-requests:1
              client_id: 33333333-0000-0000-0000-000000000000
            model_outputs:
              enabled: 'false'
              data:
                name: shop_outputs
                version: '1'
                data_id: abc
          rolling_rate: hour
          sampling_rate: 0.5
          request_logging:
            capture_headers: [x-request-id]
        """
    )
    state = load(repo(blue_dot_yml=blue))
    assert [w.field for w in state.warnings] == ["data_collector"]


# --- environment images are keyed by what a conda file says, not how it is laid out -------


def test_conda_files_differing_only_in_layout_and_comments_give_one_environment() -> None:
    relaid = b"# the shop's packages\ndependencies: [python=3.11,   {pip: [numpy]}]   # pinned\n"
    green = deployment().replace(b"name: blue", b"name: green").replace(b"conda.yml", b"b.yml")
    tree = repo(b_dot_yml=relaid, green_dot_yml=green)
    blue, green_spec = load(tree).deployments[0], load(tree).deployments[1]
    assert blue.environment.conda_file == "conda.yml"
    assert green_spec.environment.conda_file == "b.yml"
    assert blue.environment.digest == green_spec.environment.digest
    changed = repo(b_dot_yml=relaid.replace(b"numpy", b"pandas"), green_dot_yml=green)
    assert load(changed).deployments[1].environment.digest != blue.environment.digest


def test_a_reference_to_an_undeclared_asset_says_how_to_declare_it() -> None:
    blue = deployment().replace(
        b"model:\n  path: model/weights.bin\n", b"model: azureml:iris_mlflow_model@latest\n"
    )
    (error,) = errors_of(repo(blue_dot_yml=blue))
    assert (error.file, error.line, error.field) == ("blue.yml", 4, "model")
    assert "is not declared in this repository" in error.message
    assert "declare it with a model file" in error.message
    assert "registered in an Azure ML workspace are not available here" in error.message
    assert "name: iris_mlflow_model" in error.message


def test_kubernetes_resources_take_azures_gpu_as_nvidia_com_gpu() -> None:
    tree = repo(
        endpoint_dot_yml=endpoint(kind="kubernetes"),
        blue_dot_yml=deployment(
            """
            type: kubernetes
            resources:
              requests: {cpu: "1", memory: 2Gi, gpu: "1"}
              limits: {gpu: "1"}
            """,
            instance_type=None,
        ),
    )
    (blue,) = load(tree).deployments
    assert blue.resources is not None
    assert dict(blue.resources.requests) == {"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": "1"}
    assert dict(blue.resources.limits) == {"nvidia.com/gpu": "1"}
