"""Shadow comparison (router/compare.py): tolerances, nested JSON, NaN, ints and floats, key
order, bool vs int, non-JSON bodies, and the result of each kind of answer pair."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from reconciler.router.compare import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    Answer,
    Failure,
    Pair,
    Result,
    bodies_agree,
    json_close,
    judge,
    numbers_close,
)

RTOL, ATOL = DEFAULT_RTOL, DEFAULT_ATOL


def close(live: Any, shadow: Any, rtol: float = RTOL, atol: float = ATOL) -> bool:
    return json_close(live, shadow, rtol, atol)


def test_numbers_within_rtol_agree_and_beyond_it_do_not() -> None:
    assert close(100.0, 100.0 + 99e-6)  # 1e-9 + 1e-6 * 100 = 1.00000001e-4
    assert not close(100.0, 100.0 + 101e-6)
    # The live value is the reference, as numpy.isclose(shadow, live) takes it.
    assert numbers_close(1.0, 1.0 + 1.5e-6, rtol=1e-6, atol=0.0) is False
    assert numbers_close(1e-3, 1e-3 * (1 + 5e-7), rtol=1e-6, atol=0.0)


def test_atol_decides_near_zero() -> None:
    assert close(0.0, 5e-10)
    assert not close(0.0, 5e-9)
    assert close(0.0, 5e-9, atol=1e-8)
    assert close(-0.0, 0.0, rtol=0.0, atol=0.0)


def test_zero_tolerance_means_exact() -> None:
    assert close(0.1, 0.1, rtol=0.0, atol=0.0)
    assert not close(0.1, math.nextafter(0.1, 1.0), rtol=0.0, atol=0.0)


def test_nan_agrees_with_nan_only_and_infinities_with_the_same_infinity() -> None:
    nan, inf = float("nan"), float("inf")
    assert close(nan, nan)
    assert not close(nan, 1.0)
    assert not close(1.0, nan)
    assert close(inf, inf)
    assert not close(inf, -inf)
    assert not close(inf, 1e308)
    assert not close(1e308, inf, rtol=10.0)
    # As JSON text: Python's json writes NaN and Infinity, and reads them back.
    assert bodies_agree(b'{"p": [NaN, Infinity]}', b'{"p": [NaN, Infinity]}', RTOL, ATOL)
    assert bodies_agree(b'{"p": [NaN, 1.0]}', b'{"p":[NaN,1.0000000001]}', RTOL, ATOL)
    assert not bodies_agree(b'{"p": [NaN]}', b'{"p": [0.0]}', RTOL, ATOL)


def test_two_ints_compare_exactly_but_an_int_and_a_float_within_tolerance() -> None:
    assert not close(1_000_000, 1_000_001)  # a tolerance of 1.000000001 would let it pass
    assert close(1_000_000, 1_000_000)
    assert close(1, 1.0)
    assert close(1.0, 1)
    assert close(1_000_000, 1_000_000.5)
    assert not close(3, 4.0)
    # Beyond a float's range: only an equal int agrees.
    huge = 10**400
    assert close(huge, huge)
    assert not close(huge, 1e308)
    assert not close(1e308, huge)


def test_bool_is_not_a_number() -> None:
    assert not close(True, 1)
    assert not close(1, True)
    assert not close(False, 0.0)
    assert not close(True, False)
    assert close(True, True)
    assert close([False], [False])


def test_nested_structures_compare_element_wise_and_by_key() -> None:
    live = {"predictions": [[0.1, 0.9], [0.25, 0.75]], "model": "v1", "meta": {"n": 2}}
    shadow = {"meta": {"n": 2}, "model": "v1", "predictions": [[0.1, 0.9000001], [0.25, 0.75]]}
    assert close(live, shadow)
    assert not close(live, {**shadow, "predictions": [[0.1, 0.91], [0.25, 0.75]]})
    assert not close(live, {**shadow, "model": "v2"})
    assert not close(live, {**shadow, "extra": None})  # a key more
    assert not close(live, {"predictions": shadow["predictions"], "model": "v1"})  # one less
    assert not close([1.0, 2.0], [1.0, 2.0, 3.0])
    assert not close([1.0, 2.0], [2.0, 1.0])  # lists are ordered
    assert not close({"a": 1}, [1])
    assert not close([], {})
    assert close([], [])
    assert close({}, {})


def test_key_order_does_not_matter_in_bodies() -> None:
    assert bodies_agree(b'{"a": 1, "b": [2.5]}', b'{"b":[2.5],"a":1}', RTOL, ATOL)


def test_strings_and_null_compare_exactly() -> None:
    assert close("cat", "cat")
    assert not close("cat", "Cat")
    assert not close("1", 1)
    assert not close(None, 0)
    assert not close(None, "null")
    assert close(None, None)


def test_deep_nesting_costs_no_recursion() -> None:
    depth = 5000
    live: Any = 1.0
    shadow: Any = 1.0 + 1e-9
    other: Any = 1.1
    for level in range(depth):
        if level % 2:
            live, shadow, other = [live], [shadow], [other]
        else:
            live, shadow, other = {"x": live}, {"x": shadow}, {"x": other}
    assert close(live, shadow)
    assert not close(live, other)
    # Too deep for the JSON parser itself: not JSON, so byte-exact.
    text = b"[" * 100_000 + b"1" + b"]" * 100_000
    assert bodies_agree(text, text, RTOL, ATOL)
    assert not bodies_agree(text, text.replace(b"1", b"2"), RTOL, ATOL)


def test_non_json_bodies_are_compared_byte_exactly() -> None:
    assert bodies_agree(b"label: cat\n", b"label: cat\n", RTOL, ATOL)
    assert not bodies_agree(b"score 0.5000001", b"score 0.5", RTOL, ATOL)
    assert not bodies_agree(b"\xff\xfe binary", b"\xff\xfe binarY", RTOL, ATOL)
    assert not bodies_agree(b"[1.0]", b"[1.0] trailing", RTOL, ATOL)  # JSON vs not JSON
    assert not bodies_agree(b"not json", b"[1.0]", RTOL, ATOL)
    assert bodies_agree(b"", b"", RTOL, ATOL)
    assert not bodies_agree(b"", b"[]", RTOL, ATOL)


def _ok(doc: Any, status: int = 200) -> Answer:
    return Answer(status, json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("live", "shadow", "expected"),
    [
        (_ok([0.5]), _ok([0.5000001]), Result.AGREE),
        (_ok([0.5]), _ok([0.6]), Result.BODY),
        (_ok([0.5]), _ok([0.5], status=500), Result.STATUS),
        (_ok({"error": "x"}, 400), _ok({"error": "x"}, 400), Result.AGREE),
        (_ok({"error": "x"}, 400), _ok({"error": "y"}, 400), Result.BODY),
        (_ok([0.5]), Answer(None, failure=Failure.TIMEOUT), Result.SHADOW_TIMEOUT),
        (_ok([0.5]), Answer(None, failure=Failure.ERROR), Result.SHADOW_ERROR),
        # The copy was dropped (mirror deployment full): nothing to say about the model.
        (_ok([0.5]), Answer(None, failure=Failure.DROPPED), Result.NOT_COMPARED),
        # The live deployment gave no answer of its own: nothing to compare with.
        (Answer(None, failure=Failure.TIMEOUT), _ok([0.5]), Result.NOT_COMPARED),
        (
            Answer(None, failure=Failure.ERROR),
            Answer(None, failure=Failure.ERROR),
            Result.NOT_COMPARED,
        ),
        # A body over the size limit was not kept; statuses are still compared.
        (Answer(200, None), _ok([0.5]), Result.NOT_COMPARED),
        (_ok([0.5]), Answer(200, None), Result.NOT_COMPARED),
        (Answer(200, None), Answer(503, None), Result.STATUS),
    ],
)
def test_judge_gives_each_pair_of_answers_its_result(
    live: Answer, shadow: Answer, expected: Result
) -> None:
    assert judge(live, shadow, rtol=RTOL, atol=ATOL) is expected


def test_pair_compares_once_when_the_second_answer_comes_either_way_round() -> None:
    done: list[Pair] = []
    first = Pair("blue", "green", done.append)
    first.live_answered(_ok([1]), at=10.0)
    assert done == []
    first.shadow_answered(_ok([1]), at=10.25)
    assert done == [first]
    assert first.latency_delta() == pytest.approx(0.25)

    second = Pair("blue", "green", done.append)
    second.shadow_answered(_ok([1]), at=5.0)
    assert done == [first]
    second.live_answered(_ok([1]), at=5.5)
    assert done == [first, second]
    assert second.latency_delta() == pytest.approx(-0.5)

    timed_out = Pair("blue", "green", done.append)
    timed_out.live_answered(_ok([1]), at=1.0)
    timed_out.shadow_answered(Answer(None, failure=Failure.TIMEOUT), at=6.0)
    assert timed_out.latency_delta() is None
