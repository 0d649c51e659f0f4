"""The formats a plan is printed in (`--output`), for the command line and the renderer.

A module of its own so that the command line declares its options without importing the
renderer and the model behind it (issue 15: `reconcile --help` starts at once).
"""

from __future__ import annotations

OUTPUT_FORMATS = ("text", "json", "markdown")
