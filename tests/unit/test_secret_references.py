"""Secret references in environment variables: parsing, loading's errors, the spec helper."""

from __future__ import annotations

import pytest
from test_loading import deployment, errors_of, files, load

from reconciler import loading
from reconciler.model.secrets import (
    MalformedReference,
    SecretRef,
    connections,
    mentions_reference,
    parse_reference,
    references,
    variables,
)

KEY = "${{azureml://connections/openai/credentials/api-key}}"
URL = "${{azureml://connections/openai/target}}"
VERSION = "${{azureml://connections/openai/metadata/ApiVersion}}"


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    loading.clear_cache()


def test_the_three_forms_parse_and_print_back_as_written() -> None:
    assert parse_reference(KEY) == SecretRef("openai", "credentials", "api-key")
    assert parse_reference(URL) == SecretRef("openai", "target", None)
    assert parse_reference(VERSION) == SecretRef("openai", "metadata", "ApiVersion")
    for text in (KEY, URL, VERSION):
        ref = parse_reference(text)
        assert ref is not None and ref.text == text


@pytest.mark.parametrize(
    "value", ["plain", "", "https://x/${{other}}", "${{ azureml://connections/a/target}}", "$x"]
)
def test_plain_values_are_no_references(value: str) -> None:
    assert parse_reference(value) is None


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("${{azureml://connections/}}", "without a connection name"),
        ("${{azureml://connections/a/secrets/k}}", "unknown kind 'secrets'"),
        ("${{azureml://connections/a/credentials/}}", "needs exactly one KEY"),
        ("${{azureml://connections/a/credentials/k/x}}", "needs exactly one KEY"),
        ("${{azureml://connections/a/credentials/k", "not closed"),
        ("${{azureml://connections/a/target/x}}", "nothing may follow 'target'"),
        ("${{azureml://connections/a b/target}}", "connection name 'a b' is not valid"),
        ("${{azureml://connections/a/credentials/k?}}", "key 'k?' is not valid"),
        ("${{azureml://connections/a}}", "whole connection"),
        ("${{keyvault:https://v.vault.azure.net/secrets/s/1}}", "key vault"),
        (" ${{azureml://connections/a/target}}", "spaces"),
    ],
)
def test_malformed_references_say_what_is_wrong(value: str, says: str) -> None:
    with pytest.raises(MalformedReference, match=None) as caught:
        parse_reference(value)
    assert says in str(caught.value)


def test_a_reference_among_other_text_is_noticed_but_is_no_reference() -> None:
    mixed = f"Bearer {KEY}"
    assert parse_reference(mixed) is None
    assert mentions_reference(mixed)
    assert not mentions_reference(KEY)
    assert not mentions_reference("plain")


def vars_block(**values: str) -> str:
    lines = "".join(f"  {name}: '{value}'\n" for name, value in values.items())
    return "environment_variables:\n" + lines


def test_a_deployment_keeps_the_reference_and_the_helper_finds_it() -> None:
    tree = files(blue_dot_yml=deployment("blue", extra=vars_block(A=KEY, B=URL, C="plain")))
    state = load(tree)
    blue = next(d for d in state.deployments if d.name == "blue")
    assert dict(blue.environment_variables)["A"] == KEY
    assert variables(blue) == (
        ("A", SecretRef("openai", "credentials", "api-key")),
        ("B", SecretRef("openai", "target")),
    )
    assert references(blue) == (
        SecretRef("openai", "credentials", "api-key"),
        SecretRef("openai", "target"),
    )
    assert connections(blue) == ("openai",)
    green = next(d for d in state.deployments if d.name == "green")
    assert references(green) == ()


def test_a_malformed_reference_is_an_error_with_file_line_and_field() -> None:
    extra = vars_block(
        OK="x", BAD="${{azureml://connections/}}", ODD="${{azureml://connections/a/b}}"
    )
    errors = errors_of(files(blue_dot_yml=deployment("blue", extra=extra)))
    found = {e.field: e for e in errors}
    bad, odd = found["environment_variables.BAD"], found["environment_variables.ODD"]
    assert (bad.file, odd.file) == ("blue.yml", "blue.yml")
    text = deployment("blue", extra=extra).decode().splitlines()
    assert bad.line is not None and "BAD:" in text[bad.line - 1]
    assert odd.line is not None and "ODD:" in text[odd.line - 1]
    assert "without a connection name" in bad.message
    assert "unknown kind 'b'" in odd.message
    assert "environment_variables.OK" not in found


def test_a_reference_among_other_text_is_a_warning_and_passed_as_written() -> None:
    mixed = f"Bearer {KEY}"
    state = load(files(blue_dot_yml=deployment("blue", extra=vars_block(AUTH=mixed))))
    blue = next(d for d in state.deployments if d.name == "blue")
    assert dict(blue.environment_variables)["AUTH"] == mixed
    assert references(blue) == ()
    warned = [w for w in state.warnings if w.field == "environment_variables.AUTH"]
    assert len(warned) == 1 and "passed as written" in warned[0].message
    assert warned[0].file == "blue.yml" and warned[0].line is not None
