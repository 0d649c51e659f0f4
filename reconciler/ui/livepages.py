"""The HTML of the daemon's live parts: the pass running now and the last plans, charts of
the router's metrics (inline SVG), recent log lines, and the test form. Does no I/O.

Same rules as reconciler.ui.render: every value escaped by `fill`, no inline style or
script (the Content-Security-Policy forbids them): colours are classes of style.css, the
charts' geometry is SVG attributes, computed here from the figures of reconciler.ui.charts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.ui.render import PALETTE, Safe, endpoint_href, fill, join, short, when

# The charts' drawing box (SVG user units) and the plot area inside it.
WIDTH, HEIGHT = 320, 110
LEFT, RIGHT, TOP, BOTTOM = 44, 314, 8, 92


def daemon_line(view: Mapping[str, Any]) -> Safe:
    """One paragraph on the overview: the pass running now, or how the last one ended."""
    running = view.get("running")
    last = view.get("last_pass")
    parts: list[Safe] = []
    if running:
        steps = running.get("steps") or []
        now = [s for s in steps if s.get("outcome") == "running"]
        parts.append(
            fill(
                '<span class="running">A pass is running</span> (since $t, $reason)$step.',
                t=_time(running.get("started_at")),
                reason=running.get("reason") or "",
                step=fill(
                    ": $a $on $p",
                    a=now[0]["action"],
                    on=_on(now[0]),
                    p=_progress(now[0]),
                )
                if now
                else "",
            )
        )
    if last:
        parts.append(
            fill(
                "Last pass $outcome at $t ($s s, $n steps, revision <code>$rev</code>)$err.",
                outcome=last.get("outcome"),
                t=_time(last.get("finished_at")),
                s=last.get("seconds"),
                n=last.get("steps"),
                rev=short(last.get("revision")),
                err=fill(": $e", e=last["error"]) if last.get("error") else "",
            )
        )
    status = view.get("daemon") or {}
    if status.get("phase") == "waiting_for_lock":
        parts.insert(
            0,
            fill(
                '<span class="behind">Waiting for the target, changed by $h.</span>',
                h=status.get("lock_holder") or "another process",
            ),
        )
    if status.get("target_reachable") is False:
        parts.append(Safe('<span class="behind">The target cannot be reached.</span>'))
    if not parts:
        parts.append(Safe("The daemon has not finished a pass yet."))
    return fill('<p class="meta daemon">Daemon: $p</p>\n', p=join(parts, " "))


def live_block(view: Mapping[str, Any]) -> Safe:
    """On an endpoint page: its steps in the running pass, and the last plans that
    touched it with each step's result."""
    out: list[Safe] = []
    running = view.get("running")
    if running and running.get("steps"):
        out.append(
            fill(
                '<h2 class="section">Pass running now</h2>\n'
                '<p class="meta">Started $t ($reason), revision <code>$rev</code>.</p>$steps',
                t=_time(running.get("started_at")),
                reason=running.get("reason") or "",
                rev=short(running.get("revision")),
                steps=_steps_table(running["steps"]),
            )
        )
    plans = view.get("plans") or []
    if plans:
        items = join(
            fill(
                '<li class="plan"><div class="when">$t · $outcome · revision <code>$rev</code>'
                " · $s s</div>$steps</li>\n",
                t=_time(p.get("finished_at")),
                outcome=p.get("outcome"),
                rev=short(p.get("revision")),
                s=p.get("seconds"),
                steps=_steps_table(p.get("steps") or []),
            )
            for p in plans
        )
        out.append(
            fill('<h2 class="section">Last plans</h2>\n<ol class="plans">$i</ol>\n', i=items)
        )
    return join(out)


def _steps_table(steps: Sequence[Mapping[str, Any]]) -> Safe:
    rows = join(
        fill(
            '<tr class="outcome-$o"><td>$n</td><td>$a</td><td>$on</td><td>$o</td>'
            "<td>$detail</td></tr>",
            n=int(s.get("index") or 0) + 1,
            a=s.get("action"),
            on=_on(s),
            o=s.get("outcome"),
            detail=s.get("message") or _progress(s) or s.get("reason") or "",
        )
        for s in steps
    )
    return fill(
        '<table class="steps-table"><tr><th>#</th><th>Action</th><th>On</th>'
        "<th>Result</th><th>Detail</th></tr>$rows</table>",
        rows=rows,
    )


def _on(step: Mapping[str, Any]) -> str:
    return "/".join(str(n) for n in (step.get("endpoint"), step.get("deployment")) if n)


def _progress(step: Mapping[str, Any]) -> str:
    lines = step.get("progress") or []
    return str(lines[-1]) if lines else ""


def _time(seconds: Any) -> str:
    if isinstance(seconds, float) and not math.isfinite(seconds):
        return "unknown"
    return when(int(seconds)) if isinstance(seconds, int | float) else "unknown"


