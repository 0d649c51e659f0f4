"""Targets: where endpoints run. Each one hides its platform behind targets.base.Target."""
