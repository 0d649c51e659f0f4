"""Settings of a Kubernetes target from reconciler.yaml: defaults, checks, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.targets.base import TargetError
from reconciler.targets.kubernetes.options import GatewayRef, KubernetesOptions


def test_defaults() -> None:
    options = KubernetesOptions.from_config("cluster", {})
    assert options.name == "cluster" and options.namespace is None
    assert options.router == "builtin" and not options.gateway_api
    assert options.registry is None and options.build_images
    assert options.instance_type("Standard_DS3_v2") is not None


def test_every_option() -> None:
    options = KubernetesOptions.from_config(
        "prod",
        {
            "namespace": "ml",
            "context": "aks",
            "kubeconfig": "~/kube.yaml",
            "registry": "127.0.0.1:5000/ml/",
            "router": "gateway-api",
            "gateway": {"name": "gw", "namespace": "gateway-system"},
            "resource_scale": 0.5,
            "instance_types": {"Tiny": {"cores": 1, "memory_gb": 0.5}},
            "build_images": False,
            "router_replicas": 3,
            "image_pull_secrets": ["regcred"],
        },
    )
    assert options.registry == "127.0.0.1:5000/ml"
    assert options.kubeconfig == Path.home() / "kube.yaml"
    assert options.gateway == GatewayRef("gw", "gateway-system") and options.gateway_api
    tiny = options.instance_type("Tiny")
    assert tiny is not None and tiny.memory_gb == 0.5
    assert options.instance_type("Standard_DS3_v2") is not None  # the defaults stay
    assert options.image_pull_secrets == ("regcred",) and options.router_replicas == 3


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"namspace": "ml"}, "unknown option"),
        ({"router": "nginx"}, "router must be one of"),
        ({"router": "gateway-api"}, "needs gateway"),
        ({"namespace": "ML_Team"}, "not a valid namespace"),
        ({"instance_types": {"X": {"cores": 1}}}, "needs cores and memory_gb"),
        ({"build_images": "yes"}, "true or false"),
        ({"resource_scale": "big"}, "could not convert"),
    ],
)
def test_mistakes_are_named(config: dict[str, object], message: str) -> None:
    with pytest.raises(TargetError, match=message) as caught:
        KubernetesOptions.from_config("cluster", config)
    assert caught.value.code == "InvalidTargetConfig"
    assert "targets.cluster" in str(caught.value)
