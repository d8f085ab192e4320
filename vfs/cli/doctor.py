"""``vfs doctor``: what this node lacks to mount and transfer, and how to fix it."""

from __future__ import annotations

import dataclasses

import click

from vfs.cli.common import emit_json, make_s3_options, s3_options, size_callback
from vfs.defaults import DEFAULT_CACHE_SIZE, default_cache_dir
from vfs.doctor import FAIL, OK, run_checks


@click.command()
@click.option(
    "--cache-dir",
    default=None,
    metavar="DIR",
    help="The block cache to check (default: $VFS_CACHE_DIR or ~/.cache/vfs).",
)
@click.option(
    "--cache-size",
    default=DEFAULT_CACHE_SIZE,
    callback=size_callback,
    show_default=True,
    help="Cache bound to check the free space against.",
)
@click.option(
    "--store",
    "store_uri",
    default=None,
    metavar="URI",
    help="Also check this store (s3://BUCKET/PREFIX or file:///DIR) with the "
    "credentials at hand: one HEAD request.",
)
@s3_options
@click.option("--json", "as_json", is_flag=True, help="Findings as JSON.")
def doctor(
    cache_dir: str | None,
    cache_size: int,
    store_uri: str | None,
    endpoint_url: str | None,
    expected_bucket_owner: str | None,
    as_json: bool,
) -> None:
    """Check this node can mount; say what to fix.

    Checks /dev/fuse, fusermount3, pyfuse3, user_allow_other, the permission to tune the
    kernel's readahead, the cache directory and its free space, and (with --store) the
    credentials and the store. Exit status 1 when something would make a mount or a
    transfer fail; warnings only slow things down."""
    findings = run_checks(
        cache_dir or default_cache_dir(),
        cache_size,
        store_uri,
        make_s3_options(endpoint_url, expected_bucket_owner),
    )
    if as_json:
        emit_json([dataclasses.asdict(f) for f in findings])
    else:
        for f in findings:
            mark = {OK: "ok  ", FAIL: "FAIL"}.get(f.status, "warn")
            click.echo(f"{mark}  {f.name}: {f.detail}")
            if f.fix:
                click.echo(f"      fix: {f.fix}")
    if any(f.status == FAIL for f in findings):
        raise SystemExit(1)
