"""`reconcile render`: the manifests of a desired state as multi-document YAML, like
`helm template`, for review or for `kubectl apply -f -`.

Nothing is read from a cluster. Rendered manifests end up in pull requests and in git, so
by default no Secret is printed: the header names the Secrets the target makes itself (the
keys, the router's config) and `kubectl apply` of the output leaves the cluster's Secrets as
they are. With `secrets=True` (`--include-secrets`) they are printed with freshly generated
keys (applying the output twice rotates them; the reconciler itself keeps the keys it
finds). The YAML is plain: no anchors or aliases, whatever tool or reviewer reads it. Image
names are the content-addressed ones apply pushes; `push=True` builds and pushes them first
(CI, where Docker runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from reconciler.endpoints.credentials import new_credentials
from reconciler.model.state import DesiredState
from reconciler.targets.base import ProgressCallback
from reconciler.targets.kubernetes import manifests as m
from reconciler.targets.kubernetes.images import PlannedImages, RegistryImages
from reconciler.targets.kubernetes.options import KubernetesOptions

HEADER = """\
# Rendered by `reconcile render` for target {target}, namespace {namespace}.
# Every object carries app.kubernetes.io/managed-by: ml-endpoint-reconciler.
"""
SECRETS_NOTE = """\
# The Secrets hold freshly generated keys: applying this output again replaces them.
"""
NO_SECRETS_NOTE = """\
# No Secret is printed: this output is for review and for git. The target makes its Secrets
# itself on `reconcile --target {target}`: an endpoint's keys Secret once (fresh keys, kept
# from then on) and its router's config Secret (traffic split, key hashes) on every change.
# `kubectl apply` of this output leaves the Secrets in the cluster as they are; on a cluster
# without them, a router starts once the reconciler has written its config. Left out:
{names}# `reconcile render --include-secrets` prints them too, with fresh keys: applying that
# output replaces the keys in use.
"""


class _PlainDumper(yaml.SafeDumper):
    """YAML without anchors and aliases (`&id001` / `*id001`, PyYAML's way of writing a
    label map used twice in one manifest): each is written out where it is used."""

    def ignore_aliases(self, data: Any) -> bool:
        return True  # manifests are trees, never cyclic: this always terminates


CONNECTIONS_NOTE = """\
# Secrets of connections that environment variables reference (secretKeyRef): the target
# never writes them; create each in the namespace before applying, for example
# `kubectl create secret generic NAME --from-file=KEY=PATH`. Pods wait until they exist.
"""


def dump_manifests(documents: Sequence[m.Manifest]) -> str:
    """Multi-document plain YAML, keys in the order the manifests give them."""
    return yaml.dump_all(
        documents, Dumper=_PlainDumper, sort_keys=False, explicit_start=True, width=100
    )


def secret_names(desired: DesiredState, options: KubernetesOptions) -> list[tuple[str, str]]:
    """(name, what it holds) of every Secret the target makes for these endpoints."""
    names: list[tuple[str, str]] = []
    for endpoint in sorted(desired.endpoints, key=lambda e: e.name):
        names.append((m.keys_secret_name(endpoint.name), f"keys of endpoint {endpoint.name}"))
        if not options.gateway_api:
            names.append((m.router_config_name(endpoint.name), f"router config of {endpoint.name}"))
    return names


def render_yaml(
    desired: DesiredState,
    options: KubernetesOptions,
    *,
    namespace: str | None,
    secrets: bool,
    push: bool = False,
    repo_root: Path | None = None,
    say: ProgressCallback = lambda _message: None,
) -> str:
    chosen_namespace = namespace or options.namespace or "default"
    if namespace:
        options = replace(options, namespace=namespace)
    router_image = PlannedImages(options).router_image(say)
    if push:
        images = RegistryImages(options, repo_root=repo_root or Path("."))
        router_image = images.router_image(say)
        for spec in desired.deployments:
            images.deployment_image(spec, say)
    ctx = m.RenderContext(namespace=chosen_namespace, options=options, router_image=router_image)
    credentials = None
    if secrets:
        credentials = {
            e.name: new_credentials(port=m.ROUTER_PORT, metrics_port=m.ROUTER_METRICS_PORT)
            for e in desired.endpoints
        }
    documents = m.render_desired(ctx, desired, credentials=credentials)
    text = HEADER.format(target=options.name, namespace=chosen_namespace)
    if secrets:
        text += SECRETS_NOTE
    else:
        names = "".join(f"# - {name} ({what})\n" for name, what in secret_names(desired, options))
        text += NO_SECRETS_NOTE.format(target=options.name, names=names or "# (none)\n")
    needed = m.connection_secrets(desired)
    if needed:
        text += CONNECTIONS_NOTE + "".join(
            f"# - {name} (keys: {', '.join(keys)})\n" for name, keys in needed
        )
    return text + dump_manifests(documents)
