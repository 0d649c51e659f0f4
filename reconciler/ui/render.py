"""The dashboard's HTML, drawn from the JSON of reconciler.ui.data. Does no I/O.

Every value is escaped unless it is markup this module made (Safe): templates are
string.Template strings filled by `fill`, which escapes each value with html.escape, so a
description, a tag or a commit message from the repository can never become markup. Bars
are HTML and CSS (a width class per percent: the Content-Security-Policy allows no inline
style), and the pages work without JavaScript; static/live.js only refreshes them.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from string import Template
from typing import Any
from urllib.parse import quote

# Colours of deployments in bars, by position (static/style.css: .c0 to .c7).
PALETTE = 8


class Safe(str):
    """Markup made here from escaped values: `fill` inserts it as it is."""

    __slots__ = ()


EMPTY = Safe("")


def esc(value: Any) -> Safe:
    if isinstance(value, Safe):
        return value
    return Safe(html.escape("" if value is None else str(value), quote=True))


def fill(template: str, **values: Any) -> Safe:
    """The template with every value escaped (Safe values inserted as they are)."""
    return Safe(Template(template).substitute({k: esc(v) for k, v in values.items()}))


def join(parts: Iterable[Any], sep: str = "") -> Safe:
    return Safe(esc(sep).join(esc(p) for p in parts))


def short(commit: Any) -> str:
    return str(commit)[:12] if commit else "none"


def when(seconds: Any) -> str:
    if not isinstance(seconds, int):
        return "unknown"
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, ValueError, OSError):
        # A commit time git takes and a calendar does not (the year three million).
        return f"{seconds} s after 1970"


def endpoint_href(name: str) -> str:
    return "/endpoints/" + quote(name, safe="")


_LAYOUT = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<link rel="stylesheet" href="/static/style.css">
<script src="/static/live.js" defer></script>
</head>
<body data-fingerprint="$fingerprint">
<header class="top"><a class="brand" href="/">Endpoints</a>
<span class="where">$where</span>
<span id="live" class="live" hidden>live</span></header>
<main id="content">
$body
</main>
$after</body>
</html>
"""


def page(*, title: str, body: Safe, fingerprint: str, where: str, after: Safe = EMPTY) -> str:
    """A whole page. `after` sits outside #content, which live updates replace: what a
    person is typing there (the test form) survives them."""
    return str(
        fill(_LAYOUT, title=title, body=body, fingerprint=fingerprint, where=where, after=after)
    )


def overview_page(data: Mapping[str, Any], *, fingerprint: str, daemon: Safe = EMPTY) -> str:
    endpoints = data.get("endpoints") or []
    cards = join(endpoint_card(e, link=True) for e in endpoints)
    if not endpoints:
        cards = fill(
            '<p class="empty">No status on branch $branch yet: no pass has been recorded.</p>',
            branch=data.get("status_branch"),
        )
    body = fill(
        '<h1>Endpoints <span class="count">$count</span></h1>\n$head\n$daemon$problem'
        '<div class="cards">$cards</div>',
        count=len(endpoints),
        head=_status_line(data),
        daemon=daemon,
        problem=_problem(data.get("problem")),
        cards=cards,
    )
    return page(title="Endpoints", body=body, fingerprint=fingerprint, where=_where(data))


def _where(data: Mapping[str, Any]) -> str:
    return f"status branch {data.get('status_branch')} at {short(data.get('status_commit'))}"


def _status_line(data: Mapping[str, Any]) -> Safe:
    return fill(
        '<p class="meta">Status branch <code>$branch</code> at <code>$commit</code>, '
        "written $written; the repository's HEAD is <code>$head</code>.</p>",
        branch=data.get("status_branch"),
        commit=short(data.get("status_commit")),
        written=when(data.get("written_at")),
        head=short(data.get("branch_head")),
    )


def _problem(problem: Any) -> Safe:
    return fill('<p class="problem">$p</p>', p=problem) if problem else Safe("")


