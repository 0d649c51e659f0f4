"""Error codes of targets (model.errors): the strings status files carry, each code's kind,
and the kind in the executor's log of a failed step."""

from __future__ import annotations

import pytest
import structlog
import yaml
from specs_factory import deployment, endpoint

from reconciler.executor import execute
from reconciler.model.errors import ErrorCode, ErrorKind, error_kind
from reconciler.model.plan import Action, Step
from reconciler.model.results import Outcome, Waiting
from reconciler.model.state import DesiredState
from reconciler.planning import make_plan
from reconciler.targets.base import ProgressCallback, TargetError, TargetUnavailable
from reconciler.targets.memory import MemoryTarget

# Status files and JSON output carry these strings: a value is never renamed.
KNOWN_VALUES = {
    "TargetError",
    "TargetUnavailable",
    "InvalidTargetConfig",
    "NotFound",
    "MissingConnection",
    "ImageBuildFailure",
    "DeploymentNotHealthy",
    "Timeout",
    "DeploymentNotReady",
    "DockerError",
    "StateUnreadable",
    "InvalidRouterConfig",
    "RouterOutdated",
    "RouterUnavailable",
    "OwnedElsewhere",
    "NameConflict",
    "NoFreePort",
    "NoFreeSubnet",
    "DeploymentHasTraffic",
    "ConnectionsUnreadable",
    "Forbidden",
    "NamespaceMissing",
    "Conflict",
    "KubernetesApiError",
    "ImagePushFailure",
    "ImageMissing",
    "GatewayApiMissing",
    "RouterConfigNotServed",
    "InvalidState",
    "HasTraffic",
    "InvalidStatus",
    "ReadOnlyTarget",
}


def test_the_codes_keep_the_strings_status_files_carry() -> None:
    assert {c.value for c in ErrorCode} >= KNOWN_VALUES


def test_every_code_has_a_kind() -> None:
    assert {c: c.kind for c in ErrorCode}.keys() == set(ErrorCode)
    assert ErrorCode.TARGET_UNAVAILABLE.kind == ErrorKind.UNAVAILABLE
    assert ErrorCode.IMAGE_BUILD_FAILURE.kind == ErrorKind.PERMANENT
    assert ErrorCode.ROUTER_CONFIG_NOT_SERVED.kind == ErrorKind.TRANSIENT


def test_a_target_error_takes_a_known_code_string_and_says_its_kind() -> None:
    error = TargetError("not ready after 300 s", code="Timeout")  # type: ignore[arg-type]
    assert error.code is ErrorCode.TIMEOUT and error.kind == ErrorKind.PERMANENT
    assert TargetError("no code").kind == ErrorKind.TRANSIENT
    assert TargetUnavailable("engine stopped").kind == ErrorKind.UNAVAILABLE
    with pytest.raises(ValueError):
        TargetError("typo", code="Timout")  # type: ignore[arg-type]


def test_the_kind_of_a_code_a_newer_version_wrote_is_unknown() -> None:
    assert error_kind("SomethingNew") is None
    assert error_kind(None) is None
    assert error_kind("NoFreePort") == ErrorKind.TRANSIENT


class _FailingBuild(MemoryTarget):
    """Builds of every deployment fail, as an environment that does not resolve would."""

    def apply(self, step: Step, *, progress: ProgressCallback | None = None) -> Waiting | None:
        if step.action == Action.CREATE_DEPLOYMENT:
            raise TargetError("pip found no such package", code=ErrorCode.IMAGE_BUILD_FAILURE)
        return super().apply(step, progress=progress)


def test_a_failed_step_records_the_plain_code_and_logs_its_kind() -> None:
    target = _FailingBuild()
    desired = DesiredState((endpoint(traffic={"blue": 100}),), (deployment(),))
    with structlog.testing.capture_logs() as logs:
        results = execute(make_plan(desired, target.observe(), prune=False), target)
    failed = [r for r in results if r.outcome == Outcome.FAILED]
    assert [r.error_code for r in failed] == ["ImageBuildFailure"]
    # A plain str: status files are written with yaml.safe_dump, which refuses subclasses.
    assert type(failed[0].error_code) is str
    assert yaml.safe_dump({"code": failed[0].error_code}) == "code: ImageBuildFailure\n"
    [logged] = [e for e in logs if e["event"] == "step_failed"]
    assert (logged["code"], logged["error_kind"]) == ("ImageBuildFailure", "permanent")
