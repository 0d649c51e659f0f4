"""Benchmark of the endpoint router: direct vs our router vs nginx, on loopback.

    .venv/bin/python bench/router.py [--duration 5] [--concurrency 8,32] [--repeat 1]

For each backend (answers at once; takes 2 ms per request) and each concurrency, wrk (in its
own process) drives POST /score with a small JSON body:
- direct:     straight to the backend
- ours:       through `python -m reconciler.router` (1 worker; key auth, metrics and the
              JSON access log on, as in production)
- ours x2:    the same with --workers 2 (SO_REUSEPORT)
- nginx:      nginx as a plain reverse proxy (1 worker process, upstream keepalive)
It also reports the CPU time per request of the proxy (of the backend for direct), read
from /proc: on a shared machine, throughput depends on the neighbours, CPU per request less.
Backends are aiohttp + uvloop servers, one process each. The router's deployments allow
plenty of concurrency so that admission never queues: this measures the proxy, not Azure's
limits. It prints p50, p99 and requests/s per case, a markdown table, and writes
bench/out/router.json. Not a test: figures vary with the machine and its neighbours.

Then, with the instant backend, streaming (`--no-streaming` skips it): the time to the first
server-sent event of an answer whose second event comes 20 ms later (median and p90 of 50
requests on one keep-alive connection; nginx is told not to buffer it by the backend's
`X-Accel-Buffering: no`, as SSE servers do), and 10 MB up then 10 MB down, three times: the
seconds it takes and how much the proxy's peak memory (VmHWM, all its processes) grew.

With --baseline DIR, a router from another checkout (DIR, e.g. a clone of main) runs beside
ours as "baseline" (1 worker, same config): an A/B of a change in one run, with the same
direct and nginx references. --no-workers2 leaves out "ours x2" (shorter runs).

With --repeat N, each round runs every target once, in turn, so that a burst of load from
neighbours falls on all of them alike; the medians are kept (CPU per request too), and each
row records the 1-minute load average seen when its runs started.

Needs wrk and nginx (Debian: `apt-get install -y wrk nginx`); without wrk it stops with a
message, without nginx it skips that column.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from figures import emit, short_requested, skipped

BENCH = "router"
ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key-0123456789abcdef0123456789"
BODY = '{"data": [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]]}'
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = 'BODY'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout
  io.write(string.format("RESULT %d %d %.1f %d %d\\n", latency:percentile(50),
    latency:percentile(99), summary.requests / (summary.duration / 1e6),
    summary.errors.status, errors))
end
""".replace("BODY", BODY)


def serve_backend(port: int, delay_ms: float) -> None:
    """A backend process: aiohttp on uvloop, answers after `delay_ms`."""
    import uvloop
    from aiohttp import web

    delay = delay_ms / 1000.0
    answer = b'{"result": [0.5]}'

    big = bytes(range(256)) * 256 * 160  # 10 MB

    async def score(request: web.BaseRequest) -> web.StreamResponse:
        mode = request.query_string
        if mode == "sse":
            await request.read()
            sse = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
            )
            await sse.prepare(request)
            await sse.write(b"data: one\n\n")
            await asyncio.sleep(0.02)
            await sse.write(b"data: two\n\n")
            await sse.write_eof()
            return sse
        if mode == "upload":
            size = 0
            async for piece in request.content.iter_any():
                size += len(piece)
            return web.Response(text=str(size))
        if mode == "download":
            await request.read()
            return web.Response(body=big, content_type="application/octet-stream")
        await request.read()
        if delay:
            await asyncio.sleep(delay)
        return web.Response(body=answer, content_type="application/json")

    async def main() -> None:
        server = web.Server(score, access_log=None)
        await asyncio.get_running_loop().create_server(server, "127.0.0.1", port, backlog=1024)
        await asyncio.Event().wait()

    uvloop.run(main())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (workers), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(child) for child in children]
    for one in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{one}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


