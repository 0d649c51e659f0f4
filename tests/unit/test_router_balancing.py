"""Pure choices: weighted deployment, mirror draw, least busy instance."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.router.balancing import WeightedChoice, least_busy, mirror_hit


def test_each_name_gets_exactly_its_share_of_the_unit_interval() -> None:
    choice = WeightedChoice([("blue", 90), ("green", 10), ("off", 0)])
    draws = Counter(choice.pick(i / 1000) for i in range(1000))
    assert draws == {"blue": 900, "green": 100}
    assert choice.pick(0.0) == "blue" and choice.pick(0.8999) == "blue"
    assert choice.pick(0.9) == "green" and choice.pick(0.999999) == "green"


def test_no_traffic_picks_nothing() -> None:
    assert WeightedChoice([]).pick(0.5) is None
    assert WeightedChoice([("blue", 0)]).pick(0.5) is None
    with pytest.raises(ValueError):
        WeightedChoice([("blue", -1)])


@given(
    st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=20),
    st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_picks_only_positive_weights(weights: list[int], r: float) -> None:
    pairs = [(f"d{i}", w) for i, w in enumerate(weights)]
    picked = WeightedChoice(pairs).pick(r)
    if sum(weights) == 0:
        assert picked is None
    else:
        assert picked is not None and dict(pairs)[picked] > 0


def test_only_names_the_single_deployment_with_traffic() -> None:
    # The router takes `only` without a draw: it must be what every pick would give.
    single = WeightedChoice([("blue", 0), ("green", 7)])
    assert single.only == "green" and {single.pick(i / 10) for i in range(10)} == {"green"}
    assert WeightedChoice([("blue", 50), ("green", 50)]).only is None
    assert WeightedChoice([("blue", 0)]).only is None


def test_mirror_draw() -> None:
    assert sum(mirror_hit(20, i / 1000) for i in range(1000)) == 200
    assert not mirror_hit(0, 0.0)


def test_least_busy_rotates_ties_and_skips_down_instances() -> None:
    assert least_busy([0, 0, 0], [True] * 3, start=1) == 1
    assert least_busy([2, 1, 3], [True] * 3, start=0) == 1
    assert least_busy([0, 5], [False, True], start=0) == 1
    assert least_busy([0, 5], [False, False], start=0) == 0  # all down: try anyway
    assert least_busy([], [], start=0) is None
