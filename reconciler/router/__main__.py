"""The router's command line.

    python -m reconciler.router --config FILE [--host H] [--port P] [--metrics-port M]
                                [--workers N]

--host, --port and --metrics-port override the config's `host`, `port` and `metrics_port`
(port 0 picks a free port; the "listening" log line tells which).

One worker (the default) serves everything from one process and one event loop (uvloop when
installed). With N > 1 workers this process becomes their supervisor (see `workers`).

Exit codes: 0 after a clean shutdown, 2 when the config cannot be loaded or a required
package (httptools) is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from reconciler.router import logs
from reconciler.router.config import ConfigError, load_config


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
    try:
        import httptools  # noqa: F401  (the HTTP server's and the backend client's parser)
    except ImportError:
        log.error("dependency.missing", package="httptools", fix="pip install httptools")
        return 2
    if args.workers <= 1:
        from reconciler.router.server import run_single

        run_single(config_path, host=host, port=port, metrics_port=metrics_port)
        return 0
    from reconciler.router.workers import supervise

    return supervise(
        config_path,
        config,
        host=host,
        port=port,
        metrics_port=metrics_port,
        workers=args.workers,
    )


if __name__ == "__main__":
    sys.exit(main())
