"""Progressive delivery in git: rollout policies, the analysis of a step, and the pure
planning of the next commit (promotion or rollback). PURE: no git, no network, no clock.

- policy: the `rollouts:` mapping of reconciler.yaml as frozen dataclasses.
- analysis: the router's Prometheus exposition -> snapshots; two snapshots -> figures of a
  step; figures + thresholds -> a verdict (pass, fail, wait).
- machine: when a rollout starts (two revisions' desired states), which step the committed
  YAML is at, and the next edit with its commit message and trailers.
- yamledit: that edit applied to the endpoint file's text, comments and layout kept.

The daemon does the I/O around these: it scrapes the router, keeps the snapshot taken when
a step began, commits the edit (or pushes a branch) and writes the figures to status.
"""
