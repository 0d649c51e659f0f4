"""Pure choices of the data plane: which deployment gets a request, which instance serves it.

No I/O and no randomness of its own: the caller passes the uniform draw `r` in [0, 1), so
tests can drive every branch and the server uses `random.random()`.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence


class WeightedChoice:
    """Pick a name with probability weight / total, in O(log n) per pick.

    Names with weight 0 are never picked. With no positive weight, `pick` returns None
    (the endpoint answers 404: no deployment has traffic).
    """

    __slots__ = ("_bounds", "_names", "_total", "only")

    def __init__(self, weights: Sequence[tuple[str, int]]) -> None:
        names: list[str] = []
        bounds: list[int] = []
        total = 0
        for name, weight in weights:
            if weight < 0:
                raise ValueError(f"negative weight for {name}")
            if weight == 0:
                continue
            total += weight
            names.append(name)
            bounds.append(total)
        self._names = tuple(names)
        self._bounds = tuple(bounds)
        self._total = total
        # The one name with traffic, when there is only one: every pick gives it, so the
        # router's hot path takes it without drawing a random number (None otherwise).
        self.only = names[0] if len(names) == 1 else None

    @property
    def total(self) -> int:
        return self._total

    def pick(self, r: float) -> str | None:
        """The name whose slice of [0, total) holds r * total."""
        if not self._total:
            return None
        # bisect_right: a draw exactly on a bound belongs to the next slice, so every
        # slice [previous bound, bound) has exactly its weight's share of [0, total).
        index = bisect.bisect_right(self._bounds, r * self._total)
        return self._names[min(index, len(self._names) - 1)]


def mirror_hit(percent: int, r: float) -> bool:
    """Whether a request drawing `r` is copied to a mirror receiving `percent` percent."""
    return r * 100.0 < percent


def least_busy(busy: Sequence[int], usable: Sequence[bool], start: int) -> int | None:
    """Index of the usable instance with the fewest requests in flight.

    Ties go to the first one found from `start` on, so a caller rotating `start` spreads
    an idle deployment's requests round-robin instead of piling them on instance 0. When no
    instance is usable (all marked down), every instance is considered again: trying a
    perhaps-recovered instance beats refusing outright. None only when there is none.
    """
    count = len(busy)
    if not count:
        return None
    any_usable = any(usable)
    best: int | None = None
    best_busy = 0
    for offset in range(count):
        i = (start + offset) % count
        if any_usable and not usable[i]:
            continue
        if best is None or busy[i] < best_busy:
            best, best_busy = i, busy[i]
    return best
