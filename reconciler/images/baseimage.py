"""The local Python base image, built from Debian's packages when it cannot be pulled.

Our machines reach no container registry, so the image every environment layer starts
from is made here: debootstrap installs a minimal Debian (bookworm, whose python3 is 3.11,
the same minor version as the reconciler's own Python, so wheels resolved on the host fit
the image), the root file system is trimmed and fed to `docker import`. A machine builds it
once; a lock file keeps concurrent processes (parallel test runs, two daemons) from
building it twice. On a machine with a registry, a pull of the same name is tried first.

This module also holds what every image builder shares (both targets build with the
local Docker Engine): the progress
callback, the console progress line, and ImageBuildError.

Run as `python -m reconciler.images.baseimage` (scripts/build-base-image.sh does) to
build the image ahead of time.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors

from reconciler.logs import get_logger

log = get_logger(__name__)

BASE_IMAGE = "reconciler/python-base:bookworm"
DEFAULT_IMAGE_MAP = {
    # Azure ML's curated images cannot be pulled where there is no registry access; the
    # local Python base stands in (the environment's packages are installed on top).
    "mcr.microsoft.com/azureml/*": BASE_IMAGE,
    "python:3.11*": BASE_IMAGE,
}
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# python3-venv brings ensurepip and its bundled pip wheel, so `python3 -m venv` works
# offline in every image built on this one.
# libgomp1: OpenMP runtime that LightGBM and XGBoost wheels link against (an MLflow
# LightGBM model fails to import without it). libpython3.11: the shared libpython that
# embedding servers (Triton's Python backend stub) load.
PACKAGES = (
    "python3",
    "python3-venv",
    "python3-pip",
    "ca-certificates",
    "libgomp1",
    "libpython3.11",
)
# Recorded on the image: a base image we built from another package list is rebuilt, so a
# machine that built it before a package was added gets the package (environment images
# are keyed by the base image's id, so they follow).
PACKAGES_LABEL = "reconciler.base.packages"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INSTALL_HINT = "apt-get install -y debootstrap (as root), or `make base-image`"
LOG_TAIL_LINES = 30
# Lines of build output kept in memory for an error; a build prints a few hundred.
LOG_KEEP_LINES = 5000

ProgressCallback = Callable[[str, str], None]
"""Called with (event, message) for every step of a build, for display only.

The builders log every step with structlog themselves; the callback is how a terminal
(rich status line) or a caller keeping a build log (the storage-initializer log) sees the
same lines as they come.
"""


class ImageBuildError(Exception):
    """An image could not be built; `log_tail` holds the last lines of the build output."""

    def __init__(self, message: str, log_tail: str = "", *, log: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.log_tail = log_tail
        self.log = tuple(log)

    def __str__(self) -> str:
        if not self.log_tail:
            return self.message
        return f"{self.message}\n--- last lines of the build output ---\n{self.log_tail}"


class BuildLog:
    """Lines of one build's output: each is logged and shown, the newest are kept."""

    def __init__(self, event: str, progress: ProgressCallback | None, **context: Any) -> None:
        self.event = event
        self.progress = progress
        self.context = context
        self.lines: deque[str] = deque(maxlen=LOG_KEEP_LINES)

    def add(self, text: str) -> None:
        for raw in text.splitlines():
            line = raw.rstrip()
            if not line:
                continue
            self.lines.append(line)
            # Per-line events are debug: a build prints hundreds; phases are info.
            log.debug(self.event, line=line, **self.context)
            if self.progress is not None:
                self.progress(self.event, line)

    def tail(self, count: int = LOG_TAIL_LINES) -> str:
        return "\n".join(list(self.lines)[-count:])

    def error(self, message: str) -> ImageBuildError:
        return ImageBuildError(message, self.tail(), log=self.lines)


def report(progress: ProgressCallback | None, event: str, message: str, **fields: Any) -> None:
    """Log a phase of a build and show it."""
    log.info(event, message=message, **fields)
    if progress is not None:
        progress(event, message)


@contextlib.contextmanager
def console_progress(title: str) -> Iterator[ProgressCallback | None]:
    """A rich status line with elapsed time when stderr is a terminal, else no callback.

    Off a terminal (CI, a daemon's log) the structlog events already tell everything, and a
    spinner would only litter the output.
    """
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.markup import escape

    started = time.monotonic()
    console = Console(stderr=True)
    with console.status(escape(title)) as status:

        def show(event: str, message: str) -> None:
            elapsed = time.monotonic() - started
            status.update(f"[bold]{escape(title)}[/] {elapsed:5.0f}s  {escape(message[:100])}")

        yield show


# --- the Debian mirror of the host ---------------------------------------------------


def debian_mirror(sources: Iterable[str], suite: str = SUITE) -> str | None:
    """The first `deb` URI serving `suite` (not -updates or -security) with `main`.

    `sources` are the texts of apt's source files, one-line (.list) or deb822 (.sources)
    form alike. The host's own mirror is the one known to be reachable from this machine.
    """
    for text in sources:
        for uri, suites, components in _source_entries(text):
            if suite in suites and "main" in components:
                return uri.rstrip("/")
    return None