def endpoint_card(e: Mapping[str, Any], *, link: bool) -> Safe:
    name = str(e.get("name"))
    title = (
        fill('<a href="$href">$name</a>', href=endpoint_href(name), name=name)
        if link
        else esc(name)
    )
    instances = e.get("instances") or {}
    last = e.get("last_pass") or {}
    return fill(
        '<article class="card state-$state_class" data-endpoint="$name">\n'
        '<h2>$title <span class="state">$state</span> <span class="health">$health</span></h2>\n'
        "$bars"
        '<dl class="facts">'
        "<dt>Instances</dt><dd>$ready/$desired ready $meter</dd>"
        "<dt>Revision</dt><dd>$revision</dd>"
        "<dt>Last pass</dt><dd>$outcome; status changed $changed</dd>"
        "<dt>Target</dt><dd>$target$uri</dd>"
        "</dl>\n$errors$steps</article>\n",
        state_class=str(e.get("state") or "").lower(),
        name=name,
        title=title,
        state=e.get("state"),
        health=e.get("health") or "",
        bars=traffic_bars(e.get("traffic") or [], e.get("mirror_traffic") or []),
        ready=instances.get("ready", 0),
        desired=instances.get("desired", 0),
        meter=fill(
            '<meter min="0" max="$max" value="$value"></meter>',
            max=max(1, int(instances.get("desired") or 0)),
            value=instances.get("ready", 0),
        ),
        revision=_revision(e),
        outcome=last.get("outcome"),
        changed=when(last.get("changed_at")),
        target=e.get("target") or "unknown",
        uri=fill(" · <code>$u</code>", u=e["scoring_uri"]) if e.get("scoring_uri") else "",
        errors=errors_block(e),
        steps=_steps(e),
    )


def _revision(e: Mapping[str, Any]) -> Safe:
    applied, head = e.get("applied_commit"), e.get("branch_head")
    if e.get("up_to_date") is True:
        verdict = Safe('<span class="ok">the branch head</span>')
    elif e.get("up_to_date") is False:
        verdict = fill('<span class="behind">branch head is <code>$h</code></span>', h=short(head))
    else:
        verdict = Safe("branch head unknown")
    return fill("applied <code>$a</code> · $v", a=short(applied), v=verdict)


def traffic_bars(traffic: Sequence[Mapping[str, Any]], mirror: Sequence[Mapping[str, Any]]) -> Safe:
    """A stacked bar of live traffic by deployment, and one of mirrored traffic, with a
    legend in text (the bars are for the eye; the numbers are in the legend)."""
    colours = {str(s["deployment"]): i % PALETTE for i, s in enumerate(traffic)}
    for s in mirror:
        colours.setdefault(str(s["deployment"]), len(colours) % PALETTE)
    out = _bar(traffic, colours, label="Traffic", kind="", empty=Safe("<li>none</li>"))
    if mirror:
        out = fill("$a$b", a=out, b=_bar(mirror, colours, label="Mirror", kind="mirror"))
    return out


def _bar(
    shares: Sequence[Mapping[str, Any]],
    colours: Mapping[str, int],
    *,
    label: str,
    kind: str,
    empty: Safe | None = None,
) -> Safe:
    """One labelled bar (kind "" for live traffic, "mirror" for mirrored) and its legend."""
    segments = join(
        fill(
            '<span class="seg$k w$p c$c" title="$t$d $p%"></span>',
            k=f" {kind}" if kind else "",
            t=f"{kind} " if kind else "",
            p=int(s["percent"]),
            c=colours[str(s["deployment"])],
            d=s["deployment"],
        )
        for s in shares
        if int(s["percent"]) > 0
    )
    legend = join(
        fill(
            '<li><span class="key$k c$c"></span>$d <b>$p%</b>$m</li>',
            k=f" {kind}" if kind else "",
            c=colours[str(s["deployment"])],
            d=s["deployment"],
            p=s["percent"],
            m=" mirrored" if kind else "",
        )
        for s in shares
    )
    aria = "mirror traffic" if kind else "traffic"
    return fill(
        '<div class="traffic"><div class="label">$label</div>'
        '<div class="bar" role="img" aria-label="$aria">$segments</div>'
        '<ul class="legend">$legend</ul></div>\n',
        label=label,
        aria=aria,
        segments=segments,
        legend=legend or empty or Safe(""),
    )


def errors_block(e: Mapping[str, Any]) -> Safe:
    items = [
        fill(
            "<li><code>$where</code> $field $message</li>",
            where=f"{err.get('file') or '?'}:{_or_unknown(err.get('line'))}",
            field=err.get("field") or "",
            message=err.get("message"),
        )
        for err in e.get("errors") or []
    ]
    out = Safe("")
    if items:
        out = fill('<ul class="errors">$items</ul>\n', items=join(items))
    if e.get("last_error"):
        out = fill('$out<pre class="error">$text</pre>\n', out=out, text=e["last_error"])
    for d in e.get("deployments") or []:
        if d.get("last_error"):
            out = fill(
                '$out<pre class="error">$name: $text</pre>\n',
                out=out,
                name=d.get("name"),
                text=d["last_error"],
            )
    return out


def _or_unknown(value: Any) -> str:
    return "?" if value is None else str(value)


