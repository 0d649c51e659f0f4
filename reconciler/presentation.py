"""A plan for people and for scripts: text, JSON and markdown. PURE.

JSON is a contract (DESIGN.md): {"steps", "errors", "warnings"} with the stable action
names; policy violations are among its errors. Text is for a terminal and for `--dry-run`
in CI logs. Markdown is the pull-request comment a reviewer reads in ten seconds: policy
violations first (they stop the merge), then per endpoint a table of live traffic (with a
bar) and mirror share before and after, then the steps in order, then "What changes": per
deployment with a step or whose share moves, what the change touches (model and its digest,
code files, environment packages, instances and the quota figure ceil(1.2 x n) x cores
against the target's capacity), then warnings. All three print the same steps in the same
order: what apply would run.

The review details are plain values (Review, DeploymentReview, ...) defined here, where
they are rendered; reconciler.review works them out from the two revisions' files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from reconciler.model.diagnostics import Diagnostic
from reconciler.model.plan import EndpointSummary, FieldChange, Plan, Step
from reconciler.model.specs import JsonValue, weight_of
from reconciler.policies import is_violation

_DIGEST_SHOWN = 12  # hex characters of a digest shown to people; JSON keeps them whole
_LISTED = 10  # files or packages listed by name before "and N more"


@dataclass(frozen=True, slots=True)
class PackageChange:
    """One package of an environment: added (before None), removed (after None), or
    upgraded, downgraded or changed; requirements as written."""

    name: str
    before: str | None
    after: str | None
    kind: str  # added, removed, upgraded, downgraded, changed
    manager: str  # pip or conda


@dataclass(frozen=True, slots=True)
class CodeFileChange:
    """A file of a deployment's code folder added, removed or modified."""

    path: str  # relative to the code folder
    kind: str  # added, removed, modified


@dataclass(frozen=True, slots=True)
class DeploymentReview:
    """What one deployment's change touches, before and after (None: absent)."""

    endpoint: str
    deployment: str
    status: str  # new, changed, deleted; traffic: only its traffic or mirror share changes
    model_before: str | None = None  # name:version
    model_after: str | None = None
    model_digest_before: str | None = None
    model_digest_after: str | None = None
    code_before: str | None = None  # the code folder
    code_after: str | None = None
    code_files: tuple[CodeFileChange, ...] = ()
    code_file_count: int = 0  # files of a new deployment's code folder
    environment_before: str | None = None  # name:version, or the image
    environment_after: str | None = None
    environment_digest_before: str | None = None
    environment_digest_after: str | None = None
    image_before: str | None = None
    image_after: str | None = None
    packages: tuple[PackageChange, ...] = ()
    instance_type_before: str | None = None
    instance_type_after: str | None = None
    instance_count_before: int | None = None
    instance_count_after: int | None = None
    cores_before: int | None = None  # cores of one instance; None: instance type unknown
    cores_after: int | None = None
    quota_before: int | None = None  # ceil(1.2 x instances) x cores
    quota_after: int | None = None
    traffic_before: int = 0  # percent of live traffic
    traffic_after: int = 0
    mirror_before: int = 0  # percent of live traffic copied to it
    mirror_after: int = 0


@dataclass(frozen=True, slots=True)
class RolloutPreview:
    """A rollout the change starts once merged (rollouts.machine.rollout_starts), as the
    review shows it: who is stable, who is new, and the schedule and thresholds."""

    endpoint: str
    stable: str
    canary: str
    changed: tuple[str, ...]  # ("new",) or what of the canary changed: model, code, ...
    schedule: str  # Rollout.schedule(): steps, interval, minimum requests, thresholds
    mode: str  # commit or pull-request


@dataclass(frozen=True, slots=True)
class Review:
    """The review details of a plan: per deployment, and the quota of the whole target."""

    deployments: tuple[DeploymentReview, ...] = ()
    target: str | None = None
    capacity_cores: int | None = None
    quota_before: int = 0  # every deployment of the repository, summed
    quota_after: int = 0
    # Rollouts the change starts, and why an endpoint under a policy starts none.
    rollouts: tuple[RolloutPreview, ...] = ()
    rollout_notes: tuple[tuple[str, str], ...] = ()  # (endpoint, why)


def render_plan(plan: Plan, output: str, *, review: Review | None = None) -> str:
    if output == "json":
        return plan_json(plan)
    if output == "markdown":
        return plan_markdown(plan, review=review)
    return plan_text(plan)


def plan_json(plan: Plan) -> str:
    return json.dumps(plan.as_json(), indent=2, sort_keys=False) + "\n"


