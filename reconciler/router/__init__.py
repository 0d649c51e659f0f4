"""The data plane of an endpoint: what azureml-fe is to Azure ML, for our Docker and Kubernetes.

Started as `python -m reconciler.router --config FILE` (see `__main__`), one router per
endpoint serves the endpoint's scoring URI: it checks the caller's key or token, picks a
deployment by the traffic weights (or the one named by the `azureml-model-deployment`
header), the least busy instance inside it, applies Azure ML's request limits, copies a
share of requests to the mirror deployment, and exports Prometheus metrics.

Modules:
- `config`    the router's JSON config (`RouterConfig`, `load_config`, `dump_config`)
- `tokens`    keys and aml_token tokens (`generate_key`, `hash_key`, `issue_token`,
              `verify_token`); pure, for the reconciler's credentials commands too
- `balancing` pure choices: weighted deployment, mirror draw, least busy instance
- `http`      the HTTP/1.1 server (asyncio protocols, httptools): keep-alive, pipelining,
              limits, timeouts, drain
- `upstream`  the keep-alive HTTP/1.1 client to backends, and their deadlines
- `runtime`   deployments, instances and admission; swaps configs without loss
- `metrics`   Prometheus metric names and the utilisation formula
- `logs`      structured JSON logs, and the access log's own fast line writer
- `server`    the handlers, config watching, the admin call, shutdown
- `workers`   several worker processes on one port (SO_REUSEPORT), under a supervisor
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.router.config import (
        ConfigError,
        DeploymentRoute,
        RouterConfig,
        dump_config,
        load_config,
        parse_config,
    )
    from reconciler.router.tokens import (
        generate_key,
        generate_token_secret,
        hash_key,
        issue_token,
        verify_token,
    )

# Where each name of the package's own is defined: loaded on first use (PEP 562), so
# that importing one module of the package (tokens, for `reconcile invoke`) does not load
# the config's parser and its comparison rules (issue 15: start-up).
_HOMES = {
    "ConfigError": "config",
    "DeploymentRoute": "config",
    "RouterConfig": "config",
    "dump_config": "config",
    "load_config": "config",
    "parse_config": "config",
    "generate_key": "tokens",
    "generate_token_secret": "tokens",
    "hash_key": "tokens",
    "issue_token": "tokens",
    "verify_token": "tokens",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


__all__ = [
    "ConfigError",
    "DeploymentRoute",
    "RouterConfig",
    "dump_config",
    "generate_key",
    "generate_token_secret",
    "hash_key",
    "issue_token",
    "load_config",
    "parse_config",
    "verify_token",
]
