"""Module paths that commands name: the base image builder keeps its old `python -m` path."""

from __future__ import annotations

import reconciler.images.baseimage as baseimage
import reconciler.targets.docker.baseimage as former


def test_the_former_base_image_command_path_runs_the_same_builder() -> None:
    assert former.main is baseimage.main
