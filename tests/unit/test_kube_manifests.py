"""Manifests of the Kubernetes target: valid against the official schemas of two
Kubernetes versions (kubernetes-validate, strict: unknown fields are errors), deterministic,
and saying what the specs say.

HTTPRoute is a CRD (Gateway API) that kubernetes-validate does not ship: its manifests are
checked field by field here instead of against a schema.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest
import yaml
from specs_factory import deployment, endpoint

from reconciler.endpoints.credentials import EndpointCredentials
from reconciler.filetree import MemoryTree
from reconciler.loading import load_desired_state
from reconciler.model.codec import deployment_from_json, endpoint_from_json
from reconciler.model.specs import (
    EnvironmentSpec,
    InferenceConfig,
    ModelSpec,
    Resources,
    Route,
    ScaleSettings,
    ShadowTolerance,
    weights,
)
from reconciler.model.state import DesiredState
from reconciler.nocode.triton import triton_environment
from reconciler.router.config import ShadowComparison, dump_config, parse_config
from reconciler.targets.kubernetes import manifests as m
from reconciler.targets.kubernetes.options import GatewayRef, KubernetesOptions

kubernetes_validate = pytest.importorskip("kubernetes_validate")
VERSIONS = ("1.29.0", "1.33.0")
CREDS = EndpointCredentials(
    "primary-key", "secondary-key", "c2VjcmV0LXRva2VuLWJ5dGVzLTEyMzQ", "admin", 0, 0
)
OPTIONS = KubernetesOptions(name="cluster", namespace="ml", registry="127.0.0.1:5000/ml")
CTX = m.RenderContext("ml", OPTIONS, "127.0.0.1:5000/ml/reconciler-router:abc")
GATEWAY_CTX = m.RenderContext(
    "ml",
    replace(OPTIONS, router="gateway-api", gateway=GatewayRef("gw", "gateway-system")),
    "unused",
)

CUSTOM = EnvironmentSpec(
    name="custom",
    version="1",
    image="example.invalid/server:2",
    inference_config=InferenceConfig(
        Route(8000, "/live"), Route(8000, "/ready"), Route(8000, "/p")
    ),
    digest="sha256:x",
)


def _desired() -> DesiredState:
    return DesiredState(
        endpoints=(
            endpoint(
                "ep", {"blue": 80, "green": 20}, mirror=None, public_network_access="disabled"
            ),
            endpoint("Other-Ep", {"main": 100}, mirror=None, auth_mode="aml_token"),
        ),
        deployments=(
            deployment("blue", "ep", instance_count=3, egress_public_network_access="disabled"),
            deployment(
                "green",
                "ep",
                instance_type="Standard_NC6s_v3",
                scale_settings=ScaleSettings("target_utilization", 2, 6, 50, 1),
            ),
            deployment(
                "main",
                "Other-Ep",
                environment=CUSTOM,
                code=None,
                model_mount_path="/models",
                resources=Resources(requests=(("cpu", "500m"),), limits=(("memory", "1Gi"),)),
            ),
        ),
    )


def _all(ctx: m.RenderContext = CTX) -> list[dict[str, Any]]:
    desired = _desired()
    return m.render_desired(ctx, desired, credentials={e.name: CREDS for e in desired.endpoints})


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_for_two_kubernetes_versions(version: str) -> None:
    manifests = _all() + [d for d in _all(GATEWAY_CTX) if d["kind"] != "HTTPRoute"]
    kinds = {d["kind"] for d in manifests}
    assert kinds == {
        "Secret",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    }
    for manifest in manifests:
        kubernetes_validate.validate(manifest, version, strict=True)


def test_render_is_deterministic_and_names_are_dns_labels() -> None:
    first, second = _all(), _all()
    assert json.dumps(first) == json.dumps(second)
    for manifest in first:
        name = manifest["metadata"]["name"]
        assert len(name) <= 63 and name == name.lower()
    names = [m.object_key(d) for d in first]
    assert len(names) == len(set(names))


def test_names_of_look_alike_pairs_differ() -> None:
    assert m.deployment_object_name("a-b", "cde") != m.deployment_object_name("a", "b-cde")
    assert m.dns_name("My-Ep") != m.dns_name("my-ep")
    long = m.deployment_object_name("e" * 32, "d" * 32)
    assert len(long) <= 63


def _find(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in manifests if d["kind"] == kind and d["metadata"]["name"] == name)


def test_deployment_carries_spec_digest_probes_resources_and_contract_variables() -> None:
    manifests = _all()
    blue_spec = _desired().deployments[0]
    blue = _find(manifests, "Deployment", m.deployment_object_name("ep", "blue"))
    meta = blue["metadata"]
    assert meta["labels"][m.MANAGED_BY] == "ml-endpoint-reconciler"
    assert meta["labels"][m.ENDPOINT_LABEL] == "ep"
    assert meta["labels"][m.DEPLOYMENT_LABEL] == "blue"
    assert meta["annotations"][m.DIGEST_ANNOTATION] == blue_spec.digest
    recorded = deployment_from_json(json.loads(meta["annotations"][m.SPEC_ANNOTATION]))
    assert recorded.digest == blue_spec.digest and recorded.instance_count == 3
    spec = blue["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": "20%", "maxUnavailable": 0}
    assert spec["template"]["metadata"]["annotations"] == {m.DIGEST_ANNOTATION: blue_spec.digest}
    (container,) = spec["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["AZUREML_MODEL_DIR"] == "/var/azureml-app/azureml-models/m/1"
    assert env["AZUREML_ENTRY_SCRIPT"] == "score.py"
    assert env["AML_APP_ROOT"] == "/var/azureml-app/src"
    assert env["WORKER_COUNT"] == "1"
    assert container["resources"]["limits"] == {"cpu": "4000m", "memory": "14336Mi"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/", "port": 5001}
    assert container["readinessProbe"]["failureThreshold"] == 30
    assert container["image"].startswith("127.0.0.1:5000/ml/reconciler-app:")


def test_user_variables_override_ours_and_gpus_are_limits() -> None:
    spec = deployment(
        "gpu",
        "ep",
        instance_type="Standard_NC12s_v3",
        environment_variables=(("WORKER_COUNT", "8"), ("EXTRA", "1")),
    )
    (manifest, *_) = m.deployment_manifests(
        CTX, spec, replicas=1, image=m.plan_image(spec, OPTIONS)
    )
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["WORKER_COUNT"] == "8" and env["EXTRA"] == "1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_autoscaled_deployment_leaves_replicas_to_its_hpa() -> None:
    manifests = _all()
    name = m.deployment_object_name("ep", "green")
    green = _find(manifests, "Deployment", name)
    assert "replicas" not in green["spec"]
    hpa = _find(manifests, "HorizontalPodAutoscaler", name)
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["scaleTargetRef"]["name"] == name
    # The router lists as many slots as the autoscaler may run instances.
    service = _find(manifests, "Service", name)
    assert len(service["spec"]["ports"]) == 6


def test_custom_container_runs_its_own_image_with_its_routes() -> None:
    manifests = _all()
    main = _find(manifests, "Deployment", m.deployment_object_name("Other-Ep", "main"))
    pod = main["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "example.invalid/server:2"
    assert container["ports"][0]["containerPort"] == 8000
    assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": 8000}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8000}
    assert container["resources"] == {"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}}
    assert {e["name"] for e in container["env"]} == {"AZUREML_MODEL_DIR"}
    init = pod["initContainers"][0]
    assert init["image"].startswith("127.0.0.1:5000/ml/reconciler-model:")
    assert container["volumeMounts"][0]["mountPath"] == "/models"


def test_router_config_secret_holds_hashes_routes_and_traffic() -> None:
    manifests = _all()
    secret = _find(manifests, "Secret", m.router_config_name("ep"))
    config = parse_config(base64.b64decode(secret["data"][m.ROUTER_CONFIG_FILE]))
    assert config.traffic == (("blue", 80), ("green", 20))
    assert "primary-key" not in json.dumps(manifests[2:])
    blue = config.deployment("blue")
    assert blue is not None
    service = m.deployment_object_name("ep", "blue")
    assert blue.instances == tuple(f"{service}.ml.svc:{5001 + i}" for i in range(3))
    keys = _find(manifests, "Secret", m.keys_secret_name("ep"))
    assert m.credentials_from_secret(keys["data"]) == replace(CREDS, port=8080, metrics_port=9090)
    router = _find(manifests, "Deployment", m.router_name("ep"))
    container = router["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/opt/venv/bin/python", "-m", "reconciler.router"]
    assert container["args"] == ["--config", "/etc/reconciler-router/router.json"]


def test_private_endpoint_gets_network_policies() -> None:
    manifests = _all()
    ingress = _find(manifests, "NetworkPolicy", m.ingress_policy_name("ep"))
    assert ingress["spec"]["ingress"] == [{"from": [{"podSelector": {}}]}]
    egress = _find(manifests, "NetworkPolicy", m.egress_policy_name("ep", "blue"))
    assert egress["spec"]["policyTypes"] == ["Egress"]
    assert not any(
        d["kind"] == "NetworkPolicy" and d["metadata"]["labels"][m.ENDPOINT_LABEL] == "Other-Ep"
        for d in manifests
    )


def test_http_route_weights_mirror_pins_and_round_trip() -> None:
    names = [f"d{i:02d}" for i in range(20)]
    routes = m.http_route_manifests(
        GATEWAY_CTX,
        "ep",
        deployments=names,
        traffic=weights({"d00": 70, "d01": 30}),
        mirror_traffic=weights({"d02": 10}),
    )
    # 16 rules at most per HTTPRoute: the pins spill into a second route.
    assert [len(r["spec"]["rules"]) for r in routes] == [16, 5]
    for route in routes:
        assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
        assert route["spec"]["parentRefs"] == [
            {
                "group": "gateway.networking.k8s.io",
                "kind": "Gateway",
                "name": "gw",
                "namespace": "gateway-system",
            }
        ]
    weighted = routes[0]["spec"]["rules"][0]
    assert [b["weight"] for b in weighted["backendRefs"]] == [70, 30]
    assert weighted["filters"][0]["requestMirror"]["percent"] == 10
    services = {m.deployment_object_name("ep", n): n for n in names}
    assert m.route_traffic(routes[0], services) == (
        (("d00", 70), ("d01", 30)),
        (("d02", 10),),
    )
    pins = [
        r for route in routes for r in route["spec"]["rules"][(1 if route is routes[0] else 0) :]
    ]
    assert [p["matches"][0]["headers"][0]["value"] for p in pins] == names


def test_a_custom_container_with_code_gets_a_thin_layer() -> None:
    spec = deployment("main", "ep", environment=CUSTOM)
    planned = m.plan_image(spec, OPTIONS)
    assert planned.built and planned.model_image is None
    assert planned.image.startswith("127.0.0.1:5000/ml/reconciler-app:")


def test_image_tags_are_content_addresses() -> None:
    spec = deployment("blue", "ep")
    same = replace(spec, instance_count=9, liveness_probe=replace(spec.liveness_probe, period=3))
    assert m.plan_image(spec, OPTIONS) == m.plan_image(same, OPTIONS)
    from reconciler.model.specs import CodeSpec

    new_code = replace(spec, code=CodeSpec("src", "score.py", digest="sha256:c2"))
    assert m.plan_image(new_code, OPTIONS) != m.plan_image(spec, OPTIONS)
    other_base = replace(OPTIONS, base_image="python:3.12")
    assert m.plan_image(spec, other_base) != m.plan_image(spec, OPTIONS)
    local = m.plan_image(spec, replace(OPTIONS, registry=None))
    assert local.image.startswith("reconciler-app:")


def test_rendered_yaml_is_plain_and_loads_back_equal() -> None:
    """PyYAML writes a dict used twice (a label map) as an anchor and an alias
    (`&id001` / `*id001`); render writes it out each time."""
    from reconciler.targets.kubernetes.render import dump_manifests

    for documents in (_all(), _all(GATEWAY_CTX)):
        text = dump_manifests(documents)
        events = list(yaml.parse(text))
        assert not [e for e in events if isinstance(e, yaml.AliasEvent)]
        assert not [e for e in events if getattr(e, "anchor", None) is not None]
        assert "&id0" not in text and "*id0" not in text
        assert list(yaml.safe_load_all(text)) == documents


def test_render_without_credentials_has_no_secret_and_names_those_left_out() -> None:
    from reconciler.targets.kubernetes.render import secret_names

    desired = _desired()
    plain = m.render_desired(CTX, desired, credentials=None)
    assert "Secret" not in {d["kind"] for d in plain}
    assert "primary-key" not in json.dumps(plain)
    assert secret_names(desired, OPTIONS) == [
        (m.keys_secret_name("Other-Ep"), "keys of endpoint Other-Ep"),
        (m.router_config_name("Other-Ep"), "router config of Other-Ep"),
        (m.keys_secret_name("ep"), "keys of endpoint ep"),
        (m.router_config_name("ep"), "router config of ep"),
    ]
    # With the Gateway API there is no router, so no router config Secret.
    gateway = [name for name, _ in secret_names(desired, GATEWAY_CTX.options)]
    assert gateway == [m.keys_secret_name("Other-Ep"), m.keys_secret_name("ep")]


# --- secret references: secretKeyRefs to connection Secrets the target never writes -------


def test_secret_references_render_as_secret_key_refs_to_connection_secrets() -> None:
    variables = (
        ("API_KEY", "${{azureml://connections/OpenAI_Prod/credentials/api-key}}"),
        ("API_URL", "${{azureml://connections/openai/target}}"),
        ("API_VERSION", "${{azureml://connections/openai/metadata/ApiVersion}}"),
        ("MIXED", "Bearer ${{azureml://connections/openai/target}}"),
        ("PLAIN", "p"),
    )
    desired = DesiredState(
        endpoints=(endpoint("ep", {"blue": 100}, mirror=None),),
        deployments=(deployment("blue", "ep", environment_variables=variables),),
    )
    manifests = m.render_desired(CTX, desired, credentials={"ep": CREDS})
    name = m.deployment_object_name("ep", "blue")
    (container,) = _find(manifests, "Deployment", name)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    prod = m.connection_secret_name("OpenAI_Prod")
    assert prod.startswith("conn-openai-prod-") and prod != m.connection_secret_name("openai-prod")
    assert m.connection_secret_name("openai") == "conn-openai"
    assert m.connection_secret_name("a.b-").startswith("conn-a-b-")
    assert env["API_KEY"] == {
        "name": "API_KEY",
        "valueFrom": {"secretKeyRef": {"name": prod, "key": "api-key"}},
    }
    assert env["API_URL"]["valueFrom"]["secretKeyRef"] == {"name": "conn-openai", "key": "target"}
    assert env["API_VERSION"]["valueFrom"]["secretKeyRef"] == {
        "name": "conn-openai",
        "key": "metadata.ApiVersion",
    }
    # Only a whole-value reference is one (as in Azure ML); the rest are plain values.
    assert env["MIXED"] == {"name": "MIXED", "value": variables[3][1]}
    assert env["PLAIN"] == {"name": "PLAIN", "value": "p"}
    # The target writes no Secret of a connection.
    assert not [
        d
        for d in manifests
        if d["kind"] == "Secret" and d["metadata"]["name"] in {prod, "conn-openai"}
    ]
    assert m.connection_secrets(desired) == [
        ("conn-openai", ("metadata.ApiVersion", "target")),
        (prod, ("api-key",)),
    ]
    for version in VERSIONS:
        for manifest in manifests:
            kubernetes_validate.validate(manifest, version, strict=True)


def test_render_names_the_connection_secrets_that_must_exist() -> None:
    from reconciler.targets.kubernetes.render import render_yaml

    variables = (("API_KEY", "${{azureml://connections/openai/credentials/api-key}}"),)
    desired = DesiredState(
        endpoints=(endpoint("ep", {"blue": 100}, mirror=None),),
        deployments=(deployment("blue", "ep", environment_variables=variables),),
    )
    text = render_yaml(desired, OPTIONS, namespace=None, secrets=False)
    header = text.split("\n---", 1)[0]
    assert "# - conn-openai (keys: api-key)" in header
    assert "never writes them" in header


BYOC_DEPLOYMENT = b"""\
$schema: https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json
name: byoc
endpoint_name: byoc-ep
model: {name: weights, version: 3, path: models/weights}
model_mount_path: /srv/models
environment_variables: {GREETING: hello, WORKER_COUNT: "7"}
environment:
  build: {path: server, dockerfile_path: docker/serve.Dockerfile}
  inference_config:
    liveness_route: {port: 8082, path: /healthz}
    readiness_route: {port: 8081, path: /v1/ready}
    scoring_route: {port: 8081, path: /v1/predict}
