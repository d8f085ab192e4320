"""``vfs install-deadline-vfs DIR``: make vfs the worker agent's ``deadline_vfs``."""

from __future__ import annotations

import os
import shutil
import sys

import click

from vfs.cli.deadline_vfs import LAUNCH_SCRIPT, install_layout
from vfs.errors import VfsError


@click.command("install-deadline-vfs")
@click.argument("directory", type=click.Path(file_okay=False))
def install_deadline_vfs(directory: str) -> None:
    """Install vfs as the worker agent's deadline_vfs.

    DIRECTORY gets the layout the Deadline Cloud worker agent looks for: bin/deadline_vfs,
    scripts/production/al2/run_deadline_vfs_al2.sh, link/fusermount3 and lib/. Then point
    the agent at it: DEADLINE_VFS_PATH=DIRECTORY (the agent's installer: --vfs-install-path
    DIRECTORY), or install into /opt/deadline_vfs, where it looks by default."""
    fusermount = shutil.which("fusermount3")
    if fusermount is None:
        raise VfsError("fusermount3 is not installed", hint="install fuse3 first")
    try:
        install_layout(directory, sys.executable, fusermount)
    except OSError as e:
        raise VfsError(f"cannot write {directory}: {e.strerror}") from None
    root = os.path.abspath(directory)
    click.echo(f"installed {root}/bin/deadline_vfs and {root}/{LAUNCH_SCRIPT}")
    click.echo(f"set DEADLINE_VFS_PATH={root} for the worker agent")
