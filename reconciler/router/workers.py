"""Several router worker processes on one port (`--workers N`), under a supervisor.

The supervisor binds the scoring port with SO_REUSEPORT (bound, never listening, so it only
holds the port number, which lets `--port 0` work), starts N worker processes (spawned, not
forked: the supervisor runs a metrics thread) that each listen on that port with
SO_REUSEPORT so that the kernel spreads connections between them, serves the summed metrics
of all workers on the metrics port (prometheus_client multiprocess mode, see `metrics`),
restarts a worker that dies, and passes SIGTERM and SIGHUP on. Each worker watches the
config file itself; an admin call reaches the other workers through that file, and each
worker reports the digest it serves in a folder of the supervisor's, so that
`/-/config-digest` says which config all of them serve (see `served`).

The admission limit is divided between workers (each admits its share, rounded up): a
worker does not know what the others have in flight.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from types import FrameType

from reconciler.router import logs
from reconciler.router.config import RouterConfig, load_config
from reconciler.router.served import WORKERS_DIR_ENV, forget_worker

_RESTART_BACKOFF_S = 1.0
_WORKER_STOP_S = 35.0  # the workers' drain timeout (30 s) and some


def worker(config_path: str, host: str, port: int, workers: int) -> None:
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


def supervise(
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

    served_dir = Path(tempfile.mkdtemp(prefix="router-workers-"))
    os.environ[WORKERS_DIR_ENV] = str(served_dir)  # spawned workers inherit it

    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

    reserved = _reserve_port(host, port)
    port = reserved.getsockname()[1]
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads

    def spawn() -> multiprocessing.process.BaseProcess:
        process = context.Process(
            target=worker, args=(str(config_path), host, port, workers), daemon=False
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
                forget_worker(process.pid, folder=served_dir)
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
    shutil.rmtree(served_dir, ignore_errors=True)
    return 0