instance_type: Standard_DS2_v2
readiness_probe:
  {initial_delay: 4, period: 3, timeout: 2, success_threshold: 2, failure_threshold: 5}
liveness_probe: {initial_delay: 20, period: 7, timeout: 3, failure_threshold: 6}
"""
BYOC_ENDPOINT = b"""\
$schema: https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json
name: byoc-ep
traffic: {byoc: 100}
"""


def _byoc(deployment_yaml: bytes = BYOC_DEPLOYMENT) -> tuple[DesiredState, list[dict[str, Any]]]:
    tree = MemoryTree(
        {
            "endpoint.yml": BYOC_ENDPOINT,
            "byoc.yml": deployment_yaml,
            "server/docker/serve.Dockerfile": b"FROM python:3.11-slim\nCOPY app.py /srv/\n",
            "server/app.py": b"print('serving')\n",
            "models/weights/w.txt": b"0.25 0.75\n",
        }
    )
    desired = load_desired_state(tree)
    creds = {e.name: CREDS for e in desired.endpoints}
    return desired, m.render_desired(CTX, desired, credentials=creds)


def test_a_custom_container_from_yaml_renders_its_routes_probe_settings_variables_and_model() -> (
    None
):
    desired, manifests = _byoc()
    name = m.deployment_object_name("byoc-ep", "byoc")
    pod = _find(manifests, "Deployment", name)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # The build context is built and pushed, model inside (no init container needed).
    assert container["image"].startswith("127.0.0.1:5000/ml/reconciler-app:")
    assert "initContainers" not in pod
    assert container["ports"] == [{"name": "http", "containerPort": 8081, "protocol": "TCP"}]
    # Each probe on its own route and port, with the deployment's settings (Azure's).
    assert container["readinessProbe"] == {
        "httpGet": {"path": "/v1/ready", "port": 8081},
        "initialDelaySeconds": 4,
        "periodSeconds": 3,
        "timeoutSeconds": 2,
        "successThreshold": 2,
        "failureThreshold": 5,
    }
    assert container["livenessProbe"] == {
        "httpGet": {"path": "/healthz", "port": 8082},
        "initialDelaySeconds": 20,
        "periodSeconds": 7,
        "timeoutSeconds": 3,
        "successThreshold": 1,
        "failureThreshold": 6,
    }
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"AZUREML_MODEL_DIR": "/srv/models", "GREETING": "hello", "WORKER_COUNT": "7"}
    # The Service sends the router's requests to the scoring port; the router asks the
    # scoring path; readiness is the kubelet's (no router checks on Kubernetes).
    service = _find(manifests, "Service", name)
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http"}
    secret = _find(manifests, "Secret", m.router_config_name("byoc-ep"))
    route = parse_config(base64.b64decode(secret["data"][m.ROUTER_CONFIG_FILE])).deployment("byoc")
    assert route is not None and route.scoring_path == "/v1/predict"
    assert route.readiness_probe is None and route.liveness_probe is None
    for version in VERSIONS:
        kubernetes_validate.validate(_find(manifests, "Deployment", name), version, strict=True)
    # Where the model goes is part of the image: another mount path is another image.
    (spec,) = desired.deployments
    moved = replace(spec, model_mount_path="/opt/model")
    assert m.plan_image(moved, OPTIONS).image != m.plan_image(spec, OPTIONS).image


def test_a_custom_image_gets_its_model_at_the_mount_path_through_an_init_container() -> None:
    yaml_text = BYOC_DEPLOYMENT.replace(
        b"  build: {path: server, dockerfile_path: docker/serve.Dockerfile}\n",
        b"  image: registry.example/server:7\n",
    )
    _, manifests = _byoc(yaml_text)
    pod = _find(manifests, "Deployment", m.deployment_object_name("byoc-ep", "byoc"))["spec"][
        "template"
    ]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/server:7"  # runs as it is
    (init,) = pod["initContainers"]
    assert init["image"].startswith("127.0.0.1:5000/ml/reconciler-model:")
    # The model image holds the files at the mount path (the folder keeps its name there);
    # the init container copies them into the volume mounted there.
    assert init["command"] == ["/bin/sh", "-c", "cp -a /srv/models/. /mnt/model/"]
    assert container["volumeMounts"] == [
        {"name": "model", "mountPath": "/srv/models", "readOnly": True}
    ]


def test_a_no_code_triton_deployment_renders_with_tritons_port_and_probes() -> None:
    # The same image as on Docker (the builder is shared): tritonserver on 8000, probed at
    # its KServe v2 health paths; the router sends /v2 requests to the Service as they are.
    model = ModelSpec("tiny", "1", "models/triton", type="triton_model", digest="sha256:m")
    triton = deployment("tri", "ep", code=None, model=model, environment=triton_environment(model))
    desired = DesiredState(endpoints=(endpoint("ep", {"tri": 100}),), deployments=(triton,))
    manifests = m.render_desired(CTX, desired, credentials={"ep": CREDS})
    for manifest in manifests:
        kubernetes_validate.validate(manifest, VERSIONS[-1], strict=True)
    found = _find(manifests, "Deployment", m.deployment_object_name("ep", "tri"))
    (container,) = found["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("127.0.0.1:5000/ml/reconciler-app:")
    assert container["ports"][0]["containerPort"] == 8000
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8000}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8000}
    secret = _find(manifests, "Secret", m.router_config_name("ep"))
    route = parse_config(base64.b64decode(secret["data"][m.ROUTER_CONFIG_FILE])).deployment("tri")
    assert route is not None and route.liveness_path == "/v2/health/live"


def test_the_routers_shadow_comparison_follows_the_endpoints_tolerance() -> None:
    tolerance = ShadowTolerance(rtol=0.01, atol=0.5, max_body_bytes=4096)
    config = m.router_config(replace(endpoint("ep"), shadow_comparison=tolerance), CREDS)
    assert config.shadow_comparison == ShadowComparison(0.01, 0.5, 4096)
    assert parse_config(dump_config(config)).shadow_comparison == config.shadow_comparison
    # None: the router's defaults, left out of its config (older routers read it).
    plain = m.router_config(endpoint("ep"), CREDS)
    assert "shadow_comparison" not in json.loads(dump_config(plain))
    # The record keeps it, so what the cluster runs reads back as it was asked.
    record = json.loads(m.endpoint_record(replace(endpoint("ep"), shadow_comparison=tolerance)))
    assert endpoint_from_json(record).shadow_comparison == tolerance
    assert "shadow_comparison" not in json.loads(m.endpoint_record(endpoint("ep")))
