#!/bin/sh
# Build (or find) the local Python base image of the Docker target, reconciler/python-base:bookworm.
#
# No container registry is reachable on our machines, so the image is made from Debian's
# packages: debootstrap (as root) into a temporary folder, then docker import. It is built
# once per machine; later runs print the existing image at once. Needs: root, the
# `debootstrap` package (apt-get install -y debootstrap), a running Docker Engine.
#
# Usage: scripts/build-base-image.sh [IMAGE-NAME]
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PYTHON" ]; then
    PYTHON=python3
fi
exec "$PYTHON" -m reconciler.images.baseimage "$@"
