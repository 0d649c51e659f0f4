"""Shadow comparison: does the shadow deployment's answer to a mirrored request agree with
the live deployment's answer to the same request? Pure functions, no I/O.

The rules (`judge`), in order:

1. The live deployment gave no answer of its own (the router answered 408, 429, 502 or 503
   for it): `not_compared`; there is nothing to hold the shadow's answer against.
2. The shadow gave none: `shadow_timeout` (its request_timeout_ms passed), `not_compared`
   (the copy was dropped because the shadow deployment was full: a matter of the router's
   capacity, not of the model), else `shadow_error` (no instance reachable or ready, a broken
   answer).
3. Status codes differ: `disagree_status` (a shadow answering 500 where live answered 200 is
   this, not `shadow_error`: the model did answer). Equal codes go on to the bodies, error
   answers included.
4. Either body is over the comparison's size limit (it was not kept): `not_compared`.
5. Bodies byte-equal, or both JSON and equal within the tolerance: `agree`; else
   `disagree_body`. A body that is not JSON (not UTF-8/16/32 JSON text) is compared
   byte-exactly: two non-JSON bodies agree only when they are the same bytes, and a JSON
   body never agrees with a non-JSON one.

JSON values (`json_close`): numbers as numpy.isclose does, the live value the reference:
`|shadow - live| <= atol + rtol * |live|`; two integers exactly (they are counts, class ids
or labels, where 3 and 4 are different answers however close); an integer and a float
numerically (1 and 1.0 agree); NaN agrees with NaN (both models said the same), an infinity
only with the same infinity. Booleans are not numbers (`true` never agrees with 1). Lists
element-wise with equal lengths; objects by key, key order ignored, same key sets; strings
and null exactly. The walk is iterative: a deeply nested body costs no recursion.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

DEFAULT_RTOL = 1e-6
DEFAULT_ATOL = 1e-9


class Result(StrEnum):
    """The `result` label of router_shadow_comparisons_total."""

    AGREE = "agree"
    STATUS = "disagree_status"
    BODY = "disagree_body"
    SHADOW_ERROR = "shadow_error"
    SHADOW_TIMEOUT = "shadow_timeout"
    NOT_COMPARED = "not_compared"


class Failure(StrEnum):
    """Why a deployment gave no answer of its own (the router's status instead)."""

    TIMEOUT = "timeout"
    DROPPED = "dropped"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Answer:
    """One deployment's answer to the request, as far as the comparison needs it.

    `status` is the backend's own status code, None when it gave no answer (`failure`
    says why); `body` is None when it was over the size limit and not kept.
    """

    status: int | None
    body: bytes | None = None
    failure: Failure | None = None


def numbers_close(live: int | float, shadow: int | float, rtol: float, atol: float) -> bool:
    """numpy.isclose(shadow, live, rtol, atol, equal_nan=True), except two ints: exactly."""
    if type(live) is int and type(shadow) is int:
        return live == shadow
    try:
        reference, other = float(live), float(shadow)
    except OverflowError:  # an int beyond a float's range: only equal to itself
        return live == shadow
    if reference == other:  # equal values, equal infinities
        return True
    if math.isnan(reference) or math.isnan(other):
        return math.isnan(reference) and math.isnan(other)
    if math.isinf(reference) or math.isinf(other):
        return False
    return abs(other - reference) <= atol + rtol * abs(reference)


_NUMBERS = (int, float)


def json_close(live: Any, shadow: Any, rtol: float, atol: float) -> bool:
    """Two decoded JSON values equal within the tolerance (rules in the module docstring)."""
    stack = [(live, shadow)]
    while stack:
        a, b = stack.pop()
        type_a, type_b = type(a), type(b)
        if type_a is dict:
            if type_b is not dict or a.keys() != b.keys():
                return False
            stack.extend((value, b[key]) for key, value in a.items())
        elif type_a is list:
            if type_b is not list or len(a) != len(b):
                return False
            stack.extend(zip(a, b, strict=True))
        elif type_a in _NUMBERS and type_b in _NUMBERS:
            # bool is a subclass of int, but `type(True) is bool`, so it never gets here.
            if not numbers_close(a, b, rtol, atol):
                return False
        elif type_a is not type_b or a != b:
            return False
    return True


def _decode(body: bytes) -> tuple[bool, Any]:
    try:
        return True, json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are both
        return False, None


def bodies_agree(live: bytes, shadow: bytes, rtol: float, atol: float) -> bool:
    """Byte-equal, or both JSON and `json_close`."""
    if live == shadow:
        return True
    live_ok, live_doc = _decode(live)
    if not live_ok:
        return False
    shadow_ok, shadow_doc = _decode(shadow)
    return shadow_ok and json_close(live_doc, shadow_doc, rtol, atol)


def judge(live: Answer, shadow: Answer, *, rtol: float, atol: float) -> Result:
    """The result of comparing the shadow's answer with the live one (rules above)."""
    if live.status is None:
        return Result.NOT_COMPARED
    if shadow.status is None:
        if shadow.failure is Failure.TIMEOUT:
            return Result.SHADOW_TIMEOUT
        if shadow.failure is Failure.DROPPED:
            return Result.NOT_COMPARED
        return Result.SHADOW_ERROR
    if live.status != shadow.status:
        return Result.STATUS
    if live.body is None or shadow.body is None:
        return Result.NOT_COMPARED
    if bodies_agree(live.body, shadow.body, rtol, atol):
        return Result.AGREE
    return Result.BODY


class Pair:
    """The rendezvous of one mirrored request's two answers: whichever comes second calls
    `done(pair)`, so the comparison runs once, when both are in, on whichever side came
    last (the live side calls in after the caller's answer is written). Times are
    `time.perf_counter()` values; `started` is when the copy was made."""

    __slots__ = ("done", "live", "live_at", "live_name", "shadow", "shadow_at", "shadow_name")

    def __init__(
        self,
        live_name: str,
        shadow_name: str,
        done: Callable[[Pair], None],
    ) -> None:
        self.live_name = live_name
        self.shadow_name = shadow_name
        self.done = done
        self.live: Answer | None = None
        self.shadow: Answer | None = None
        self.live_at = 0.0
        self.shadow_at = 0.0

    def live_answered(self, answer: Answer, at: float) -> None:
        self.live, self.live_at = answer, at
        if self.shadow is not None:
            self.done(self)

    def shadow_answered(self, answer: Answer, at: float) -> None:
        self.shadow, self.shadow_at = answer, at
        if self.live is not None:
            self.done(self)

    def latency_delta(self) -> float | None:
        """Shadow minus live (seconds), when both deployments answered."""
        live, shadow = self.live, self.shadow
        if live is None or shadow is None or live.status is None or shadow.status is None:
            return None
        return self.shadow_at - self.live_at
