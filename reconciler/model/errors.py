"""Error codes of targets, and what kind of failure each one is.

The string values are a contract: status files (`last_error`, "Code: message") and the JSON
output of a pass carry them (StepResult.error_code), so a value is never renamed; new codes
are added. Codes are shared by targets where they mean the same thing (NotFound, Timeout);
a few name one platform's failure (DockerError, KubernetesApiError).

The kind says what to expect of the next pass, for logs and people deciding what to do:
- transient: the next pass may well succeed as it is (a rollout not ready yet, a router
  that lags, an object the next pass repairs, an engine or API hiccup);
- permanent: the same commit on the same platform fails again; a new commit (or an
  operator's fix of the platform: a namespace, permissions, a pushed image) is needed;
- unavailable: the platform itself cannot be reached; status says target_reachable false.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    UNAVAILABLE = "unavailable"


class ErrorCode(StrEnum):
    # Any target
    TARGET_ERROR = "TargetError"  # the default: a failure no code names better
    TARGET_UNAVAILABLE = "TargetUnavailable"
    INVALID_TARGET_CONFIG = "InvalidTargetConfig"
    NOT_FOUND = "NotFound"
    MISSING_CONNECTION = "MissingConnection"
    IMAGE_BUILD_FAILURE = "ImageBuildFailure"
    DEPLOYMENT_NOT_HEALTHY = "DeploymentNotHealthy"
    TIMEOUT = "Timeout"
    # Docker target
    DEPLOYMENT_NOT_READY = "DeploymentNotReady"
    DOCKER_ERROR = "DockerError"
    STATE_UNREADABLE = "StateUnreadable"
    INVALID_ROUTER_CONFIG = "InvalidRouterConfig"
    ROUTER_OUTDATED = "RouterOutdated"
    ROUTER_UNAVAILABLE = "RouterUnavailable"
    OWNED_ELSEWHERE = "OwnedElsewhere"
    NAME_CONFLICT = "NameConflict"
    NO_FREE_PORT = "NoFreePort"
    NO_FREE_SUBNET = "NoFreeSubnet"
    DEPLOYMENT_HAS_TRAFFIC = "DeploymentHasTraffic"
    CONNECTIONS_UNREADABLE = "ConnectionsUnreadable"
    # Kubernetes target
    FORBIDDEN = "Forbidden"
    NAMESPACE_MISSING = "NamespaceMissing"
    CONFLICT = "Conflict"
    KUBERNETES_API_ERROR = "KubernetesApiError"
    IMAGE_PUSH_FAILURE = "ImagePushFailure"
    IMAGE_MISSING = "ImageMissing"
    GATEWAY_API_MISSING = "GatewayApiMissing"
    ROUTER_CONFIG_NOT_SERVED = "RouterConfigNotServed"
    INVALID_STATE = "InvalidState"
    HAS_TRAFFIC = "HasTraffic"
    # The status target (read-only, from status files)
    INVALID_STATUS = "InvalidStatus"
    READ_ONLY_TARGET = "ReadOnlyTarget"

    @property
    def kind(self) -> ErrorKind:
        return _KINDS[self]


_T, _P, _U = ErrorKind.TRANSIENT, ErrorKind.PERMANENT, ErrorKind.UNAVAILABLE
_KINDS: dict[ErrorCode, ErrorKind] = {
    # Unknown failures are retried: the next pass starts afresh from what the target shows.
    ErrorCode.TARGET_ERROR: _T,
    ErrorCode.TARGET_UNAVAILABLE: _U,
    ErrorCode.INVALID_TARGET_CONFIG: _P,  # reconciler.yaml at this commit
    # Every NotFound a target raises names an object the next pass's observe sees missing
    # and the plan repairs (an endpoint's network, its router config, its keys Secret).
    ErrorCode.NOT_FOUND: _T,
    ErrorCode.MISSING_CONNECTION: _P,
    ErrorCode.IMAGE_BUILD_FAILURE: _P,
    ErrorCode.DEPLOYMENT_NOT_HEALTHY: _P,  # failed instances: "commit a change to retry"
    ErrorCode.TIMEOUT: _P,  # readiness never met within the deployment's own timeout
    ErrorCode.DEPLOYMENT_NOT_READY: _P,  # instances crashed at start
    ErrorCode.DOCKER_ERROR: _T,
    # Unreadable keys are replaced by the next pass; an unreadable volume is repaired.
    ErrorCode.STATE_UNREADABLE: _T,
    ErrorCode.INVALID_ROUTER_CONFIG: _P,
    ErrorCode.ROUTER_OUTDATED: _T,  # the next pass replaces the router (repair_endpoint)
    ErrorCode.ROUTER_UNAVAILABLE: _T,
    ErrorCode.OWNED_ELSEWHERE: _P,
    ErrorCode.NAME_CONFLICT: _P,
    ErrorCode.NO_FREE_PORT: _T,
    # A pool full now frees up as endpoints go (or reconciler.yaml gives a larger one).
    ErrorCode.NO_FREE_SUBNET: _T,
    ErrorCode.DEPLOYMENT_HAS_TRAFFIC: _T,  # a plan made against a stale view
    ErrorCode.CONNECTIONS_UNREADABLE: _P,
    ErrorCode.FORBIDDEN: _P,
    ErrorCode.NAMESPACE_MISSING: _P,
    ErrorCode.CONFLICT: _T,  # another writer got there first; the next pass re-reads
    ErrorCode.KUBERNETES_API_ERROR: _T,
    ErrorCode.IMAGE_PUSH_FAILURE: _T,
    ErrorCode.IMAGE_MISSING: _P,  # build_images false: someone must push it
    ErrorCode.GATEWAY_API_MISSING: _P,
    ErrorCode.ROUTER_CONFIG_NOT_SERVED: _T,
    ErrorCode.INVALID_STATE: _P,
    ErrorCode.HAS_TRAFFIC: _T,
    ErrorCode.INVALID_STATUS: _P,
    ErrorCode.READ_ONLY_TARGET: _P,
}


def error_kind(code: str | None) -> ErrorKind | None:
    """The kind of a code as a StepResult or status carries it; None for none or one this
    version does not know (a status file written by a newer one)."""
    if code is None:
        return None
    try:
        return ErrorCode(code).kind
    except ValueError:
        return None
