"""The Docker Engine target: containers, networks, the router container, state volumes.

Images are built by reconciler.images (shared with the Kubernetes target); endpoint
credentials are reconciler.endpoints.credentials. `baseimage` here only keeps the command
`python -m reconciler.targets.docker.baseimage` working.
"""
