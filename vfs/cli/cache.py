"""``vfs cache stats | prune | warm``: the node's block cache."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from vfs.cli.common import (
    VfsGroup,
    byte_progress,
    emit_json,
    make_s3_options,
    parse_size,
    s3_options,
    size_callback,
)
from vfs.defaults import DEFAULT_CACHE_SIZE, default_cache_dir
from vfs.errors import VfsError
from vfs.storage import open_store

if TYPE_CHECKING:
    from vfs.mount.blockcache import BlockCache

# The mount layer is imported inside the commands: parts of it import the FUSE stack
# (trio), which `vfs cache stats|prune` never need (tests/test_cli_imports.py).

cache_dir_option = click.option(
    "--cache-dir",
    default=None,
    metavar="DIR",
    help="The block cache (default: $VFS_CACHE_DIR or ~/.cache/vfs).",
)


def _open(cache_dir: str | None, max_size: int = 2**62) -> BlockCache:
    from vfs.mount.blockcache import BlockCache

    return BlockCache(cache_dir or default_cache_dir(), max_size)


@click.group(cls=VfsGroup)
def cache() -> None:
    """Inspect, prune and warm the block cache shared by the node's mounts."""


@cache.command("stats")
@cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def cache_stats(cache_dir: str | None, as_json: bool) -> None:
    """Entries and bytes in the cache, and free space on its disk (read-only: changes
    nothing, also while mounts use the cache)."""
    c = _open(cache_dir)
    s = c.stats()
    c.close()
    data = {"cache_dir": c.root, "entries": s.entries, "bytes": s.used,
            "reserved_bytes": s.reserved, "verified_objects": s.verified,
            "free_bytes": s.free_bytes}  # fmt: skip
    if as_json:
        emit_json(data)
        return
    for key, value in data.items():
        click.echo(f"{key:<15} {value:>20,}" if isinstance(value, int) else f"{key:<15} {value}")


@cache.command()
@cache_dir_option
@click.option(
    "--to",
    "to_size",
    metavar="SIZE",
    default=None,
    help="Evict least recently used entries until the cache holds at most SIZE.",
)
@click.option("--all", "everything", is_flag=True, help="Evict everything not in use.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def prune(cache_dir: str | None, to_size: str | None, everything: bool, as_json: bool) -> None:
    """Evict least recently used entries, also while mounts use the cache (a mount whose
    block was evicted fetches it again on its next read; nothing fails)."""
    if (to_size is None) == (not everything):
        raise VfsError("give exactly one of --to SIZE and --all")
    target = 0 if everything else parse_size(to_size or "0")
    c = _open(cache_dir)
    freed = c.evict(target)
    s = c.stats()
    c.close()
    if as_json:
        emit_json({"freed_bytes": freed, "entries": s.entries, "bytes": s.used})
    else:
        click.echo(f"freed {freed:,} bytes; {s.entries:,} entries, {s.used:,} bytes remain")


@cache.command()
@click.option(
    "--manifest",
    "manifests",
    multiple=True,
    required=True,
    metavar="FILE",
    help="Manifest file or s3://BUCKET/KEY (repeatable; merged, later ones win).",
)
@click.option(
    "--store",
    "store_uri",
    required=True,
    metavar="URI",
    help="Where the CAS objects are: s3://BUCKET/PREFIX or file:///DIR.",
)
@click.option(
    "-i",
    "--include",
    multiple=True,
    metavar="GLOB",
    help="Only files whose path matches, as with `manifest snapshot -i` (e.g. '**/*.exr'; "
    "repeatable).",
)
@cache_dir_option
@click.option(
    "--cache-size",
    default=DEFAULT_CACHE_SIZE,
    show_default=True,
    metavar="SIZE",
    callback=size_callback,
    help="Bound of the block cache.",
)
@click.option("--workers", default=8, show_default=True, help="Parallel downloads.")
@s3_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def warm(
    manifests: tuple[str, ...],
    store_uri: str,
    include: tuple[str, ...],
    cache_dir: str | None,
    cache_size: int,
    workers: int,
    endpoint_url: str | None,
    expected_bucket_owner: str | None,
    as_json: bool,
) -> None:
    """Fetch the content of a manifest's files into the cache ahead of a task.

    The manifests (either format) are read and merged exactly as ``vfs mount`` does, so the
    files warmed are the files a mount of the same manifests shows.
    """
    from vfs.mount.service import load_manifests
    from vfs.mount.tree import InodeTree
    from vfs.mount.warm import tree_objects, warm_cache

    s3 = make_s3_options(endpoint_url, expected_bucket_owner)
    decoded, sources = load_manifests(manifests, s3)
    entries, objects = tree_objects(InodeTree.from_manifests(decoded, sources), include)
    total = sum(o.size for o in objects.values())
    store = open_store(store_uri, s3)
    c = _open(cache_dir, cache_size)
    with byte_progress("warming", total, not as_json) as on_bytes:
        summary = warm_cache(c, store, objects.values(), workers=workers, on_bytes=on_bytes)
    c.close()
    failures = summary.failures or []
    if as_json:
        emit_json({"files": len(entries), "objects": summary.objects, "cached": summary.cached,
                   "fetched_bytes": summary.fetched_bytes, "failures": failures})  # fmt: skip
    else:
        click.echo(
            f"{len(entries)} files, {summary.objects} objects: {summary.cached} already cached, "
            f"{summary.fetched_bytes:,} bytes fetched into {c.root}"
        )
    if failures:
        raise VfsError(f"{len(failures)} objects could not be cached:\n  " + "\n  ".join(failures))