def show_value(value: JsonValue) -> str:
    """A value as a person reads it: digests shortened, absent as '-'."""
    if value is None:
        return "-"
    if isinstance(value, str):
        if value.startswith("sha256:") and len(value) > 7 + _DIGEST_SHOWN:
            return value[: 7 + _DIGEST_SHOWN]
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(", ", ": "))
    return str(value)


def _change_line(change: FieldChange) -> str:
    return f"{change.path}: {show_value(change.before)} -> {show_value(change.after)}"


def _step_title(number: int, step: Step) -> str:
    title = f"{number}. {step.action.value} {step.target_name}"
    if step.wait_healthy:
        title += f" (waits until {', '.join(step.wait_healthy)} healthy)"
    return title


def _diagnostic_line(d: Diagnostic) -> str:
    return str(d)


def _split_errors(plan: Plan) -> tuple[list[Diagnostic], list[Diagnostic]]:
    """(errors of the files, policy violations): a plan with violations still has steps."""
    violations = [e for e in plan.errors if is_violation(e)]
    return [e for e in plan.errors if not is_violation(e)], violations


def plan_text(plan: Plan) -> str:
    lines: list[str] = []
    if plan.revision is not None:
        lines.append(f"Revision: {plan.revision.describe()}")
    errors, violations = _split_errors(plan)
    if violations:
        lines.extend([""] if lines else [])
        lines.append(
            f"Policy violations ({len(violations)}): this change breaks the repository's policies"
        )
        lines.extend(f"  {_diagnostic_line(v)}" for v in violations)
    if errors:
        if lines:
            lines.append("")
        lines.append(f"Errors ({len(errors)}): nothing will be applied")
        lines.extend(f"  {_diagnostic_line(e)}" for e in errors)
    elif not plan.steps:
        lines.extend([""] if lines else [])
        lines.append("No changes: the target matches the repository.")
    else:
        current = None
        for number, step in enumerate(plan.steps, start=1):
            if step.endpoint != current:
                current = step.endpoint
                count = sum(1 for s in plan.steps if s.endpoint == current)
                if lines:
                    lines.append("")
                lines.append(f"Endpoint {current} ({count} step{'s' if count != 1 else ''})")
            lines.append(f"  {_step_title(number, step)}")
            if step.reason:
                lines.append(f"       {step.reason}")
            lines.extend(f"       {_change_line(c)}" for c in step.changes)
    if plan.warnings:
        lines.append("")
        lines.append(f"Warnings ({len(plan.warnings)}):")
        lines.extend(f"  {_diagnostic_line(w)}" for w in plan.warnings)
    lines.append("")
    lines.append(_summary_line(plan))
    return "\n".join(lines) + "\n"


def _summary_line(plan: Plan) -> str:
    def n(count: int, word: str) -> str:
        return f"{count} {word}{'' if count == 1 else 's'}"

    return (
        f"Plan: {n(len(plan.steps), 'step')}, {n(len(plan.errors), 'error')}, "
        f"{n(len(plan.warnings), 'warning')}."
    )


def _bar(percent: int, width: int = 10) -> str:
    full = round(percent * width / 100)
    return "█" * full + "░" * (width - full)


def _traffic_table(summary: EndpointSummary) -> list[str]:
    rows = ["| deployment | traffic before | traffic after | mirror before | mirror after |"]
    rows.append("|---|---:|---:|---:|---:|")
    for name in summary.deployments:
        tb, ta = weight_of(summary.traffic_before, name), weight_of(summary.traffic_after, name)
        mb, ma = weight_of(summary.mirror_before, name), weight_of(summary.mirror_after, name)
        changed = "**" if (tb, mb) != (ta, ma) else ""
        rows.append(
            f"| {changed}{name}{changed} | {tb}% `{_bar(tb)}` | {ta}% `{_bar(ta)}` "
            f"| {mb}% | {ma}% |"
        )
    return rows


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def plan_markdown(plan: Plan, *, review: Review | None = None) -> str:
    out: list[str] = ["## Reconciler plan", ""]
    if plan.revision is not None:
        out.extend([f"Revision: {_md_escape(plan.revision.describe())}", ""])
    errors, violations = _split_errors(plan)
    if violations:
        many = "s" if len(violations) != 1 else ""
        out.append(f"**⛔ {len(violations)} policy violation{many}: this change may not merge.**")
        out.append("")
        for v in violations:
            rule = v.field.removeprefix("policies.")
            message = v.message.removeprefix(f"policy {rule}: ")
            where = f"{v.file}:{v.line}" if v.line else v.file
            out.append(f"- **{rule}** (`{where}`): {_md_escape(message)}")
        out.append("")
    if errors:
        out.append(f"**{len(errors)} error(s): nothing will be applied.**")
        out.append("")
        out.append("| file | line | field | message |")
        out.append("|---|---:|---|---|")
        for e in errors:
            out.append(f"| `{e.file}` | {e.line or ''} | `{e.field}` | {_md_escape(e.message)} |")
        out.append("")
    changed = {s.endpoint for s in plan.steps}
    for summary in plan.endpoints:
        if summary.endpoint not in changed:
            continue
        what = " (new)" if summary.created else " (deleted)" if summary.deleted else ""
        out.append(f"### Endpoint `{summary.endpoint}`{what}")
        out.append("")
        out.extend(_traffic_table(summary))
        out.append("")
    if plan.steps:
        out.append("### Steps, in order")
        out.append("")
        for number, step in enumerate(plan.steps, start=1):
            wait = (
                f" — waits until {', '.join(step.wait_healthy)} healthy"
                if step.wait_healthy
                else ""
            )
            out.append(f"{number}. `{step.action.value}` **{step.target_name}**{wait}  ")
            out.append(f"   {_md_escape(step.reason)}")
            for c in step.changes:
                out.append(f"   - `{c.path}`: {_md_code(c.before)} → {_md_code(c.after)}")
        out.append("")
    elif not errors:
        out.append("No changes: the target matches the repository.")
        out.append("")
    if review is not None and (review.rollouts or review.rollout_notes):
        out.extend(_rollouts(review))
    if review is not None and review.deployments:
        out.extend(_what_changes(review))
    if plan.warnings:
        out.append("### Warnings")
        out.append("")
        out.extend(f"- {_md_escape(_diagnostic_line(w))}" for w in plan.warnings)
        out.append("")
    out.append(f"_{_summary_line(plan)}_")
    return "\n".join(out) + "\n"


