"""The Kubernetes target: endpoints as Deployments, Services, Secrets and routes.

Modules: options (reconciler.yaml settings), manifests (PURE: specs -> manifests), rollout
(PURE: Deployment status -> provisioning state), images (build with reconciler.images
builders, push to the target's registry under content-addressed tags), client (server-side
apply and label-selected lists over the `kubernetes` client), target (observe and apply),
render (`reconcile render`).

What differs from the Docker target, and why:
- Instances are pods of a Deployment; the deployment controller does the rolling update
  (maxSurge 20%, maxUnavailable 0); the step applies the Deployment and returns Waiting
  ("rolled out"), and later passes follow the rollout from what the API server shows.
- The router reaches a deployment through its Service, one port per instance slot, so the
  router's per-instance admission limit counts the right number of instances while pods
  come and go without the reconciler (see manifests).
- A router config change is a Secret that the kubelet refreshes in the router pods; each
  router pod says which config it serves (read through the API server's pod proxy), and a
  step returns once every one serves the new config. Lagging pods are annotated, which
  makes their kubelet refresh the Secret at once; in the cluster the config is also posted
  to each router pod.
- With `router: gateway-api`, the Gateway carries the data plane: weights, mirror percent
  and the pin header are HTTPRoute rules, but keys and tokens are not checked by a plain
  HTTPRoute (authentication is the gateway implementation's policy), request limits
  (408/429) are the gateway's, and a custom container's scoring path is not rewritten to
  /score. Set `scoring_url` to the gateway's address: the default names cluster DNS.
"""
