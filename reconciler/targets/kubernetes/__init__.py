"""The Kubernetes target: endpoints as Deployments, Services, Secrets and routes.

manifests (pure: specs -> manifests), options (reconciler.yaml settings), images (build
with the Docker target's builder, push to the target's registry), client (server-side
apply and label-selected lists over the `kubernetes` client), target (observe and apply).
"""