def _rollouts(review: Review) -> list[str]:
    """The rollouts a merge starts: the person approving the traffic change sees the
    schedule and the thresholds the daemon will hold the new version to."""
    out = ["### Rollouts this change starts", ""]
    for r in review.rollouts:
        what = "new" if r.changed == ("new",) else f"new {', '.join(r.changed)}"
        how = (
            "each step a commit to the watched branch"
            if r.mode == "commit"
            else "each step a branch to merge (pull-request mode)"
        )
        out.append(
            f"- **`{r.endpoint}`**: `{r.canary}` ({_md_escape(what)}) against the stable "
            f"`{r.stable}`, {how}.  "
        )
        out.append(f"  {_md_escape(r.schedule)}")
    for endpoint, why in review.rollout_notes:
        out.append(f"- `{endpoint}`: {_md_escape(why)}")
    out.append("")
    return out


def _md_code(value: JsonValue) -> str:
    return f"`{show_value(value)}`"


# --------------------------------------------------------------------------------------
# "What changes": the review details of each deployment with a step


def _what_changes(review: Review) -> list[str]:
    out = ["### What changes", ""]
    for r in review.deployments:
        status = {"changed": "", "traffic": " (traffic only)"}.get(r.status, f" ({r.status})")
        out.append(f"#### `{r.endpoint}/{r.deployment}`{status}")
        out.append("")
        out.extend(f"- {line}" for line in _deployment_lines(r))
        out.append("")
    total = f"{review.quota_before} → **{review.quota_after}** cores"
    if review.capacity_cores is not None:
        fits = "fits" if review.quota_after <= review.capacity_cores else "**exceeds**"
        total += f", {fits} the {review.capacity_cores} cores of target `{review.target}`"
    elif review.target is not None:
        total += f"; target `{review.target}` sets no `capacity_cores`"
    out.append(f"**Quota** of all deployments (ceil(1.2 x instances) x cores): {total}.")
    out.append("")
    return out


def _deployment_lines(r: DeploymentReview) -> list[str]:
    lines = [_instances_line(r)]
    if r.status == "deleted":
        return lines
    model = _model_line(r)
    if model:
        lines.append(model)
    code = _code_line(r)
    if code:
        lines.append(code)
    environment = _environment_line(r)
    if environment:
        lines.append(environment)
    return lines


def _instances_line(r: DeploymentReview) -> str:
    def side(count: int | None, kind: str | None) -> str:
        return f"`{kind}` x {count}" if kind else f"{count}"

    before = side(r.instance_count_before, r.instance_type_before)
    after = side(r.instance_count_after, r.instance_type_after)
    kind = f"`{r.instance_type_after}`: " if r.instance_type_after else ""
    if r.status == "new":
        text = f"{kind}{r.instance_count_after}"
    elif r.status == "deleted":
        kind = f"`{r.instance_type_before}`: " if r.instance_type_before else ""
        text = f"{kind}{r.instance_count_before}, removed"
        if r.quota_before:
            text += f"; frees {r.quota_before} cores of quota"
        return f"**instances** {text}"
    elif r.instance_type_before != r.instance_type_after:
        text = f"{before} → {after} (instances replaced)"
    elif r.instance_count_before != r.instance_count_after:
        text = f"{kind}{r.instance_count_before} → {r.instance_count_after}"
    else:
        text = f"{kind}{r.instance_count_after} (unchanged)"
    if r.quota_after is None or r.cores_after is None:
        return f"**instances** {text}; no quota figure (instance type not in the table){_share(r)}"
    text += (
        f"; quota ceil(1.2 x {r.instance_count_after}) x {r.cores_after} = "
        f"**{r.quota_after} cores**"
    )
    if r.quota_before is not None and r.quota_before != r.quota_after:
        text += f" (was {r.quota_before})"
    return f"**instances** {text}{_share(r)}"


