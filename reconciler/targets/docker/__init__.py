"""The Docker Engine target: images, containers, networks and the router container.

Images (this part): `baseimage` makes the local Python base image when none can be pulled;
`images` builds an environment layer per environment (base image + Python packages from an
offline wheelhouse + the inference server), cached by content, and a thin layer per
deployment with its code and model, so a code-only change rebuilds only the thin layer;
`condamap` turns conda dependencies into pip requirements for that wheelhouse.
"""