@contextlib.contextmanager
def process(
    args: list[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Iterator[int]:
    proc = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def router_config(folder: Path, name: str, backend_port: int) -> Path:
    from reconciler.router.tokens import hash_key

    doc = {
        "endpoint": "bench",
        "key_hashes": [hash_key(KEY)],
        "traffic": {"model": 100},
        "deployments": [
            {
                "name": "model",
                "instances": [f"127.0.0.1:{backend_port}"],
                "max_concurrent_requests_per_instance": 1000,
                "request_timeout_ms": 60000,
            }
        ],
    }
    path = folder / f"{name}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(doc, handle)
    return path


def nginx_config(folder: Path, routes: dict[int, int]) -> Path:
    servers = "\n".join(
        f"""  upstream b{listen} {{ server 127.0.0.1:{backend}; keepalive 512; }}
  server {{ listen 127.0.0.1:{listen};
    location / {{ proxy_pass http://b{listen}; proxy_http_version 1.1;
      proxy_set_header Connection ""; }} }}"""
        for listen, backend in routes.items()
    )
    text = f"""worker_processes 1;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off; client_max_body_size 64m;
  client_body_temp_path {folder}/body; proxy_temp_path {folder}/proxy;
  fastcgi_temp_path {folder}/fcgi; uwsgi_temp_path {folder}/uwsgi; scgi_temp_path {folder}/scgi;
{servers}
}}
"""
    path = folder / "nginx.conf"
    path.write_text(text)
    # nginx's workers (another user when run as root) keep large bodies in its temp paths
    # here; the router configs in this folder stay 0600.
    folder.chmod(0o755)
    return path


def run_wrk(
    script: Path, port: int, *, concurrency: int, duration: float, auth: bool, pid: int
) -> tuple[float, float, float, int, float]:
    """(p50 ms, p99 ms, requests/s, failed requests, CPU us per request of `pid`)."""
    cpu_before = cpu_seconds(pid)
    args = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration:g}s", "-s", str(script)]
    if auth:
        args += ["-H", f"Authorization: Bearer {KEY}"]
    output = subprocess.run(
        [*args, f"http://127.0.0.1:{port}/score"],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 30,
    ).stdout
    cpu = cpu_seconds(pid) - cpu_before
    line = next(x for x in output.splitlines() if x.startswith("RESULT "))
    p50, p99, rps, bad_status, errors = line.split()[1:]
    requests = max(1.0, float(rps) * duration)
    return (
        float(p50) / 1000,
        float(p99) / 1000,
        float(rps),
        int(bad_status) + int(errors),
        cpu / requests * 1e6,
    )


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory (VmHWM) of a process and its children (workers), MB."""
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(child) for child in children]
    total = 0.0
    for one in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
    return total


def first_event_ms(port: int, auth: bool, count: int = 50) -> tuple[float, float]:
    """(median, p90) ms from sending a request to reading its first server-sent event."""
    import http.client

    headers = {"Authorization": f"Bearer {KEY}"} if auth else {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        conn.request("POST", "/score?sse", body=b"{}", headers=headers)
        response = conn.getresponse()
        first = response.readline()
        times.append((time.perf_counter() - started) * 1000)
        assert first == b"data: one\n", first
        response.read()
    conn.close()
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9)]


def big_bodies(port: int, auth: bool, pid: int) -> tuple[float, float]:
    """(seconds, MB the peak memory of `pid` grew) for 3 x (10 MB up, 10 MB down)."""
    import http.client

    headers = {"Authorization": f"Bearer {KEY}"} if auth else {}
    piece = bytes(256 * 1024)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/score", body=BODY, headers=headers)
    conn.getresponse().read()
    before = peak_rss_mb(pid)
    started = time.perf_counter()
    for _ in range(3):
        size = 10 * 1024 * 1024
        upload = {**headers, "Content-Length": str(size)}
        conn.request(
            "POST", "/score?upload", body=iter([piece] * (size // len(piece))), headers=upload
        )
        response = conn.getresponse()
        assert response.status == 200 and int(response.read()) == size
        conn.request("POST", "/score?download", body=b"{}", headers=headers)
        response = conn.getresponse()
        got = 0
        while chunk := response.read(256 * 1024):
            got += len(chunk)
        assert got == size, got
    seconds = time.perf_counter() - started
    conn.close()
    return seconds, peak_rss_mb(pid) - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--concurrency", default="4,8,32", help="connections, comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (median kept)")
    parser.add_argument("--serve-backend", nargs=2, metavar=("PORT", "DELAY_MS"))
    parser.add_argument("--short", action="store_true", help="2 s runs at c=8 only")
    parser.add_argument("--no-streaming", action="store_true", help="skip TTFB and 10 MB runs")
    parser.add_argument("--baseline", type=Path, help="another checkout's router, beside ours")
    parser.add_argument("--no-workers2", action="store_true", help="leave out 'ours x2'")
    args = parser.parse_args()
    if short_requested() and not args.serve_backend:
        args.duration, args.concurrency, args.repeat = 2.0, "8", 1
    if args.serve_backend:
        serve_backend(int(args.serve_backend[0]), float(args.serve_backend[1]))
        return 0
    if shutil.which("wrk") is None:
        print("bench/router.py needs wrk: apt-get install -y wrk (and nginx for its column)")
        skipped(BENCH, "router", "wrk not installed")
        return 1
    nginx = shutil.which("nginx")
    if nginx is None:
        print("nginx not found (apt-get install -y nginx): its column is skipped")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    python = sys.executable
    delays = {"0 ms": 0.0, "2 ms": 2.0}
    backend_ports = {label: free_port() for label in delays}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    results: list[dict[str, object]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-router-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        folder = Path(tmp)
        script = folder / "post.lua"
        script.write_text(WRK_SCRIPT)
        targets: dict[tuple[str, str], tuple[int, bool, int]] = {}  # port, auth, pid
        for label, delay in delays.items():
            port = backend_ports[label]
            backend_pid = stack.enter_context(
                process([python, __file__, "--serve-backend", str(port), str(delay)], env=env)
            )
            targets[("direct", label)] = (port, False, backend_pid)
            routers: list[tuple[str, int, Path]] = [("ours", 1, ROOT)]
            if args.baseline is not None:
                routers.append(("baseline", 1, args.baseline.resolve()))
            if not args.no_workers2:
                routers.append(("ours x2", 2, ROOT))
            for name, workers, tree in routers:
                router_port = free_port()
                config = router_config(folder, f"{name}-{port}".replace(" ", ""), port)
                command = [python, "-m", "reconciler.router", "--config", str(config)]
                command += ["--host", "127.0.0.1", "--port", str(router_port)]
                command += ["--metrics-port", str(free_port()), "--workers", str(workers)]
                router_env = dict(env, PYTHONPATH=str(tree))
                router_pid = stack.enter_context(process(command, env=router_env, cwd=tree))
                targets[(name, label)] = (router_port, True, router_pid)
        if nginx is not None:
            nginx_ports = {label: free_port() for label in delays}
            conf = nginx_config(
                folder, {nginx_ports[label]: backend_ports[label] for label in delays}
            )
            nginx_pid = stack.enter_context(process([nginx, "-c", str(conf)]))
            for label in delays:
                targets[("nginx", label)] = (nginx_ports[label], False, nginx_pid)
        for port, _, _ in targets.values():
            wait_port(port)
        time.sleep(1.0)  # the second router worker is still starting after the port opens
        for port, auth, pid in targets.values():  # warm up: connections, caches
            run_wrk(script, port, concurrency=8, duration=1, auth=auth, pid=pid)
        for concurrency in concurrencies:
            for label in delays:
                names = [
                    n
                    for n in ("direct", "ours", "baseline", "ours x2", "nginx")
                    if (n, label) in targets
                ]
                rounds: dict[str, list[tuple[float, float, float, int, float]]] = {
                    name: [] for name in names
                }
                load = os.getloadavg()[0]
                for _ in range(args.repeat):
                    for name in names:
                        port, auth, pid = targets[(name, label)]
                        rounds[name].append(
                            run_wrk(
                                script,
                                port,
                                concurrency=concurrency,
                                duration=args.duration,
                                auth=auth,
                                pid=pid,
                            )
                        )
                for name in names:
                    runs = rounds[name]
                    p50 = statistics.median(r[0] for r in runs)
                    p99 = statistics.median(r[1] for r in runs)
                    rps = statistics.median(r[2] for r in runs)
                    failed = sum(r[3] for r in runs)
                    cpu_us = statistics.median(r[4] for r in runs)
                    row = {
                        "target": name,
                        "backend": label,
                        "concurrency": concurrency,
                        "p50_ms": round(p50, 3),
                        "p99_ms": round(p99, 3),
                        "rps": round(rps),
                        "failed": failed,
                        "cpu_us_per_request": round(cpu_us),
                        "load_1m": round(load, 2),
                    }
                    results.append(row)
                    print(json.dumps(row), flush=True)
        streaming: list[dict[str, object]] = []
        if not args.no_streaming:
            for name in ("direct", "ours", "ours x2", "nginx"):
                if (name, "0 ms") not in targets:
                    continue
                port, auth, pid = targets[(name, "0 ms")]
                median, p90 = first_event_ms(port, auth)
                seconds, grown = big_bodies(port, auth, pid)
                entry = {
                    "target": name,
                    "first_event_ms_p50": round(median, 3),
                    "first_event_ms_p90": round(p90, 3),
                    "big_bodies_s": round(seconds, 3),
                    # For direct: the backend's own (it reads the upload piece by piece).
                    "peak_rss_growth_mb": round(grown, 1),
                }
                streaming.append(entry)
                print(json.dumps(entry), flush=True)
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "router.json").write_text(
        json.dumps({"requests": results, "streaming": streaming}, indent=2) + "\n"
    )
    print()
    print("CPU us/req: of the backend for direct, of the proxy (all its processes) otherwise.")
    print(
        "| c | backend | target | p50 ms | p99 ms | req/s | vs direct | +p50 ms | CPU us/req "
        "| load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    direct = {(r["concurrency"], r["backend"]): r for r in results if r["target"] == "direct"}
    for row in results:
        base = direct[(row["concurrency"], row["backend"])]
        share = float(row["rps"]) / float(base["rps"])  # type: ignore[arg-type]
        added = float(row["p50_ms"]) - float(base["p50_ms"])  # type: ignore[arg-type]
        print(
            f"| {row['concurrency']} | {row['backend']} | {row['target']} | {row['p50_ms']} "
            f"| {row['p99_ms']} | {row['rps']} | {share:.0%} | {added:+.2f} "
            f"| {row['cpu_us_per_request']} | {row['load_1m']} |"
        )
    for row in results:
        if row["target"] == "direct":
            continue
        base = direct[(row["concurrency"], row["backend"])]
        case = f"{row['target']}, {row['backend']} backend, c={row['concurrency']}"
        emit(
            BENCH,
            f"req/s, {case}",
            float(row["rps"]),
            "req/s",
            reference="direct to the backend",
            reference_value=float(base["rps"]),
            goal=">= 0.9x" if row["target"].startswith("ours") else "",
        )
        p50 = float(row["p50_ms"])
        emit(
            BENCH,
            f"p50, {case}",
            p50,
            "ms",
            reference="direct to the backend",
            reference_value=float(base["p50_ms"]),
        )
        nginx_row = next(
            (
                r
                for r in results
                if r["target"] == "nginx"
                and r["concurrency"] == row["concurrency"]
                and r["backend"] == row["backend"]
            ),
            None,
        )
        if nginx_row is not None and row["target"] != "nginx":
            emit(
                BENCH,
                f"CPU per request, {case}",
                float(row["cpu_us_per_request"]),
                "us",
                reference="nginx beside it",
                reference_value=float(nginx_row["cpu_us_per_request"]),
                goal="<= 2x",
            )
    if streaming:
        print()
        print("Streaming (instant backend): first server-sent event; 3 x (10 MB up, 10 MB down),")
        print("with the growth of the proxy's peak memory (of the backend for direct).")
        print(
            "| target | first event p50 ms | p90 ms | vs direct p50 | 10 MB x3 s | peak RSS +MB |"
        )
        print("|---|---|---|---|---|---|")
        base = streaming[0]
        for entry in streaming:
            added = float(entry["first_event_ms_p50"]) - float(base["first_event_ms_p50"])  # type: ignore[arg-type]
            print(
                f"| {entry['target']} | {entry['first_event_ms_p50']} "
                f"| {entry['first_event_ms_p90']} | {added:+.3f} | {entry['big_bodies_s']} "
                f"| {entry['peak_rss_growth_mb']} |"
            )
        figures = (
            ("first_event_ms_p50", "first server-sent event, {}, p50", "ms",
             "direct to the backend", "<= direct + 1 ms"),
            ("peak_rss_growth_mb", "peak memory growth over 3 x (10 MB up, 10 MB down), {}",
             "MB", "the backend's own growth (direct)", "a few buffers"),
        )  # fmt: skip
        for entry in streaming[1:]:
            who = str(entry["target"])
            for key, name, unit, reference, goal in figures:
                emit(
                    BENCH,
                    name.format(who),
                    float(entry[key]),  # type: ignore[arg-type]
                    unit,
                    reference=reference,
                    reference_value=float(base[key]),  # type: ignore[arg-type]
                    goal=goal if who == "ours" else "",
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