# --- charts -------------------------------------------------------------------------------


def charts_block(metrics: Mapping[str, Any]) -> Safe:
    """Per deployment: requests/s, p50 and p99 latency, errors/s by code, mirror share, and
    the share of its shadow answers that agreed with the live ones (when compared)."""
    problem = metrics.get("problem")
    deployments: Mapping[str, Sequence[Mapping[str, Any]]] = metrics.get("deployments") or {}
    if not deployments:
        why = problem or "Waiting for two readings of the router's metrics."
        return fill(
            '<h2 class="section">Traffic</h2>\n<p class="meta charts-empty">$w</p>\n', w=why
        )
    sections = []
    for name, points in deployments.items():
        if not points:
            continue
        t0, t1 = points[0]["t"], points[-1]["t"]
        codes = sorted({c for p in points for c in (p.get("errors") or {})})
        charts = [
            chart("Requests/s", [("live", 0, _xy(points, "rps"))], t0=t0, t1=t1),
            chart(
                "Latency (ms)",
                [("p50", 0, _xy(points, "p50_ms")), ("p99", 2, _xy(points, "p99_ms"))],
                t0=t0,
                t1=t1,
            ),
            chart(
                "Errors/s by code",
                [
                    (
                        code,
                        4 + i,
                        [(p["t"], (p.get("errors") or {}).get(code, 0.0)) for p in points],
                    )
                    for i, code in enumerate(codes)
                ]
                or [("none", 1, [(p["t"], 0.0) for p in points])],
                t0=t0,
                t1=t1,
            ),
        ]
        if any(p.get("mirror_rps") for p in points):
            share = [
                (p["t"], None if p.get("mirror_share") is None else 100.0 * p["mirror_share"])
                for p in points
            ]
            charts.append(chart("Mirror share (%)", [("mirrored", 3, share)], t0=t0, t1=t1))
        if any(p.get("shadow_compared") for p in points):
            agreement = [
                (
                    p["t"],
                    None if p.get("shadow_agreement") is None else 100.0 * p["shadow_agreement"],
                )
                for p in points
            ]
            charts.append(chart("Shadow agreement (%)", [("agree", 1, agreement)], t0=t0, t1=t1))
        latest = points[-1]
        sections.append(
            fill(
                '<section class="charts" data-deployment="$name"><h3>$name</h3>'
                '<p class="meta">now: $rps req/s · p50 $p50 ms · p99 $p99 ms · errors $err</p>'
                '<div class="chart-row">$charts</div></section>\n',
                name=name,
                rps=_num(latest.get("rps")),
                p50=_num(latest.get("p50_ms")),
                p99=_num(latest.get("p99_ms")),
                err=_percent(latest.get("error_ratio")),
                charts=join(charts),
            )
        )
    return fill(
        '<h2 class="section">Traffic</h2>\n$problem<div class="chart-grid">$s</div>\n',
        problem=fill('<p class="problem">$p</p>', p=problem) if problem else "",
        s=join(sections),
    )


def _xy(points: Sequence[Mapping[str, Any]], key: str) -> list[tuple[float, float | None]]:
    return [(float(p["t"]), p.get(key)) for p in points]


def chart(
    title: str,
    lines: Sequence[tuple[str, int, Sequence[tuple[float, float | None]]]],
    *,
    t0: float,
    t1: float,
) -> Safe:
    """A small line chart as inline SVG: one polyline and its points per (label, colour,
    values); gaps where a value is None. The y axis starts at 0."""
    values = [v for _, _, pts in lines for _, v in pts if v is not None]
    top = _nice(max(values, default=0.0))
    span = (t1 - t0) or 1.0

    def x(t: float) -> float:
        return round(LEFT + (t - t0) / span * (RIGHT - LEFT), 1)

    def y(v: float) -> float:
        return round(BOTTOM - v / top * (BOTTOM - TOP), 1)

    shapes: list[Safe] = []
    legend: list[Safe] = []
    for label, colour, pts in lines:
        c = colour % PALETTE
        run: list[str] = []
        for t, v in [*pts, (t1, None)]:
            if v is None:
                if len(run) > 1:
                    shapes.append(
                        fill('<polyline class="line s$c" points="$p"/>', c=c, p=" ".join(run))
                    )
                run = []
                continue
            run.append(f"{x(t)},{y(v)}")
        shapes.extend(
            fill(
                '<circle class="dot f$c" cx="$x" cy="$y" r="2"><title>$l $v</title></circle>',
                c=c,
                x=x(t),
                y=y(v),
                l=label,
                v=_num(v),
            )
            for t, v in pts
            if v is not None
        )
        legend.append(fill('<li><span class="key f$c"></span>$l</li>', c=c, l=label))
    return fill(
        '<figure class="chart"><figcaption>$title</figcaption>'
        '<svg viewBox="0 0 $w $h" role="img" aria-label="$title" class="chart-svg">'
        '<line class="axis" x1="$l" y1="$b" x2="$r" y2="$b"/>'
        '<line class="axis" x1="$l" y1="$t" x2="$l" y2="$b"/>'
        '<text class="tick" x="$tx" y="$ty" text-anchor="end">$top</text>'
        '<text class="tick" x="$tx" y="$b" text-anchor="end">0</text>'
        '<text class="tick" x="$r" y="$h" text-anchor="end">last $span s</text>'
        "$shapes</svg>"
        '<ul class="legend">$legend</ul></figure>',
        title=title,
        w=WIDTH,
        h=HEIGHT - 2,
        l=LEFT,
        r=RIGHT,
        t=TOP,
        b=BOTTOM,
        tx=LEFT - 4,
        ty=TOP + 8,
        top=_num(top),
        span=round(span),
        shapes=join(shapes),
        legend=join(legend),
    )


