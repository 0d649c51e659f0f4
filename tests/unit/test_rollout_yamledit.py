"""Editing traffic and mirror_traffic in an endpoint file's text
(reconciler.rollouts.yamledit): only the numbers change, every comment and line stays, and a
form that cannot be edited safely is refused."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
import yaml

from reconciler.rollouts.yamledit import WeightsEditError, edit_weights

EXAMPLE = Path(__file__).parents[2] / "example-repo" / "endpoints" / "my-endpoint" / "endpoint.yml"


def changed_lines(before: str, after: str) -> list[str]:
    """The lines a `git diff` of the edit shows (- and +)."""
    return [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def test_the_example_repository_endpoint_changes_by_its_numbers_only() -> None:
    text = EXAMPLE.read_text()
    edited = edit_weights(text, traffic={"blue": 75, "green": 25})
    assert changed_lines(text, edited) == [
        "-  blue: 90",
        "-  green: 10",
        "+  blue: 75",
        "+  green: 25",
    ]
    assert yaml.safe_load(edited)["tags"] == yaml.safe_load(text)["tags"]
    assert "# to move traffic: blue serves model v1, green is the v2 canary." in edited


def test_a_mirror_step_adds_mirror_traffic_right_after_traffic_in_its_style() -> None:
    text = EXAMPLE.read_text()
    edited = edit_weights(text, traffic={"blue": 100, "green": 0}, mirror_traffic={"green": 20})
    assert changed_lines(text, edited) == [
        "-  blue: 90",
        "-  green: 10",
        "+  blue: 100",
        "+  green: 0",
        "+mirror_traffic:",
        "+  green: 20",
    ]
    assert edited.index("mirror_traffic:") < edited.index("tags:")


def test_the_azure_one_line_form_keeps_its_spacing_and_comment() -> None:
    text = "name: my-endpoint\ntraffic: {blue: 90, green: 10}  # v2 canary\nauth_mode: key\n"
    assert edit_weights(text, traffic={"blue": 50, "green": 50}) == (
        "name: my-endpoint\ntraffic: {blue: 50, green: 50}  # v2 canary\nauth_mode: key\n"
    )
    assert edit_weights(text, traffic={"blue": 100}, mirror_traffic={"green": 20}) == (
        "name: my-endpoint\n"
        "traffic: {blue: 100, green: 0}  # v2 canary\n"
        "mirror_traffic: {green: 20}\n"
        "auth_mode: key\n"
    )


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("traffic: { blue: 100 }\n", "traffic: { blue: 90, green: 10 }\n"),
        ("traffic: {}\n", "traffic: {blue: 90, green: 10}\n"),
        ("traffic: {'blue': 100}\n", "traffic: {'blue': 90, green: 10}\n"),
        ("traffic:\n", "traffic:\n  blue: 90\n  green: 10\n"),
        ("traffic:\n    blue: 100\n", "traffic:\n    blue: 90\n    green: 10\n"),
        ('"traffic":\n  "blue": 100\n', '"traffic":\n  "blue": 90\n  green: 10\n'),
        ("auth_mode: key\n", "auth_mode: key\ntraffic:\n  blue: 90\n  green: 10\n"),
        ("auth_mode: key", "auth_mode: key\ntraffic:\n  blue: 90\n  green: 10\n"),
    ],
)
def test_forms_of_traffic_that_are_edited(before: str, after: str) -> None:
    assert (
        edit_weights("name: e\n" + before, traffic={"blue": 90, "green": 10}) == "name: e\n" + after
    )


def test_a_comment_keeps_its_column_and_comment_lines_stay_in_place() -> None:
    text = (
        "name: e\n"
        "traffic:\n"
        "  # the stable model\n"
        "  blue: 100   # v1\n"
        "\n"
        "  green: 0    # v2\n"
        "# the rest of the endpoint\n"
        "auth_mode: key\n"
    )
    assert edit_weights(text, traffic={"blue": 90, "green": 10}) == (
        "name: e\n"
        "traffic:\n"
        "  # the stable model\n"
        "  blue: 90    # v1\n"
        "\n"
        "  green: 10   # v2\n"
        "# the rest of the endpoint\n"
        "auth_mode: key\n"
    )


def test_a_new_deployment_goes_after_the_last_entry_not_after_trailing_comments() -> None:
    text = "traffic:\n  blue: 100\n# below\nname: e\n"
    assert edit_weights(text, traffic={"blue": 90, "green": 10}) == (
        "traffic:\n  blue: 90\n  green: 10\n# below\nname: e\n"
    )


def test_windows_line_endings_stay() -> None:
    text = "name: e\r\ntraffic:\r\n  blue: 100\r\n"
    assert edit_weights(text, traffic={"blue": 90, "green": 10}) == (
        "name: e\r\ntraffic:\r\n  blue: 90\r\n  green: 10\r\n"
    )


def test_mirror_traffic_holds_one_deployment_so_a_new_one_takes_the_old_ones_place() -> None:
    block = "name: e\ntraffic: {blue: 100}\nmirror_traffic:\n  red: 10  # try red\n"
    assert edit_weights(block, mirror_traffic={"green": 20}) == (
        "name: e\ntraffic: {blue: 100}\nmirror_traffic:\n  green: 20  # try red\n"
    )
    flow = "name: e\ntraffic: {blue: 100}\nmirror_traffic: {red: 10}\n"
    assert edit_weights(flow, mirror_traffic={"green": 20}) == (
        "name: e\ntraffic: {blue: 100}\nmirror_traffic: {green: 20}\n"
    )


def test_mirror_off_sets_zero_and_an_absent_mirror_stays_absent() -> None:
    text = "name: e\ntraffic: {blue: 100}\nmirror_traffic: {green: 20}\n"
    assert edit_weights(text, mirror_traffic={"green": 0}) == (
        "name: e\ntraffic: {blue: 100}\nmirror_traffic: {green: 0}\n"
    )
    bare = "name: e\ntraffic: {blue: 100}\n"
    assert (
        edit_weights(bare, traffic={"blue": 100, "green": 0}, mirror_traffic={"green": 0}) == bare
    )


def test_none_leaves_a_mapping_as_it_is() -> None:
    text = "name: e\ntraffic: {blue: 100}\nmirror_traffic: {green: 20}\n"
    assert edit_weights(text, traffic={"blue": 100}) == text


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("name: e\ntraffic: {blue: 90,\n  green: 10}\n", "a flow mapping over several lines"),
        ("name: e\ntraffic: &t {blue: 100}\n", "anchors, aliases and tags"),
        ("name: e\nbase: &t {blue: 100}\ntraffic: *t\n", "anchors, aliases and tags"),
        ('{"name": "e", "traffic": {"blue": 100}}\n', "a flow mapping (JSON)"),
        ("name: e\ntraffic:\n  blue: 100\n  green: !!int 0\n", "line 4: this entry of traffic"),
        ("name: e\ntraffic:\n  blue: 100\n   green: 0\n", "is not valid YAML"),
        ("name: e\ntraffic: null\n", "traffic holds 'null'"),
        ("name: e\ntraffic:\n  blue: 0x64\n", "line 3: this entry of traffic"),
        ("name: e\ntraffic:\n  blue: 100\ntraffic:\n  blue: 100\n", "traffic is written 2 times"),
        ("name: e\ntraffic: {blue: 100}\n---\nname: f\n", "must hold one YAML mapping"),
        ("name: e\ntraffic: {blue: {x: 1}}\n", "nested values"),
    ],
)
def test_forms_that_cannot_be_edited_safely_are_refused(text: str, words: str) -> None:
    with pytest.raises(WeightsEditError) as refused:
        edit_weights(text, traffic={"blue": 90, "green": 10})
    assert words in str(refused.value)


def test_a_name_that_would_need_quoting_is_refused() -> None:
    with pytest.raises(WeightsEditError, match=r"cannot write traffic\.a: b"):
        edit_weights("name: e\ntraffic: {blue: 100}\n", traffic={"a: b": 10})