def _steps(e: Mapping[str, Any]) -> Safe:
    rows = [
        fill(
            "<li>$kind: $action $dep ($detail)</li>",
            kind=kind,
            action=s.get("action"),
            dep=s.get("deployment") or "",
            detail=s.get("detail") or "",
        )
        for kind, key in (("in progress", "in_progress_steps"), ("left undone", "pending_steps"))
        for s in e.get(key) or []
    ]
    rows += [fill("<li>note: $n</li>", n=n) for n in e.get("notes") or []]
    return fill('<ul class="steps">$r</ul>\n', r=join(rows)) if rows else Safe("")


def endpoint_page(
    detail: Mapping[str, Any],
    timeline: Mapping[str, Any],
    *,
    fingerprint: str,
    where: str,
    live: Safe = EMPTY,
    after: Safe = EMPTY,
) -> str:
    """One endpoint; `live` (the daemon's: running steps, charts, plans, logs) goes
    before the history, `after` outside the part live updates replace."""
    tags = detail.get("tags") or {}
    body = fill(
        '<p class="crumbs"><a href="/">All endpoints</a></p>\n$card'
        "$description$tags$declared$rollout"
        '<h2 class="section">Deployments</h2>\n<div class="deployments">$deployments</div>\n'
        '$live<h2 class="section">History</h2>\n$history',
        live=live,
        card=endpoint_card(detail, link=False),
        description=fill('<p class="description">$d</p>', d=detail["description"])
        if detail.get("description")
        else "",
        tags=fill(
            '<p class="tags">$t</p>',
            t=join(
                (fill('<span class="tag">$k=$v</span>', k=k, v=v) for k, v in tags.items()), " "
            ),
        )
        if tags
        else "",
        declared=""
        if detail.get("declared")
        else fill(
            '<p class="problem">The desired state at <code>$c</code> could not be read: '
            "only what the status records is shown.</p>",
            c=short(detail.get("applied_commit")),
        ),
        rollout=rollout_block(detail.get("rollout")),
        deployments=join(deployment_block(d) for d in detail.get("deployments") or [])
        or Safe("<p>No deployments.</p>"),
        history=history_block(timeline),
    )
    return page(
        title=str(detail.get("name")), body=body, fingerprint=fingerprint, where=where, after=after
    )


def rollout_block(r: Mapping[str, Any] | None) -> Safe:
    """The rollout the status file records (data.rollout): step N/M, canary after
    stable, the reason, and the last verdict's figures and checks."""
    if not r:
        return EMPTY
    step, steps = r.get("step"), r.get("steps")
    position = f"step {_or_unknown(step)}/{_or_unknown(steps)}" if steps else "no step"
    rows: list[tuple[str, Any]] = [
        ("Step", fill("$p $s", p=position, s=f"({r['step_spec']})" if r.get("step_spec") else "")),
        ("Canary", fill("<b>$c</b> after <b>$s</b>", c=r.get("canary"), s=r.get("stable"))),
        ("Reason", r.get("reason") or ""),
        ("Mode", r.get("mode") or ""),
        ("Started at", fill("<code>$c</code>", c=short(r.get("start_commit")))),
        ("Last commit", fill("<code>$c</code>", c=short(r.get("last_commit")))),
    ]
    if r.get("branch"):
        rows.append(("Branch to merge", fill("<code>$b</code>", b=r["branch"])))
    if r.get("metrics"):
        rows.append(("Figures from", r["metrics"]))
    analysis = r.get("analysis") or {}
    if analysis:
        rows.append(
            (
                "Verdict",
                f"{analysis.get('outcome')}: {analysis.get('reason')}"
                + (
                    f" (after {analysis['elapsed_s']:.0f} s)"
                    if analysis.get("elapsed_s") is not None
                    else ""
                ),
            )
        )
        rows += [
            (
                f"{f.get('role')} {f.get('deployment')} ({f.get('kind')})",
                f"{f.get('requests')} requests, {f.get('errors')} errors, p99 "
                + ("n/a" if f.get("p99_ms") is None else f"{f['p99_ms']:g} ms"),
            )
            for f in analysis.get("deployments") or []
        ]
        if analysis.get("shadow"):
            shadow = analysis["shadow"]
            rows.append(("Shadow", f"{shadow['agree']} agree, {shadow['disagree']} disagree"))
    table = join(fill("<tr><th>$k</th><td>$v</td></tr>", k=k, v=v) for k, v in rows)
    checks = join(
        fill(
            '<li class="check-$cls"><code>$t</code> $text ($state)</li>',
            cls=str(c.get("state") or "").replace(" ", "-"),
            t=c.get("threshold"),
            text=c.get("text"),
            state=c.get("state"),
        )
        for c in analysis.get("checks") or []
    )
    return fill(
        '<section class="rollout" data-state="$state"><h2 class="section">Rollout '
        '<span class="state">$state</span></h2>'
        '<table class="kv">$table</table>$checks</section>\n',
        state=r.get("state") or "unknown",
        table=table,
        checks=fill('<ul class="steps checks">$c</ul>', c=checks) if checks else "",
    )


