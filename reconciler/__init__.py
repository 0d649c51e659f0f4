"""GitOps reconciler for machine-learning online endpoints.

Teams describe Azure ML v2 online endpoints and deployments as YAML in git; this package
loads that desired state, observes a target (Docker host, Kubernetes cluster), plans the
changes in a safe order and applies them. See DESIGN.md for the layers.
"""

__version__ = "0.1.0"
