"""Kept so that `python -m reconciler.targets.docker.baseimage` (the command earlier README
versions and users' scripts name) still builds the base image: the module moved to
reconciler.images.baseimage, which both targets share. Import from there.
"""

from __future__ import annotations

import sys

from reconciler.images.baseimage import main

if __name__ == "__main__":
    sys.exit(main())
