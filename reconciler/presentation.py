"""A plan for people and for scripts: text, JSON and markdown. PURE.

JSON is a contract (DESIGN.md): {"steps", "errors", "warnings"} with the stable action
names. Text is for a terminal and for `--dry-run` in CI logs; markdown is a pull-request
comment: traffic before and after per endpoint, then the steps, then warnings and errors.
All three print the same steps in the same order: what apply would run.
"""

from __future__ import annotations

import json

from reconciler.model.diagnostics import Diagnostic
from reconciler.model.plan import EndpointSummary, FieldChange, Plan, Step
from reconciler.model.specs import JsonValue, weight_of

OUTPUT_FORMATS = ("text", "json", "markdown")
_DIGEST_SHOWN = 12  # hex characters of a digest shown to people; JSON keeps them whole


def render_plan(plan: Plan, output: str) -> str:
    if output == "json":
        return plan_json(plan)
    if output == "markdown":
        return plan_markdown(plan)
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


def plan_text(plan: Plan) -> str:
    lines: list[str] = []
    if plan.errors:
        lines.append(f"Errors ({len(plan.errors)}): nothing will be applied")
        lines.extend(f"  {_diagnostic_line(e)}" for e in plan.errors)
    elif not plan.steps:
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


def plan_markdown(plan: Plan) -> str:
    out: list[str] = ["## Reconciler plan", ""]
    if plan.errors:
        out.append(f"**{len(plan.errors)} error(s): nothing will be applied.**")
        out.append("")
        out.append("| file | line | field | message |")
        out.append("|---|---:|---|---|")
        for e in plan.errors:
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
    elif not plan.errors:
        out.append("No changes: the target matches the repository.")
        out.append("")
    if plan.warnings:
        out.append("### Warnings")
        out.append("")
        out.extend(f"- {_md_escape(_diagnostic_line(w))}" for w in plan.warnings)
        out.append("")
    out.append(f"_{_summary_line(plan)}_")
    return "\n".join(out) + "\n"


def _md_code(value: JsonValue) -> str:
    return f"`{show_value(value)}`"


def exit_code(plan: Plan) -> int:
    """1 errors, 2 changes planned, 0 nothing to change (DESIGN.md)."""
    if plan.errors:
        return 1
    return 2 if plan.steps else 0
