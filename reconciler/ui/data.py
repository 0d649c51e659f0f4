"""What the dashboard shows, as JSON: status documents (and the desired state at the
applied commit) -> the objects `/api/...` serves and the pages render. PURE.

The pages are drawn from exactly these objects, so the API and the HTML never disagree.
Nothing here can hold a secret: status documents hold none (reconciler.status), and of the
desired state only fields that never carry one are taken (environment variables, which
may, are left out; a connection reference or a literal value alike).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.model.specs import DeploymentSpec, EnvironmentSpec, to_json
from reconciler.model.state import DesiredState
from reconciler.ui.source import StatusRevision, StatusSnapshot

# The four states the overview sorts endpoints into (issue 14).
SUCCEEDED, UPDATING, FAILED, DEGRADED = "Succeeded", "Updating", "Failed", "Degraded"
_UPDATING_STATES = {"Creating", "Updating", "Scaling", "Deleting"}
_FAILED_STATES = {"Failed", "Canceled"}


def overview(snap: StatusSnapshot) -> dict[str, Any]:
    """`GET /api/endpoints`: every endpoint of the status branch, summarised."""
    return {
        "status_branch": snap.branch,
        "status_commit": snap.status_commit,
        "written_at": snap.written_at,
        "branch_head": snap.branch_head,
        "problem": snap.problem or None,
        "endpoints": [
            summary(doc, changed_at=snap.changed_at.get(name), branch_head=snap.branch_head)
            for name, doc in sorted(snap.docs.items())
        ],
    }


def summary(
    doc: Mapping[str, Any], *, changed_at: int | None, branch_head: str | None
) -> dict[str, Any]:
    """One endpoint as the overview shows it."""
    deployments = [
        _deployment(name, d) for name, d in sorted(_mapping(doc.get("deployments")).items())
    ]
    applied = _text(doc.get("commit"))
    return {
        "name": str(doc.get("endpoint")),
        "state": endpoint_state(doc),
        "provisioning_state": _text(doc.get("provisioning_state")),
        "health": _text(doc.get("health")),
        "target": _text(doc.get("target")),
        "scoring_uri": _text(doc.get("scoring_uri")),
        "auth_mode": _text(doc.get("auth_mode")),
        "applied_commit": applied,
        "branch_head": branch_head,
        # None: unknown (no commit recorded, or no branch to compare with).
        "up_to_date": (applied == branch_head) if applied and branch_head else None,
        "traffic": _shares(doc.get("traffic")),
        "mirror_traffic": _shares(doc.get("mirror_traffic")),
        "instances": {
            "ready": sum(d["ready_instances"] for d in deployments),
            "desired": sum(d["instance_count"] for d in deployments),
        },
        "deployments": deployments,
        "last_pass": {"changed_at": changed_at, "outcome": pass_outcome(doc)},
        "errors": [_error(e) for e in _sequence(doc.get("errors"))],
        "last_error": _text(doc.get("last_error")),
        "in_progress_steps": [_step(s) for s in _sequence(doc.get("in_progress_steps"))],
        "pending_steps": [_step(s) for s in _sequence(doc.get("pending_steps"))],
        "notes": [str(n) for n in _sequence(doc.get("notes"))],
    }


def endpoint_state(doc: Mapping[str, Any]) -> str:
    """Succeeded, Updating, Failed or Degraded: the state the overview shows first."""
    state = _text(doc.get("provisioning_state")) or ""
    deployment_states = {
        _text(d.get("provisioning_state"))
        for d in _mapping(doc.get("deployments")).values()
        if isinstance(d, Mapping)
    }
    if state in _FAILED_STATES or deployment_states & _FAILED_STATES:
        return FAILED
    if state in _UPDATING_STATES or deployment_states & _UPDATING_STATES:
        return UPDATING
    if doc.get("in_progress_steps") or doc.get("pending_steps"):
        return UPDATING
    health = _text(doc.get("health"))
    if health == "Progressing":
        return UPDATING
    if health not in (None, "Healthy") or doc.get("errors") or doc.get("last_error"):
        return DEGRADED
    return SUCCEEDED


def pass_outcome(doc: Mapping[str, Any]) -> str:
    """How the last pass that wrote this status ended, in a few words."""
    if doc.get("errors"):
        return "invalid desired state"
    if endpoint_state(doc) == FAILED:
        return "failed"
    if doc.get("in_progress_steps"):
        return "in progress"
    if doc.get("pending_steps"):
        return "steps left undone"
    if doc.get("last_error"):
        return "needs repair"
    return "converged"


def endpoint_detail(
    snap: StatusSnapshot, name: str, desired: DesiredState | None
) -> dict[str, Any] | None:
    """`GET /api/endpoints/NAME`: the summary, with what the repository declares at the
    applied commit (model, environment, sizes, request settings, probes); None when the
    status branch has no such endpoint."""
    doc = snap.docs.get(name)
    if doc is None:
        return None
    out = summary(doc, changed_at=snap.changed_at.get(name), branch_head=snap.branch_head)
    spec = desired.endpoint(name) if desired is not None else None
    out["rollout"] = rollout(doc.get("rollout"))
    out["declared"] = desired is not None
    out["description"] = spec.description if spec else None
    out["tags"] = dict(spec.tags) if spec else {}
    specs = {d.name: d for d in desired.deployments_of(name)} if desired is not None else {}
    for d in out["deployments"]:
        d["spec"] = _deployment_spec(specs[d["name"]]) if d["name"] in specs else None
    return out


def rollout(block: Any) -> dict[str, Any] | None:
    """The `rollout:` block the daemon's rollouter writes into a status file, as the
    endpoint page shows it: the state, step N/M, canary after stable, the reason, and the
    last verdict's figures and checks (None: no rollout recorded). Same keys as the file,
    each coerced, so a hand-edited status cannot make the page fail."""
    if not isinstance(block, Mapping):
        return None
    step = block.get("step")
    steps = block.get("steps")
    return {
        "state": _text(block.get("state")),
        "stable": _text(block.get("stable")),
        "canary": _text(block.get("canary")),
        "step": step if isinstance(step, int) else None,
        "steps": steps if isinstance(steps, int) else None,
        "step_spec": _text(block.get("step_spec")),
        "mode": _text(block.get("mode")),
        "reason": _text(block.get("reason")),
        "start_commit": _text(block.get("start_commit")),
        "last_commit": _text(block.get("last_commit")),
        "branch": _text(block.get("branch")),
        # `prometheus ADDRESS` when the policy reads its figures there; None: the router.
        "metrics": _text(block.get("metrics")),
        "analysis": _analysis(block.get("analysis")),
    }


def _analysis(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        return None
    shadow = value.get("shadow")
    elapsed = value.get("elapsed_s")
    return {
        "outcome": _text(value.get("outcome")),
        "reason": _text(value.get("reason")),
        "elapsed_s": elapsed if isinstance(elapsed, (int, float)) else None,
        # The canary's figures, then the stable's (role: which of the two).
        "deployments": [
            {"role": role, **_figures(value.get(role))}
            for role in ("canary", "stable")
            if isinstance(value.get(role), Mapping)
        ],
        "shadow": {"agree": _int(shadow.get("agree")), "disagree": _int(shadow.get("disagree"))}
        if isinstance(shadow, Mapping)
        else None,
        "checks": [
            {
                "threshold": _text(c.get("threshold")),
                "state": _text(c.get("state")),
                "text": _text(c.get("text")),
            }
            for c in (_mapping(c) for c in _sequence(value.get("checks")))
        ],
    }


def _figures(value: Any) -> dict[str, Any]:
    value = _mapping(value)
    p99 = value.get("p99_ms")
    return {
        "deployment": _text(value.get("deployment")),
        "kind": _text(value.get("kind")),
        "requests": _int(value.get("requests")),
        "errors": _int(value.get("errors")),
        "p99_ms": p99 if isinstance(p99, (int, float)) else None,
    }


def _deployment_spec(spec: DeploymentSpec) -> dict[str, Any]:
    scale = spec.scale_settings
    return {
        "model": f"{spec.model.name}:{spec.model.version}" if spec.model else None,
        "model_type": spec.model.type if spec.model else None,
        "model_digest": spec.model.digest if spec.model and spec.model.digest else None,
        "environment": _environment(spec.environment),
        "instance_type": spec.instance_type,
        "instance_count": spec.instance_count,
        "autoscale": {
            "min_instances": scale.min_instances,
            "max_instances": scale.max_instances,
            "target_utilization_percentage": scale.target_utilization_percentage,
        }
        if scale.type == "target_utilization"
        else None,
        "request_settings": to_json(spec.request_settings),
        "liveness_probe": to_json(spec.liveness_probe),
        "readiness_probe": to_json(spec.readiness_probe),
        "description": spec.description,
        "tags": dict(spec.tags),
        "file": spec.source.file if spec.source else None,
    }


def _environment(env: EnvironmentSpec) -> str:
    if env.name:
        return f"{env.name}:{env.version}" if env.version else env.name
    return env.image or "(built from the repository)"


def history(name: str, revisions: Sequence[StatusRevision]) -> dict[str, Any]:
    """`GET /api/endpoints/NAME/history`: the status branch's timeline of one endpoint,
    newest first; each entry says what changed since the one before it (the oldest shown
    has nothing before it in the window)."""
    entries: list[dict[str, Any]] = []
    for i, rev in enumerate(revisions):
        older = revisions[i + 1].doc if i + 1 < len(revisions) else None
        first = i + 1 >= len(revisions)
        doc = rev.doc
        entries.append(
            {
                "status_commit": rev.status.commit,
                "time": rev.status.time,
                "status_subject": rev.status.subject,
                "applied_commit": _text(doc.get("commit")) if doc else None,
                "author": rev.applied.author if rev.applied else None,
                "subject": rev.applied.subject if rev.applied else None,
                "applied_time": rev.applied.time if rev.applied else None,
                "removed": doc is None,
                "state": endpoint_state(doc) if doc else None,
                "traffic": _shares(doc.get("traffic")) if doc else [],
                "mirror_traffic": _shares(doc.get("mirror_traffic")) if doc else [],
                "changes": [] if first else changes(older, doc),
            }
        )
    return {"endpoint": name, "entries": entries}


def changes(
    older: Mapping[str, Any] | None, newer: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """What a status commit changed of an endpoint: traffic, mirror traffic, state, and
    per deployment its presence and instance counts ({field, from, to})."""
    old, new = older or {}, newer or {}
    found: list[dict[str, Any]] = []
    for key in ("traffic", "mirror_traffic"):
        before, after = _mapping(old.get(key)), _mapping(new.get(key))
        for dep in sorted(set(before) | set(after)):
            if before.get(dep, 0) != after.get(dep, 0):
                found.append(
                    {"field": f"{key}.{dep}", "from": before.get(dep, 0), "to": after.get(dep, 0)}
                )
    if old.get("provisioning_state") != new.get("provisioning_state"):
        found.append(
            {
                "field": "provisioning_state",
                "from": old.get("provisioning_state"),
                "to": new.get("provisioning_state"),
            }
        )
    before_d, after_d = _mapping(old.get("deployments")), _mapping(new.get("deployments"))
    for dep in sorted(set(before_d) | set(after_d)):
        b, a = _mapping(before_d.get(dep)), _mapping(after_d.get(dep))
        for fld in ("instance_count", "ready_instances", "spec_digest"):
            if b.get(fld) != a.get(fld):
                found.append(
                    {"field": f"deployments.{dep}.{fld}", "from": b.get(fld), "to": a.get(fld)}
                )
    return found


def _deployment(name: str, d: Any) -> dict[str, Any]:
    d = _mapping(d)
    return {
        "name": str(name),
        "provisioning_state": _text(d.get("provisioning_state")),
        "health": _text(d.get("health")),
        "instance_type": _text(d.get("instance_type")),
        "instance_count": _int(d.get("instance_count")),
        "ready_instances": _int(d.get("ready_instances")),
        "scale_settings": dict(_mapping(d.get("scale_settings"))),
        # The autoscaler's last decision: status carries it as text (the Docker target's
        # reason); reading it as a mapping dropped it, so the page never showed it.
        "autoscale": _decision(d.get("autoscale")),
        "spec_digest": _text(d.get("spec_digest")),
        "last_error": _text(d.get("last_error")),
    }


def _decision(value: Any) -> str | None:
    """The autoscaler's last decision as text; a mapping (a hand-edited status) as its
    pairs; None when there is none."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or None
    return _text(value) or None


def _shares(value: Any) -> list[dict[str, Any]]:
    """Traffic as [{deployment, percent}] in the file's order, percent clamped to 0..100."""
    return [
        {"deployment": str(k), "percent": max(0, min(100, _int(v)))}
        for k, v in _mapping(value).items()
    ]


def _error(e: Any) -> dict[str, Any]:
    e = _mapping(e)
    line = e.get("line")
    return {
        "file": _text(e.get("file")),
        "line": line if isinstance(line, int) else None,
        "field": _text(e.get("field")),
        "message": _text(e.get("message")),
    }


def _step(s: Any) -> dict[str, Any]:
    s = _mapping(s)
    return {
        "action": _text(s.get("action")),
        "deployment": _text(s.get("deployment")),
        "detail": _text(s.get("progress") or s.get("why")),
    }


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _sequence(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: infinity
        return 0