def _share(r: DeploymentReview) -> str:
    """The traffic these instances will serve, when it changes: capacity against load."""
    parts = []
    if r.traffic_before != r.traffic_after:
        parts.append(f"; live traffic {r.traffic_before}% → **{r.traffic_after}%**")
    if r.mirror_before != r.mirror_after:
        parts.append(f"; mirror {r.mirror_before}% → **{r.mirror_after}%**")
    return "".join(parts)


def _digest(value: str | None) -> str:
    return f"`{show_value(value)}`"


def _model_line(r: DeploymentReview) -> str | None:
    if r.model_after is None:
        return None if r.model_before is None else f"**model** `{r.model_before}` → none"
    if r.status == "new" or r.model_before is None:
        return f"**model** `{r.model_after}` · {_digest(r.model_digest_after)}"
    if r.model_digest_before == r.model_digest_after and r.model_before == r.model_after:
        return None
    digests = f"{_digest(r.model_digest_before)} → {_digest(r.model_digest_after)}"
    if r.model_before == r.model_after:
        return f"**model** `{r.model_after}`, same version with other files · {digests}"
    return f"**model** `{r.model_before}` → `{r.model_after}` · {digests}"


def _more(shown: list[str], total: int) -> str:
    text = ", ".join(shown)
    return text + (f" and {total - len(shown)} more" if total > len(shown) else "")


def _code_line(r: DeploymentReview) -> str | None:
    if r.code_after is None:
        return None if r.code_before is None else f"**code** `{r.code_before}` → none"
    if r.status == "new" or r.code_before is None:
        files = r.code_file_count
        return f"**code** `{r.code_after}`: {files} file{'' if files == 1 else 's'}"
    folder = (
        f"`{r.code_after}`"
        if r.code_before == r.code_after
        else f"`{r.code_before}` → `{r.code_after}`"
    )
    if not r.code_files:
        return None if r.code_before == r.code_after else f"**code** {folder}: same files"
    count = len(r.code_files)
    shown = [f"`{c.path}` ({c.kind})" for c in r.code_files[:_LISTED]]
    plural = "" if count == 1 else "s"
    return f"**code** {folder}: {count} file{plural} changed: {_more(shown, count)}"


_PACKAGE_WORDS = ("added", "removed", "upgraded", "downgraded", "changed")


def _package_text(p: PackageChange) -> str:
    if p.before is None:
        return f"`{p.after}`"
    if p.after is None:
        return f"`{p.before}`"
    return f"`{p.before}` → `{p.after}`"


def _environment_line(r: DeploymentReview) -> str | None:
    if r.environment_after is None:
        return None
    if r.status == "new" or r.environment_before is None:
        text = f"**environment** `{r.environment_after}`"
        if r.image_after and r.image_after != r.environment_after:
            text += f" (image `{r.image_after}`)"
        groups = []
        for manager in ("conda", "pip"):
            names = [_package_text(p) for p in r.packages if p.manager == manager]
            if names:
                groups.append(f"{manager} {_more(names[:_LISTED], len(names))}")
        return text + (f": {'; '.join(groups)}" if groups else "")
    if r.environment_digest_before == r.environment_digest_after:
        return None
    name = (
        f"`{r.environment_after}`"
        if r.environment_before == r.environment_after
        else f"`{r.environment_before}` → `{r.environment_after}`"
    )
    parts: list[str] = []
    if r.image_before != r.image_after:
        parts.append(f"image `{r.image_before or '-'}` → `{r.image_after or '-'}`")
    for word in _PACKAGE_WORDS:
        chosen = [_package_text(p) for p in r.packages if p.kind == word]
        if chosen:
            parts.append(f"{word} {_more(chosen[:_LISTED], len(chosen))}")
    if not parts:
        parts.append("its build context or inference config changed")
    return f"**environment** {name}: {'; '.join(parts)}"


def exit_code(plan: Plan) -> int:
    """1 errors, 2 changes planned, 0 nothing to change (DESIGN.md)."""
    if plan.errors:
        return 1
    return 2 if plan.steps else 0
