"""The `status` target: the live state as the status files of the status branch record it.

CI can plan against it without access to the real target: the daemon wrote what it saw
after its last pass. Status files hold digests, not full specs; where a deployment's digest
matches the spec declared at the commit the status names, that spec stands in for the live
one, so field-level changes are shown; otherwise the plan shows a digest change.
The target is read-only: applying a step is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from reconciler.model.diagnostics import Diagnostic
from reconciler.model.errors import ErrorCode
from reconciler.model.plan import Step
from reconciler.model.state import DesiredState, LiveDeployment, LiveEndpoint, LiveState
from reconciler.status import parse_status
from reconciler.targets.base import ProgressCallback, Target, TargetError

SpecResolver = Callable[[str], DesiredState | None]


class StatusTarget:
    """Live state from status files ({path: YAML text}); never changes anything."""

    def __init__(
        self,
        files: Mapping[str, str],
        *,
        resolve_specs: SpecResolver | None = None,
        name: str = "status",
        warnings: tuple[Diagnostic, ...] = (),
    ) -> None:
        self.name = name
        self.files = dict(files)
        self.resolve_specs = resolve_specs
        # For the plan's warnings: where the files came from, when that is worth saying
        # (no status found anywhere: the plan starts from nothing).
        self.warnings = warnings

    def observe(self) -> LiveState:
        endpoints: list[LiveEndpoint] = []
        deployments: list[LiveDeployment] = []
        resolved: dict[str, DesiredState | None] = {}
        for path in sorted(self.files):
            if not path.endswith(".yaml"):
                continue
            try:
                read = parse_status(self.files[path], file=path)
            except ValueError as exc:
                raise TargetError(str(exc), code=ErrorCode.INVALID_STATUS) from None
            declared: DesiredState | None = None
            if read.revision and self.resolve_specs is not None:
                if read.revision not in resolved:
                    resolved[read.revision] = self.resolve_specs(read.revision)
                declared = resolved[read.revision]
            endpoint = read.endpoint
            spec_then = declared.endpoint(endpoint.name) if declared else None
            if spec_then is not None and spec_then.auth_mode == endpoint.spec.auth_mode:
                endpoint = replace(
                    endpoint,
                    spec=replace(
                        spec_then,
                        traffic=endpoint.spec.traffic,
                        mirror_traffic=endpoint.spec.mirror_traffic,
                    ),
                    spec_known=True,
                )
            endpoints.append(endpoint)
            then = {d.key: d for d in declared.deployments} if declared else {}
            for d in read.deployments:
                spec = then.get(d.key)
                deployments.append(replace(d, spec=spec) if spec and spec.digest == d.digest else d)
        return LiveState(
            endpoints=tuple(endpoints), deployments=tuple(deployments), target=self.name
        )

    def apply(self, step: Step, *, progress: ProgressCallback | None = None) -> None:
        raise TargetError(
            "the status target only reads status files; use --dry-run with it",
            code=ErrorCode.READ_ONLY_TARGET,
        )


# What this target claims to be, checked by mypy here: a runtime isinstance check
# (how callers ask for a capability) sees only the names of members.
_IS_TARGET: type[Target] = StatusTarget