def _source_entries(text: str) -> Iterator[tuple[str, list[str], list[str]]]:
    # deb822 stanzas are separated by blank lines and hold "Key: value" fields.
    if re.search(r"^\s*(Types|URIs)\s*:", text, re.MULTILINE | re.IGNORECASE):
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.lstrip().startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() == "no":
                continue
            if "deb" not in fields.get("types", "").split():
                continue
            for uri in fields.get("uris", "").split():
                yield uri, fields.get("suites", "").split(), fields.get("components", "").split()
        return
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # options such as [signed-by=...]
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 3:
            yield words[0], [words[1]], words[2:]


def host_debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The host's Debian mirror, read from apt's sources; Debian's CDN when none is found."""
    files = [apt_dir / "sources.list"]
    # apt reads only these two suffixes, so `foo.list.disabled` is rightly skipped.
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    texts = []
    for path in files:
        with contextlib.suppress(OSError):
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
    return debian_mirror(texts) or DEFAULT_MIRROR


# --- building ----------------------------------------------------------------------------


def split_name(name: str) -> tuple[str, str]:
    """Repository and tag of an image name; a colon in a registry's host:port is no tag."""
    repository, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:
        return name, "latest"
    return repository, tag


def local_image_id(client: docker.DockerClient, name: str) -> str | None:
    try:
        image = client.images.get(name)
    except docker.errors.ImageNotFound:
        return None
    return str(image.id)


def ensure_base_image(
    client: docker.DockerClient,
    name: str = BASE_IMAGE,
    *,
    progress: ProgressCallback | None = None,
    pull: bool = True,
    mirror: str | None = None,
    lock_path: Path | None = None,
    workdir: Path | None = None,
) -> str:
    """The id of the local base image `name`: present, pulled, or built here.

    Building needs root and debootstrap (the error says how to install it). `mirror`
    defaults to the host's Debian mirror; `workdir` is where the root file system is made
    (a temporary folder under /var/tmp by default: it holds ~400 MB for a minute).
    """
    found = _current_base_id(client, name)
    if found is not None:
        return found
    if pull and (pulled := _try_pull(client, name, progress)) is not None:
        return pulled
    lock_path = lock_path or Path(tempfile.gettempdir()) / "reconciler-base-image.lock"
    with exclusive(lock_path, progress, name):
        # Another process may have built it while this one waited for the lock.
        found = _current_base_id(client, name)
        if found is not None:
            report(progress, "base_image_ready", f"{name} built by another process", image=name)
            return found
        return _build(
            client, name, mirror=mirror or host_debian_mirror(), workdir=workdir, progress=progress
        )


def _current_base_id(client: docker.DockerClient, name: str) -> str | None:
    """The id of `name` unless it is a base image we built from another package list.

    An image that is not ours (pulled, or made by the user) is taken as it is.
    """
    try:
        image = client.images.get(name)
    except docker.errors.ImageNotFound:
        return None
    labels = (image.attrs.get("Config") or {}).get("Labels") or {}
    if labels.get("reconciler.kind") == "base" and labels.get(PACKAGES_LABEL) != ",".join(PACKAGES):
        log.info(
            "base_image_outdated",
            image=name,
            packages=labels.get(PACKAGES_LABEL, ""),
            wanted=",".join(PACKAGES),
        )
        return None
    return str(image.id)


def _try_pull(
    client: docker.DockerClient, name: str, progress: ProgressCallback | None
) -> str | None:
    repository, tag = split_name(name)
    report(progress, "base_image_pull", f"pulling {name}", image=name)
    try:
        image = client.images.pull(repository, tag=tag)
    except docker.errors.APIError as err:
        # No registry here: the daemon answers at once that it cannot resolve the host.
        log.info("base_image_pull_failed", image=name, error=str(err.explanation or err))
        return None
    return str(image.id)


