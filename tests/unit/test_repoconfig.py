"""reconciler.yaml: checked against schemas/reconciler.schema.json, every error with a line.

What `reconcile validate` passes, the targets must accept: a target's options are checked
here, with file, line and field, not when the target is opened (a traceback, before).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from reconciler.filetree import MemoryTree
from reconciler.model.diagnostics import DesiredStateInvalid, Diagnostic
from reconciler.repoconfig import load_repo_config

SCHEMA = Path(__file__).parent.parent.parent / "schemas" / "reconciler.schema.json"


def errors(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(DesiredStateInvalid) as raised:
        load_repo_config(MemoryTree({"reconciler.yaml": text.encode()}))
    found: tuple[Diagnostic, ...] = raised.value.errors
    assert all(e.file == "reconciler.yaml" for e in found)
    return [(e.line, e.field, e.message) for e in found]


def test_the_schema_is_draft_2020_12_with_a_stable_id() -> None:
    schema = json.loads(SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$id"] == "https://ml-endpoint-reconciler.dev/schemas/reconciler.schema.json"


def test_a_resource_scale_that_is_not_a_number_is_an_error_with_its_line() -> None:
    assert errors("targets:\n  local:\n    type: docker\n    resource_scale: lots\n") == [
        (4, "targets.local.resource_scale", "must be a number, got 'lots'")
    ]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("5", "must be a list, got 5"),
        ("[18000]", "must hold 2 items"),
        ("[80, 2000]", "must be at least 1024, got 80"),
        ("[19000, 18000]", "low port 19000 is above high port 18000"),
        ("[18000, 70000]", "must be at most 65535, got 70000"),
    ],
)
def test_a_router_port_range_must_be_a_pair_of_ports_low_then_high(value: str, words: str) -> None:
    ((line, field, message),) = errors(f"targets:\n  local:\n    router_port_range: {value}\n")
    assert line == 3 and field.startswith("targets.local.router_port_range")
    assert words in message


def test_every_option_of_every_target_type_is_checked() -> None:
    text = (
        "targets:\n"
        "  local:\n"
        "    type: docker\n"
        "    resource_scale: 0\n"  # 4
        "    ready_timeout_s: soon\n"  # 5
        "    base_imag: x\n"  # 6
        "  cluster:\n"
        "    type: kubernetes\n"
        "    router: istio\n"  # 9
        "    router_replicas: 1.5\n"  # 10
        "    build_images: yes please\n"  # 11
    )
    found = {(line, field) for line, field, _ in errors(text)}
    assert found == {
        (4, "targets.local.resource_scale"),
        (5, "targets.local.ready_timeout_s"),
        (6, "targets.local.base_imag"),
        (9, "targets.cluster.router"),
        (10, "targets.cluster.router_replicas"),
        (11, "targets.cluster.build_images"),
    }


def test_an_unknown_top_level_key_is_refused_with_a_suggestion() -> None:
    ((line, field, message),) = errors("targets: {}\nprun: true\n")
    assert (line, field) == (2, "prun")
    assert "unknown field 'prun'" in message and "prune" in message


def test_deep_nesting_is_an_error_not_a_recursion_error() -> None:
    deep = "targets:\n  local:\n    image_map: " + "[" * 1000 + "]" * 1000 + "\n"
    ((line, field, message),) = errors(deep)
    assert (line, field) == (3, "") and "nest" in message


def test_a_duplicate_key_is_an_error_naming_both_lines() -> None:
    text = "prune: false\nstatus_branch: s\nprune: true\n"
    assert errors(text) == [(3, "prune", "duplicate key `prune` (first at line 1)")]


def test_a_valid_file_still_loads() -> None:
    text = (
        "targets:\n"
        "  local: {type: docker, resource_scale: 0.5, router_port_range: [18000, 18099]}\n"
        "  cluster: {type: kubernetes, namespace: ml, router_replicas: 3}\n"
        "default_target: cluster\n"
        "prune: true\n"
    )
    config = load_repo_config(MemoryTree({"reconciler.yaml": text.encode()}))
    assert [t.name for t in config.targets] == ["local", "cluster"]
    assert config.target(None) is not None and config.target(None).type == "kubernetes"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "options",
    [{"resource_scale": "lots"}, {"router_port_range": 5}, {"router_port_range": [9000, 80]}],
)
def test_docker_options_given_another_way_fail_as_an_error_not_a_crash(
    options: dict[str, object],
) -> None:
    from reconciler.targets.base import TargetError
    from reconciler.targets.docker.options import DockerOptions

    with pytest.raises(TargetError) as raised:
        DockerOptions.from_config("local", options)
    assert str(raised.value).startswith(f"reconciler.yaml: targets.local.{next(iter(options))}: ")


def test_a_kubernetes_target_name_must_be_a_label_value() -> None:
    text = "targets:\n  local: {type: docker}\n  prod cluster!:\n    type: kubernetes\n"
    assert errors(text) == [
        (
            3,
            "targets.prod cluster!",
            "a Kubernetes target's name labels its objects: at most 63 letters, digits, "
            "'-', '_' and '.', starting and ending with a letter or digit",
        )
    ]


def test_a_misspelt_target_type_is_one_error_with_the_near_type() -> None:
    text = "targets:\n  local:\n    type: dockr\ndefault_target: local\n"
    assert errors(text) == [
        (
            3,
            "targets.local.type",
            "must be one of docker, kubernetes; got 'dockr' (did you mean 'docker'?)",
        )
    ]


@pytest.mark.parametrize(
    "text",
    [
        "targets:\n  laptop:\n    type: dockr\ndefault_target: laptop\n",
        "targets:\n  laptop: {type: dockr}\ndefault_target: laptop\n",
    ],
)
def test_a_misspelt_type_of_a_target_not_named_local_is_still_one_error(text: str) -> None:
    # default_target names a target the file declares: only its type is wrong (the check
    # looked among the valid targets, where a target named "local" is the fallback).
    assert [(field, message) for _, field, message in errors(text)] == [
        (
            "targets.laptop.type",
            "must be one of docker, kubernetes; got 'dockr' (did you mean 'docker'?)",
        )
    ]


def test_a_default_target_the_file_does_not_declare_is_still_an_error() -> None:
    text = "targets:\n  laptop: {type: docker}\ndefault_target: lptop\n"
    assert errors(text) == [(3, "default_target", "names no target of `targets` ('lptop')")]
