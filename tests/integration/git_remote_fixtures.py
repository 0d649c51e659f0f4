"""A bare git remote in a temporary folder and pre-receive hooks that make the races of a
daemon pushing to it happen at a chosen moment, every time: a person's push landing first
(the daemon's push is refused because the branch moved), or the daemon killed while its
push is on the wire (its commit made, never landed) or just after it landed."""

from __future__ import annotations

import subprocess
from pathlib import Path


def remote_git(remote: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "--git-dir", str(remote), *args], check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def on_push_once(
    remote: Path,
    *,
    message: str,
    marker: Path,
    run: str,
    refuse: bool = False,
    hook_name: str = "pre-receive",
) -> None:
    """A hook (pre-receive: before the branch moves; post-receive: once it has): the first
    push whose new tip's message has a line starting with `message` (a grep pattern) runs
    the shell command `run` (with $new, the pushed commit) and, before the branch moves, is
    refused when `refuse`; while `marker` exists, and it removes it. Other pushes pass
    untouched."""
    marker.write_text("armed")
    hook = remote / "hooks" / hook_name
    hook.write_text(
        "#!/bin/sh\n"
        "read old new ref\n"
        f"if [ -f {marker} ] && "
        f'git log -1 --format=%B "$new" | grep -q "^{message}"; then\n'
        f"  rm {marker}\n"
        f"  {run}\n"
        f"  exit {1 if refuse else 0}\n"
        "fi\n"
        "exit 0\n"
    )
    hook.chmod(0o755)


def racing_push(remote: Path, folder: Path) -> str:
    """A shell command (for on_push_once) by which a person, from a clone of the remote in
    `folder`, pushes a commit of NOTES.md first, in a clean environment (no GIT_DIR of the
    hook's own push). Its commit is named `racer: notes`, by Racer."""
    subprocess.run(["git", "clone", "-q", str(remote), str(folder)], check=True)
    who = "-c user.name=Racer -c user.email=r@example.com"
    script = folder.parent / f"{folder.name}.sh"
    script.write_text(
        f"cd {folder} && git {who} pull -q --rebase origin main && echo racing >> NOTES.md "
        f'&& git add NOTES.md && git {who} commit -qm "racer: notes" && git push -q origin main\n'
    )
    return f'env -i PATH="$PATH" HOME={folder.parent} sh {script} >&2'
