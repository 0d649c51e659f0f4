"""`reconcile render`: the manifests of a desired state as multi-document YAML, like
`helm template`, for review or for `kubectl apply -f -`.

Nothing is read from a cluster. Secrets get freshly generated keys (applying the output
twice rotates them; the reconciler itself keeps the keys it finds), or are left out with
`secrets=False` for a review diff. Image names are the content-addressed ones apply
pushes; `push=True` builds and pushes them first (CI, where Docker runs).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import yaml

from reconciler.model.state import DesiredState
from reconciler.targets.base import ProgressCallback
from reconciler.targets.docker.credentials import new_credentials
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
    return text + yaml.safe_dump_all(documents, sort_keys=False, explicit_start=True, width=100)
