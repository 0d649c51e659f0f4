"""The router's admin API as the targets call it: where a running router takes a new
config and says which one it serves, and the POST that gives it one.

Both targets push configs this way (the Docker target to 127.0.0.1, the Kubernetes target
to each router pod from inside the cluster); each keeps its own transport and retries.
Pure: no I/O here (targets.kubernetes.manifests imports the paths).
"""

from __future__ import annotations

import json

from reconciler.router.config import RouterConfig, config_to_dict

CONFIG_PATH = "/-/config"  # POST: the new config, with the admin secret as bearer
CONFIG_DIGEST_PATH = "/-/config-digest"  # GET: the digest every worker serves


def config_post(
    base_url: str, config: RouterConfig, admin_secret: str
) -> tuple[str, bytes, dict[str, str]]:
    """URL, body and headers of the POST that gives the router at base_url `config`."""
    return (
        base_url.rstrip("/") + CONFIG_PATH,
        json.dumps(config_to_dict(config)).encode(),
        {"Authorization": f"Bearer {admin_secret}", "Content-Type": "application/json"},
    )
