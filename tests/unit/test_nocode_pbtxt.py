"""Protobuf text format as Triton's config.pbtxt files are written (reconciler.nocode.pbtxt).

The documents are Triton's own examples (the densenet_onnx config of Azure ML's Triton
sample, model_config.md's batching and ensemble examples) and the broken forms a hand-edited
file takes; errors name the line.
"""

from __future__ import annotations

import pytest

from reconciler.nocode.pbtxt import Field, PbtxtError, edit, parse, quote

DENSENET = """\
name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size : 0
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
    reshape { shape: [ 1, 3, 224, 224 ] }
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    reshape { shape: [ 1, 1000, 1, 1 ] }
    label_filename: "densenet_labels.txt"
  }
]
"""


def by_name(fields: tuple[Field, ...]) -> dict[str, Field]:
    return {field.name: field for field in fields}


def test_the_azure_densenet_sample_reads_with_every_field_and_line() -> None:
    fields = by_name(parse(DENSENET))
    assert list(fields) == ["name", "platform", "max_batch_size", "input", "output"]
    assert fields["platform"].first() == "onnxruntime_onnx" and fields["platform"].line == 2
    assert fields["max_batch_size"].first() == "0"
    (data_0,) = fields["input"].messages
    tensor = by_name(data_0)
    assert tensor["data_type"].first() == "TYPE_FP32"
    assert [s.text for s in tensor["dims"].scalars] == ["3", "224", "224"]
    (reshape,) = tensor["reshape"].messages
    assert [s.text for s in reshape[0].scalars] == ["1", "3", "224", "224"]
    assert fields["output"].line == 13


def test_the_other_spellings_of_text_format_read_alike() -> None:
    text = """\
# a comment
name: 'with \\'quotes\\' and \\x41' # trailing comment
dynamic_batching: < preferred_batch_size: [4, 8]; max_queue_delay_microseconds: 100 >
instance_group: [{ count: 2 kind: KIND_CPU }, { kind: KIND_GPU, gpus: [0] }];
parameters { key: "a" value: { string_value: "b" "c" } }
dims: [ -1 ], default: -inf
"""
    fields = parse(text)
    assert fields[0].first() == "with 'quotes' and A"
    assert [s.text for s in fields[1].messages[0][0].scalars] == ["4", "8"]
    assert len(fields[2].messages) == 2 and fields[2].messages[1][0].first() == "KIND_GPU"
    value = by_name(fields[3].messages[0])["value"].messages[0][0]
    assert value.first() == "bc"
    assert fields[4].first() == "-1" and fields[5].first() == "-inf"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('name: "x"\ninput [\n  { name: "a" }\n', 2, "'[' opened here is never closed by ']'"),
        ('name: "x"\ninput [\n  { name: "a" },\n', 2, "'[' opened here is never closed by ']'"),
        ('name: "x"\n\ninput {\n  name: "a"\n', 3, "'{' opened here is never closed by '}'"),
        ('name "x"\n', 1, "expected ':' after 'name'"),
        ('platform: "onnx\nname: "x"\n', 1, "a string is not closed on its line"),
        ("dims: [1 2]\n", 1, "expected ',' or ']' in 'dims', found '2'"),
        ("max_batch_size: }\n", 1, "expected a value for 'max_batch_size', found '}'"),
        ("name: 'x'\n: 3\n", 2, "expected a field name, found ':'"),
        ("name: 'x' ?\n", 1, "unexpected character '?'"),
        ("max_batch_size:\n", 1, "'max_batch_size' has no value"),
        ("dims: [1,\n", 1, "'[' opened here is never closed by ']'"),
        ("dims: [1, { a: 1 }]\n", 1, "'dims' mixes values and messages in one list"),
    ],
)
def test_broken_text_is_an_error_naming_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(PbtxtError) as caught:
        parse(text)
    assert caught.value.line == line
    assert words in caught.value.message


def test_an_edit_replaces_fields_in_place_and_keeps_comments() -> None:
    fields = by_name(parse(DENSENET))
    platform, size = fields["platform"], fields["max_batch_size"]
    out = edit(
        DENSENET, [(platform.start, platform.end, ""), (size.start, size.end, "max_batch_size: 4")]
    )
    assert 'platform: "onnxruntime_onnx"' not in out
    assert out.startswith('name: "densenet_onnx"\n\nmax_batch_size: 4\ninput [')
    assert by_name(parse(out))["max_batch_size"].first() == "4"


def test_quoted_text_reads_back_as_it_was() -> None:
    tricky = 'a "b" \\ c\nd'
    (field,) = parse(f"name: {quote(tricky)}\n")
    assert field.first() == tricky
