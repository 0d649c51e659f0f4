"""yamlsource: the fast construction of plain documents gives PyYAML's own values."""

from __future__ import annotations

import math
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.yamlsource import load_yaml_document

TRICKY = [
    "a: 1\nb: 0x1F\nc: 0o17\nd: 1_000\ne: 1:30\nf: -0b101\ng: 012\nh: 0\ni: +7\nj: 10\n",
    "a: yes\nb: No\nc: ON\nd: off\ne: ~\nf:\ng: null\n",
    "a: 1.5\nb: .inf\nc: -.Inf\nd: 1e3\ne: 6.8523015e+5\nf: 190:20:30.15\n",
    "when: 2024-01-02\nat: 2024-01-02T03:04:05Z\n",
    "base: &b {x: 1, y: [1, 2]}\nother: *b\n",
    "base: &b {x: 1}\nmerged:\n  <<: *b\n  y: 2\n",
    "list: &l [1, 2]\nagain: *l\nscalar: &s text\nsame: *s\n",
    "a: 1\na: 2\nb: {c: 1, c: 3}\n",
    "=: value\nkey: !!str 12\nbin: !!binary aGVsbG8=\n",
    "set: !!set {a, b}\nomap: !!omap [{a: 1}, {b: 2}]\n",
    "? [1, 2]\n: complex key\n",
    "1: int key\n1.0: float key\n",
    "true: a\nnull: b\n3: c\n",
    "- a\n- {b: [c, {d: e}]}\n- - nested\n",
    "'quoted 1': '1'\n\"yes\": \"true\"\nplain: 'null'\n",
    "",
    "just text\n",
    "recursive: &r [*r]\n",
]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        if any(x is a for x in a):  # the recursive alias: compared by shape
            return len(a) == len(b) and all(y is b for y in b)
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize("text", TRICKY)
def test_documents_read_as_pyyaml_reads_them(text: str) -> None:
    read = load_yaml_document(text.encode(), "f.yml")
    try:
        expected = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:  # an unhashable key: an error here too
        assert read.error is not None
        return
    assert read.error is None
    assert _same(read.value, expected), (read.value, expected)


def test_keys_written_twice_are_still_recorded() -> None:
    read = load_yaml_document(b"a: 1\na: 2\nb:\n  c: 1\n  c: 3\n", "f.yml")
    assert read.value == {"a": 2, "b": {"c": 3}}
    found = sorted((d.key, d.line, d.first_line) for d in read.duplicate_keys)
    assert found == [("a", 2, 1), ("c", 5, 4)]


def test_an_alias_shares_one_object_as_in_pyyaml() -> None:
    read = load_yaml_document(b"base: &b {x: 1}\nother: *b\n", "f.yml")
    assert read.value["base"] is read.value["other"]


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.sampled_from(["yes", "No", "~", "0x10", "1_0", "1:20", "2024-01-02", ".nan", "<<"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers(), st.booleans()), inner),
    ),
    max_leaves=15,
)


@settings(max_examples=150, deadline=None)
@given(value=_values, flow=st.sampled_from([None, True, False]))
def test_any_dumped_document_reads_as_pyyaml_reads_it(value: Any, flow: bool | None) -> None:
    text = yaml.safe_dump(value, default_flow_style=flow)
    expected = yaml.load(text, Loader=yaml.SafeLoader)
    read = load_yaml_document(text.encode(), "f.yml")
    assert read.error is None
    assert _same(read.value, expected), (text, read.value, expected)
