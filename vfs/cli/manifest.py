"""``vfs manifest …``: manifests of directories, like ``deadline manifest …``."""

from __future__ import annotations

import os

import click

from vfs.cli.common import VfsGroup, emit_json
from vfs.snapshot import snapshot_directory, write_manifest_file


@click.group(cls=VfsGroup)
def manifest() -> None:
    """Create and inspect manifests."""


@manifest.command()
@click.option("--root", required=True, help="The directory to snapshot.")
@click.option(
    "-d", "--destination", default=None, help="Where to write the manifest (default: the root)."
)
@click.option("-n", "--name", default=None, help="Name prefix of the manifest file.")
@click.option("-i", "--include", multiple=True, help="Glob of files to include (repeatable).")
@click.option("-e", "--exclude", multiple=True, help="Glob of files to exclude (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def snapshot(
    root: str,
    destination: str | None,
    name: str | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    as_json: bool,
) -> None:
    """Write the manifest of the files under ROOT.

    The file is named NAME-HASH-TIMESTAMP.manifest exactly as `deadline manifest snapshot`
    names it, and holds the same bytes for the same tree.
    """
    if not os.path.isdir(root):
        raise click.ClickException(f"snapshot root {root} is not a directory")
    result = snapshot_directory(root, list(include) or None, list(exclude) or None)
    if result is None:
        if as_json:
            emit_json({"root": root, "manifest": None})
        else:
            click.echo("No files selected: no manifest generated")
        return
    path = write_manifest_file(root, result, destination or root, name)
    if as_json:
        emit_json({"root": root, "manifest": path})
    else:
        click.echo(f"Manifest generated at {path}")
