"""``vfs stats MOUNTPOINT``: a mount's counters."""

from __future__ import annotations

import json
import os

import click

from vfs.cli.common import emit_json
from vfs.errors import VfsError

STATS_XATTR = "user.vfs.stats"


def read_mount_stats(mountpoint: str) -> dict[str, int]:
    """The counters of the vfs mount at ``mountpoint`` (root xattr ``user.vfs.stats``).

    Raises :class:`VfsError` when ``mountpoint`` is not a vfs mount.
    """
    try:
        raw = os.getxattr(mountpoint, STATS_XATTR)
    except OSError as e:
        raise VfsError(
            f"{mountpoint} is not a vfs mount ({e.strerror})",
            hint="give the mount point of a running `vfs mount`",
        ) from None
    return dict(json.loads(raw))


@click.command()
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the counters as JSON.")
def stats(mountpoint: str, as_json: bool) -> None:
    """Show a mount's counters: requests by kind, cache hits and misses, bytes fetched and
    served, retries and I/O errors.

    On a writable mount also the overlay's (files and bytes changed, copy-ups, hashes kept)
    and write-behind's (objects and bytes uploaded)."""
    counters = read_mount_stats(mountpoint)
    if as_json:
        emit_json(counters)
        return
    hits, misses = counters.get("cache.hits", 0), counters.get("cache.misses", 0)
    width = max((len(k) for k in counters), default=10)
    for key, value in counters.items():
        click.echo(f"{key:<{width}}  {value:>14,}")
    if hits + misses:
        click.echo(f"{'cache.hit_ratio':<{width}}  {hits / (hits + misses):>14.3f}")
