"""The router's command line and its supervisor of worker processes.

    python -m reconciler.router --config FILE [--host H] [--port P] [--metrics-port M]
                                [--workers N]

--host, --port and --metrics-port override the config's `host`, `port` and `metrics_port`
(port 0 picks a free port; the "listening" log line tells which).

One worker (the default) serves everything from one process and one event loop (uvloop when
installed). With N > 1 workers this process becomes a supervisor: it binds the scoring port
with SO_REUSEPORT (bound, never listening, so it only holds the port number), starts N
worker processes that each listen on that port with SO_REUSEPORT (the kernel spreads
connections between them), serves the summed metrics of all workers on the metrics port
(prometheus_client multiprocess mode), restarts a worker that dies, and passes SIGTERM and
SIGHUP on. Each worker watches the config file itself.

Exit codes: 0 after a clean shutdown, 2 when the config cannot be loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import signal
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from reconciler.router import logs
from reconciler.router.config import ConfigError, RouterConfig, load_config

_RESTART_BACKOFF_S = 1.0
_WORKER_STOP_S = 35.0  # the workers' drain timeout (30 s) and some


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reconciler.router", description="Data plane of one online endpoint."
    )
    parser.add_argument("--config", required=True, type=Path, help="router config (JSON)")
    parser.add_argument("--host", default=None, help="address to listen on (config: host)")
    parser.add_argument("--port", type=int, default=None, help="scoring port (config: port)")
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="Prometheus port (config: metrics_port)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes sharing the port (default 1)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure()
    log = logs.get_logger(pid=os.getpid())
    config_path: Path = args.config.absolute()
    try:
        config = load_config(config_path)
    except ConfigError as error:
        log.error("config.invalid", source="start", error=str(error))
        return 2
    with contextlib.suppress(OSError):
        if config_path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("config.permissions", path=str(config_path), expected="0600")
    host = args.host or config.host
    port = config.port if args.port is None else args.port
    metrics_port = config.metrics_port if args.metrics_port is None else args.metrics_port
    if args.workers <= 1:
        from reconciler.router.server import run_single

        run_single(config_path, host=host, port=port, metrics_port=metrics_port)
        return 0
    return _supervise(
        config_path,
        config,
        host=host,
        port=port,
        metrics_port=metrics_port,
        workers=args.workers,
    )


def _worker(config_path: str, host: str, port: int, workers: int) -> None:
    """A worker process (spawned): one router loop on the shared port, no metrics port."""
    from prometheus_client import REGISTRY

    from reconciler.router.server import server_loop

    logs.configure()
    config = load_config(config_path)
    server_loop(
        config,
        config_path=Path(config_path),
        registry=REGISTRY,
        host=host,
        port=port,
        metrics_port=None,
        workers=workers,
        reuse_port=True,
    )


def _reserve_port(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _supervise(
    config_path: Path,
    config: RouterConfig,
    *,
    host: str,
    port: int,
    metrics_port: int,
    workers: int,
) -> int:
    log = logs.get_logger(endpoint=config.endpoint, pid=os.getpid(), role="supervisor")
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not metrics_dir:
        metrics_dir = tempfile.mkdtemp(prefix="router-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    for stale in Path(metrics_dir).glob("*.db"):
        stale.unlink()  # values of an earlier run would be summed with ours

    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

    reserved = _reserve_port(host, port)
    port = reserved.getsockname()[1]
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads

    def spawn() -> multiprocessing.process.BaseProcess:
        process = context.Process(
            target=_worker, args=(str(config_path), host, port, workers), daemon=False
        )
        process.start()
        return process

    processes = [spawn() for _ in range(workers)]
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
    httpd, _ = start_http_server(metrics_port, addr=host, registry=registry)
    log.info(
        "listening",
        host=host,
        port=port,
        metrics_port=httpd.server_port,
        workers=workers,
        digest=config.digest(),
    )

    stopping = False

    def on_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    def on_hup(signum: int, frame: FrameType | None) -> None:
        for process in processes:
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    while not stopping:
        for index, process in enumerate(processes):
            if process.is_alive() or stopping:
                continue
            log.error("worker.died", worker_pid=process.pid, exitcode=process.exitcode)
            if process.pid is not None:
                mark_process_dead(process.pid, metrics_dir)  # type: ignore[no-untyped-call]
            time.sleep(_RESTART_BACKOFF_S)  # a worker that dies at once must not spin
            processes[index] = spawn()
        time.sleep(0.2)
    log.info("shutdown", workers=workers)
    for process in processes:
        if process.pid is not None and process.is_alive():
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + _WORKER_STOP_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
    httpd.shutdown()
    reserved.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
