"""Images of deployments and of the router, built with the local Docker Engine; both targets
use them (the Kubernetes target pushes what is built here to its registry).

`baseimage` makes the local Python base image when none can be pulled; `layers` builds an
environment layer per environment (base image + Python packages from an offline wheelhouse
+ the inference server), cached by content, and a thin layer per deployment with its code
and model, so a code-only change rebuilds only the thin layer; `layout` (PURE) says where a
deployment's files and server sit in its image (the runtime contract); `condamap` turns
conda dependencies into pip requirements for that wheelhouse; `router` builds the router's
image.
"""