@contextlib.contextmanager
def exclusive(lock_path: Path, progress: ProgressCallback | None, name: str) -> Iterator[None]:
    """Hold an exclusive lock on a file while building `name`; wait (and say so) if taken."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report(
                progress,
                "image_build_wait",
                f"waiting for another build of {name}",
                lock=str(lock_path),
            )
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def debootstrap_command() -> str:
    """The path of debootstrap, or ImageBuildError saying how to install it."""
    # /usr/sbin is missing from PATH in some shells of non-login root sessions.
    found = shutil.which("debootstrap") or shutil.which(
        "debootstrap", path="/usr/sbin:/sbin:/usr/local/sbin"
    )
    if found is None:
        raise ImageBuildError(
            f"cannot build the base image {BASE_IMAGE}: debootstrap is not installed; "
            f"install it with: {INSTALL_HINT}"
        )
    return found


def _build(
    client: docker.DockerClient,
    name: str,
    *,
    mirror: str,
    workdir: Path | None,
    progress: ProgressCallback | None,
) -> str:
    debootstrap = debootstrap_command()
    if os.geteuid() != 0:
        raise ImageBuildError(
            f"cannot build the base image {name}: debootstrap needs root; run "
            "`sudo scripts/build-base-image.sh` once, or build as root"
        )
    started = time.monotonic()
    build_log = BuildLog("base_image_step", progress, image=name)
    root_parent = Path(tempfile.mkdtemp(prefix="reconciler-rootfs-", dir=workdir or "/var/tmp"))
    rootfs = root_parent / "rootfs"
    try:
        report(
            progress,
            "base_image_build",
            f"debootstrap {SUITE} from {mirror}",
            image=name,
            mirror=mirror,
        )
        command = [
            debootstrap,
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(rootfs),
            mirror,
        ]
        _run_logged(command, build_log, failure=f"debootstrap of {SUITE} failed")
        _unmount_under(rootfs)
        report(progress, "base_image_trim", "removing apt caches, docs and locales", image=name)
        _trim(rootfs)
        report(progress, "base_image_import", f"docker import as {name}", image=name)
        image_id = _import(client, rootfs, name)
    finally:
        _unmount_under(rootfs)
        shutil.rmtree(root_parent, ignore_errors=True)
    size = int(client.images.get(image_id).attrs.get("Size", 0))
    seconds = round(time.monotonic() - started, 1)
    log.info("base_image_built", image=name, id=image_id, seconds=seconds, size_bytes=size)
    report(
        progress,
        "base_image_ready",
        f"{name} built in {seconds:.0f}s, {size / 1e6:.0f} MB",
        image=name,
    )
    return image_id


def _run_logged(command: list[str], build_log: BuildLog, *, failure: str) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        build_log.add(line)
    if proc.wait() != 0:
        raise build_log.error(f"{failure} (exit code {proc.returncode}): {' '.join(command)}")


def _unmount_under(rootfs: Path) -> None:
    # A debootstrap that failed half-way can leave /proc or /sys mounted in the root file
    # system; deleting the tree then would reach into the host's /proc and /sys.
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return
    prefix = str(rootfs.resolve()) + "/"
    targets = [line.split()[1] for line in mounts if len(line.split()) > 1]
    for target in sorted((t for t in targets if t.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)


# Removed from the root file system: nothing at run time reads them, and they are a third
# of a minimal Debian.
TRIM_GLOBS = (
    "var/cache/apt/archives/*.deb",
    "var/cache/apt/*.bin",
    "var/lib/apt/lists/*",
    "var/cache/debconf/*-old",
    "var/log/*",
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/lintian/*",
    "usr/share/locale/*",
)


def _trim(rootfs: Path) -> None:
    for pattern in TRIM_GLOBS:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    # Keep copyright files out and later installs small, as Debian's own slim images do.
    excludes = rootfs / "etc/dpkg/dpkg.cfg.d/reconciler-excludes"
    excludes.write_text(
        "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n"
        "path-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n"
        "path-exclude /usr/share/locale/*\n"
    )


def _import(client: docker.DockerClient, rootfs: Path, name: str) -> str:
    repository, tag = split_name(name)
    changes = [
        'CMD ["/bin/bash"]',
        f"ENV PATH={DEFAULT_PATH}",
        "ENV LANG=C.UTF-8",
        "LABEL reconciler.kind=base",
        f"LABEL reconciler.base.suite={SUITE}",
        f"LABEL {PACKAGES_LABEL}={','.join(PACKAGES)}",
    ]
    # Devices, /proc and /sys are provided by the runtime; their nodes only break import.
    tar = subprocess.Popen(
        [
            "tar",
            "-C",
            str(rootfs),
            "--numeric-owner",
            "--exclude=./dev/*",
            "--exclude=./proc/*",
            "--exclude=./sys/*",
            "-c",
            ".",
        ],
        stdout=subprocess.PIPE,
    )
    assert tar.stdout is not None
    stdout = tar.stdout
    # A generator makes requests send the tar chunked as it is made, never all in memory.
    chunks = iter(lambda: stdout.read(1 << 20), b"")
    try:
        client.api.import_image(
            src=chunks, repository=repository, tag=tag, changes=changes, stream_src=True
        )
    except docker.errors.APIError as err:
        tar.kill()
        raise ImageBuildError(f"docker import of {name} failed: {err}") from err
    finally:
        stdout.close()
    if tar.wait() != 0:
        raise ImageBuildError(f"tar of the root file system for {name} failed")
    found = local_image_id(client, name)
    if found is None:
        raise ImageBuildError(f"docker import of {name} left no image")
    return found


def main() -> int:
    """Build (or find) the base image; for scripts/build-base-image.sh and Makefile."""
    name = sys.argv[1] if len(sys.argv) > 1 else BASE_IMAGE
    # Phases only: the hundreds of debootstrap lines are debug events, shown on a terminal
    # by the status line instead.
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    client = docker.from_env()
    try:
        with console_progress(f"base image {name}") as progress:
            image_id = ensure_base_image(client, name, progress=progress)
    except ImageBuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    size = int(client.images.get(image_id).attrs.get("Size", 0))
    print(f"{name} {image_id} {size / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
