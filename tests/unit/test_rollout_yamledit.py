"""Editing traffic and mirror_traffic in an endpoint file's text
(reconciler.rollouts.yamledit): only the numbers change, every comment and line stays, and a
form that cannot be edited safely is refused."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
import yaml

from reconciler.rollouts.yamledit import WeightsEditError, edit_weights
from reconciler.yamlsource import load_yaml_document

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
        ("name: e\ntraffic:\n  blue: 100\n   green: 0\n", "the file: not valid YAML"),
        ("name: e\ntraffic: null\n", "traffic holds 'null'"),
        ("name: e\ntraffic:\n  blue: 0x64\n", "line 3: this entry of traffic"),
        (
            "name: e\ntraffic:\n  blue: 100\ntraffic:\n  blue: 100\n",
            "writes a key twice: `traffic`",
        ),
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


# --------------------------------------------------------------------------------------
# Hostile forms: the edit must leave a file the repository's loader reads as intended


def loaded(text: str) -> dict[str, object]:
    """The document as the repository's loader (libyaml) reads it; duplicates fail."""
    document = load_yaml_document(text.encode("utf-8"), "endpoint.yml")
    assert document.error is None, document.error
    assert document.duplicate_keys == ()
    value = document.value
    assert isinstance(value, dict)
    return value


def test_a_file_with_a_byte_order_mark_keeps_it_and_gets_no_second_traffic_key() -> None:
    text = "\ufefftraffic:  # live\n  blue: 100\nname: ep\n"
    edited = edit_weights(text, traffic={"blue": 80, "green": 20})
    assert edited == "\ufefftraffic:  # live\n  blue: 80\n  green: 20\nname: ep\n"
    assert loaded(edited)["traffic"] == {"blue": 80, "green": 20}


def test_a_byte_order_mark_before_a_flow_traffic_stays() -> None:
    text = "\ufefftraffic: {blue: 100}\nname: ep\n"
    edited = edit_weights(text, traffic={"blue": 100, "green": 0}, mirror_traffic={"green": 20})
    assert edited == "\ufefftraffic: {blue: 100}\nmirror_traffic: {green: 20}\nname: ep\n"


@pytest.mark.parametrize(
    "text",
    [
        "name: ep\n? traffic\n: {blue: 100}\n",  # an explicit key
        'name: ep\n"tra\\x66fic": {blue: 100}\n',  # an escape in the key
        "name: ep\n!!str traffic : {blue: 100}\n",  # a tag on the key
    ],
)
def test_traffic_written_in_a_form_the_lines_do_not_find_is_refused_not_written_twice(
    text: str,
) -> None:
    with pytest.raises(WeightsEditError, match="traffic is written in a form"):
        edit_weights(text, traffic={"blue": 80, "green": 20})


def test_tabs_the_repository_loader_accepts_do_not_stop_the_edit() -> None:
    # libyaml (the loader of every endpoint file) reads a tab before a comment and after a
    # colon; the pure-Python PyYAML refuses both, which refused a valid endpoint's rollout.
    text = "name: ep\ntraffic:\t# live\n  blue:\t100\t#\tv1\n"
    edited = edit_weights(text, traffic={"blue": 80, "green": 20})
    assert changed_lines(text, edited) == [
        "-  blue:\t100\t#\tv1",
        "+  blue:\t80\t#\tv1",
        "+  green: 20",
    ]
    assert loaded(edited)["traffic"] == {"blue": 80, "green": 20}


@pytest.mark.parametrize("name", ["yes", "off", "null", "true", "False", "NULL"])
def test_a_deployment_name_yaml_reads_as_no_string_is_written_quoted(name: str) -> None:
    text = "name: ep\ntraffic:\n  blue: 100\n"
    edited = edit_weights(text, traffic={"blue": 90, name: 10})
    assert edited == f'name: ep\ntraffic:\n  blue: 90\n  "{name}": 10\n'
    assert loaded(edited)["traffic"] == {"blue": 90, name: 10}
    flow = edit_weights(
        "name: ep\ntraffic: {blue: 100}\n", traffic={"blue": 100}, mirror_traffic={name: 20}
    )
    assert flow == f'name: ep\ntraffic: {{blue: 100}}\nmirror_traffic: {{"{name}": 20}}\n'
    assert loaded(flow)["mirror_traffic"] == {name: 20}


def test_a_mirror_entry_taken_over_by_a_name_that_needs_quoting_is_quoted() -> None:
    text = "name: ep\ntraffic: {blue: 100}\nmirror_traffic:\n  green: 20  # shadow\n"
    edited = edit_weights(text, traffic={"blue": 100}, mirror_traffic={"green": 0, "yes": 10})
    assert edited.endswith('mirror_traffic:\n  "yes": 10  # shadow\n')
    assert loaded(edited)["mirror_traffic"] == {"yes": 10}


def test_a_file_with_old_mac_line_endings_gets_its_own_ending_on_added_lines() -> None:
    text = "name: ep\rtraffic:\r  blue: 100\r"
    edited = edit_weights(text, traffic={"blue": 80, "green": 20})
    assert edited == "name: ep\rtraffic:\r  blue: 80\r  green: 20\r"


def test_crlf_and_unicode_comments_survive_a_mirror_step_byte_for_byte() -> None:
    text = "name: ep  # café ☕\r\ntraffic:\r\n  blue: 100 # ünïcode v1\r\ndescription: 日本\r\n"
    edited = edit_weights(text, traffic={"blue": 100, "green": 0}, mirror_traffic={"green": 20})
    assert edited == (
        "name: ep  # café ☕\r\ntraffic:\r\n  blue: 100 # ünïcode v1\r\n"
        "mirror_traffic:\r\n  green: 20\r\ndescription: 日本\r\n"
    )
    assert loaded(edited) == {
        "name": "ep",
        "traffic": {"blue": 100},
        "mirror_traffic": {"green": 20},
        "description": "日本",
    }