def _nice(value: float) -> float:
    """A round top for the y axis (1, 2 or 5 times a power of ten) at or above value."""
    if value <= 0:
        return 1.0
    step = 10.0 ** int(f"{value:e}".split("e")[1])
    for m in (1, 2, 5, 10):
        if value <= m * step:
            return m * step
    return 10 * step


def _num(value: Any) -> str:
    if not isinstance(value, int | float):
        return "n/a"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def _percent(value: Any) -> str:
    return "n/a" if not isinstance(value, int | float) else f"{100 * value:.3g}%"


# --- logs -----------------------------------------------------------------------------------


def logs_block(logs: Mapping[str, Any]) -> Safe:
    """Recent lines of each deployment's instances, escaped like every other value."""
    deployments: Mapping[str, Mapping[str, Any]] = logs.get("deployments") or {}
    if not deployments:
        return Safe("")
    blocks = join(
        fill(
            '<section class="logs" data-deployment="$name"><h3>$name</h3>$text</section>\n',
            name=name,
            text=fill('<pre class="log">$t</pre>', t=entry["text"])
            if entry.get("text") is not None
            else fill('<p class="meta">$p</p>', p=entry.get("problem") or "no log"),
        )
        for name, entry in deployments.items()
    )
    return fill(
        '<h2 class="section">Recent log lines</h2>\n<p class="meta">The last $n lines of each '
        "instance.</p>$blocks",
        n=logs.get("lines"),
        blocks=blocks,
    )


# --- the test form --------------------------------------------------------------------------

SAMPLE_BODY = '{"data": [[1, 2, 3, 4]]}'


def test_form(endpoint: str, deployments: Sequence[str], *, csrf: str, problem: str = "") -> Safe:
    """Send a JSON body to the endpoint through its router, optionally pinned to a
    deployment. The key is typed each time: the form neither fills nor keeps it."""
    if problem:
        return fill(
            '<section class="test-form" id="test"><h2 class="section">Test</h2>'
            '<p class="meta">$p</p></section>\n',
            p=problem,
        )
    options = join(
        [Safe('<option value="">the traffic split</option>')]
        + [fill('<option value="$d">$d</option>', d=d) for d in deployments]
    )
    return fill(
        '<section class="test-form" id="test"><h2 class="section">Test</h2>\n'
        '<form method="post" action="$action" autocomplete="off">'
        '<input type="hidden" name="csrf" value="$csrf">'
        '<label>Key or token <input type="password" name="key" required '
        'autocomplete="off"></label>'
        '<label>Deployment <select name="deployment">$options</select></label>'
        '<label>Request body (JSON)<textarea name="body" rows="6" spellcheck="false">'
        "$sample</textarea></label>"
        '<button type="submit">Send</button>'
        '<p class="meta">Sent once through the endpoint&#x27;s router; the key is neither '
        "stored nor logged.</p></form></section>\n",
        action=endpoint_href(endpoint) + "/test",
        csrf=csrf,
        options=options,
        sample=SAMPLE_BODY,
    )


def test_result_page(
    endpoint: str,
    *,
    status: int | None,
    deployment: str | None,
    body: str,
    seconds: float,
    at: int,
    problem: str = "",
) -> Safe:
    """What the endpoint answered (escaped; its body as it came, cut to a bound)."""
    if problem:
        answer = fill('<p class="problem">$p</p>', p=problem)
    else:
        answer = fill(
            '<p class="meta">HTTP <b class="status">$s</b> from deployment '
            '<b class="answered-by">$d</b> in $t ms.</p><pre class="answer">$b</pre>',
            s=status,
            d=deployment or "unknown",
            t=round(seconds * 1000),
            b=body,
        )
    return fill(
        '<p class="crumbs"><a href="$href">Back to $name</a></p>'
        '<h1>Test of $name</h1>\n$answer\n<p class="meta">Sent $at.</p>',
        href=endpoint_href(endpoint),
        name=endpoint,
        answer=answer,
        at=when(at),
    )
