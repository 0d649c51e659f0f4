"""The shadow comparison of an endpoint's router, between its two forms: the spec's
(model.specs.ShadowTolerance, None for the router's defaults; what the plan compares) and the
router config's (router.config.ShadowComparison, always whole). Shared by the targets, which
write the one from the other and read it back when they observe."""

from __future__ import annotations

from reconciler.model.specs import ShadowTolerance
from reconciler.router.config import ShadowComparison

DEFAULT_COMPARISON = ShadowComparison()


def router_comparison(tolerance: ShadowTolerance | None) -> ShadowComparison:
    if tolerance is None:
        return DEFAULT_COMPARISON
    return ShadowComparison(
        rtol=tolerance.rtol, atol=tolerance.atol, max_body_bytes=tolerance.max_body_bytes
    )


def spec_tolerance(comparison: ShadowComparison) -> ShadowTolerance | None:
    """None for the router's defaults: a spec without tolerances means them."""
    if comparison == DEFAULT_COMPARISON:
        return None
    return ShadowTolerance(
        rtol=comparison.rtol, atol=comparison.atol, max_body_bytes=comparison.max_body_bytes
    )


def tolerance_of(
    *, rtol: float | None, atol: float | None, max_body_bytes: int | None
) -> ShadowTolerance | None:
    """The spec's tolerance of a policy's values, the router's defaults where None."""
    d = DEFAULT_COMPARISON
    return spec_tolerance(
        ShadowComparison(
            rtol=d.rtol if rtol is None else rtol,
            atol=d.atol if atol is None else atol,
            max_body_bytes=d.max_body_bytes if max_body_bytes is None else max_body_bytes,
        )
    )