def deployment_block(d: Mapping[str, Any]) -> Safe:
    spec = d.get("spec") or {}
    rows: list[tuple[str, Any]] = [
        ("State", f"{d.get('provisioning_state')} ({d.get('health')})"),
        ("Instances", f"{d.get('ready_instances')}/{d.get('instance_count')} ready"),
        ("Instance type", d.get("instance_type") or spec.get("instance_type") or "none"),
        ("Scale", _scale(d, spec)),
    ]
    if d.get("autoscale"):
        rows.append(("Last autoscale decision", d["autoscale"]))
    if spec:
        rows += [
            ("Model", _model(spec)),
            ("Model type", spec.get("model_type") or ""),
            ("Environment", spec.get("environment")),
            ("Request settings", _pairs(spec.get("request_settings") or {})),
            ("Liveness probe", _pairs(spec.get("liveness_probe") or {})),
            ("Readiness probe", _pairs(spec.get("readiness_probe") or {})),
            ("Declared in", spec.get("file") or ""),
        ]
        if spec.get("description"):
            rows.append(("Description", spec["description"]))
        if spec.get("tags"):
            rows.append(("Tags", _pairs(spec["tags"])))
    rows.append(("Spec digest", d.get("spec_digest") or ""))
    table = join(fill("<tr><th>$k</th><td>$v</td></tr>", k=k, v=v) for k, v in rows)
    return fill(
        '<section class="deployment" data-deployment="$name"><h3>$name</h3>'
        '<table class="kv">$table</table>$error</section>\n',
        name=d.get("name"),
        table=table,
        error=fill('<pre class="error">$e</pre>', e=d["last_error"]) if d.get("last_error") else "",
    )


def _scale(d: Mapping[str, Any], spec: Mapping[str, Any]) -> str:
    auto = spec.get("autoscale")
    settings = d.get("scale_settings") or {}
    if auto or settings.get("type") == "target_utilization":
        auto = auto or settings
        return (
            f"autoscale {auto.get('min_instances')} to {auto.get('max_instances')} instances "
            f"at {auto.get('target_utilization_percentage')}% utilisation"
        )
    return f"fixed, {spec.get('instance_count', d.get('instance_count'))} instances"


def _model(spec: Mapping[str, Any]) -> str:
    """name:version and the digest of the model's files (what runs is told apart by it)."""
    if not spec.get("model"):
        return "none"
    digest = str(spec.get("model_digest") or "")
    if len(digest) > 19:
        digest = digest[:19] + "…"  # sha256: and 12 hex digits tell versions apart
    return f"{spec['model']} ({digest})" if digest else str(spec["model"])


def _pairs(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items())


def history_block(timeline: Mapping[str, Any]) -> Safe:
    entries = timeline.get("entries") or []
    if not entries:
        return Safe("<p>No history on the status branch.</p>")
    items = []
    for entry in entries:
        changes = join(
            fill(
                "<li><code>$f</code> $a → $b</li>",
                f=c["field"],
                a=_value(c.get("from")),
                b=_value(c.get("to")),
            )
            for c in entry.get("changes") or []
        )
        items.append(
            fill(
                '<li class="event"><div class="when">$time</div>'
                '<div class="what"><span class="state">$state</span> '
                "applied <code>$commit</code> $subject $author</div>"
                "$bars$changes</li>\n",
                time=when(entry.get("time")),
                state=entry.get("state") or "removed",
                commit=short(entry.get("applied_commit")),
                subject=fill("“$s”", s=entry["subject"]) if entry.get("subject") else "",
                author=fill("by $a", a=entry["author"]) if entry.get("author") else "",
                bars=traffic_bars(entry.get("traffic") or [], entry.get("mirror_traffic") or [])
                if not entry.get("removed")
                else "",
                changes=fill('<ul class="changes">$c</ul>', c=changes) if changes else "",
            )
        )
    return fill('<ol class="timeline">$items</ol>', items=join(items))


def _value(v: Any) -> str:
    if v is None:
        return "none"
    text = str(v)
    return text[:19] + "…" if text.startswith("sha256:") else text


def not_found_page(name: str, *, fingerprint: str) -> str:
    body = fill(
        '<p class="crumbs"><a href="/">All endpoints</a></p>'
        "<h1>No endpoint $name</h1><p>The status branch records no endpoint of that name.</p>",
        name=name,
    )
    return page(title="Not found", body=body, fingerprint=fingerprint, where="")
