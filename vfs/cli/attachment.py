"""``vfs attachment …``: moving file contents to and from the store."""

from __future__ import annotations

import os

import click

from vfs.cli.common import VfsGroup, emit_json, make_s3_options, s3_options
from vfs.defaults import default_cache_dir
from vfs.errors import VfsError
from vfs.hashing import hash_string
from vfs.manifest import decode_manifest
from vfs.storage import open_store, read_location
from vfs.storage.check_cache import S3CheckCache
from vfs.transfer import upload_manifest_files


@click.group(cls=VfsGroup)
def attachment() -> None:
    """Upload and download job attachment data."""


def pair_roots(manifests: list[str], roots: list[str]) -> list[tuple[str, str]]:
    """Pair each manifest file with its root directory.

    One root per manifest in order when the counts match and there is one of each;
    otherwise, like deadline, the root whose xxh128 appears in the manifest file name.
    Raises :class:`VfsError` when a manifest has no matching root.
    """
    if len(manifests) == 1 and len(roots) == 1:
        return [(manifests[0], roots[0])]
    pairs = []
    for m in manifests:
        matches = [r for r in roots if hash_string(r) in os.path.basename(m)]
        if len(matches) != 1:
            raise VfsError(
                f"cannot tell which root belongs to manifest {m}",
                hint="pass one -m and one -r, or keep the official manifest file names",
            )
        pairs.append((m, matches[0]))
    return pairs


@attachment.command()
@click.option(
    "-m",
    "--manifests",
    "manifests",
    multiple=True,
    required=True,
    help="Manifest file (repeatable).",
)
@click.option(
    "-r",
    "--root-dirs",
    "roots",
    multiple=True,
    required=True,
    help="Root directory the manifest's paths are relative to (repeatable).",
)
@click.option(
    "--s3-root-uri",
    required=True,
    metavar="URI",
    help="Store root: s3://BUCKET/PREFIX or file:///DIR.",
)
@click.option("--workers", default=8, show_default=True, help="Parallel uploads.")
@click.option(
    "--s3-check-cache-dir",
    default=None,
    metavar="DIR",
    help="Where the S3 check cache lives (default: the vfs cache directory).",
)
@click.option(
    "--force-s3-check",
    is_flag=True,
    help="HEAD every object instead of trusting the S3 check cache.",
)
@s3_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def upload(
    manifests: tuple[str, ...],
    roots: tuple[str, ...],
    s3_root_uri: str,
    workers: int,
    s3_check_cache_dir: str | None,
    force_s3_check: bool,
    endpoint_url: str | None,
    expected_bucket_owner: str | None,
    as_json: bool,
) -> None:
    """Upload the files the manifests list to the content-addressed store.

    Objects already in the store with the right size are skipped; every other file is
    hashed again first, so a file changed since its manifest was made is refused.
    """
    s3 = make_s3_options(endpoint_url, expected_bucket_owner)
    store = open_store(s3_root_uri, s3)
    check_cache = S3CheckCache(s3_check_cache_dir or default_cache_dir())
    results = []
    for manifest_file, root in pair_roots(list(manifests), list(roots)):
        m = decode_manifest(read_location(manifest_file, s3), source=manifest_file)
        s = upload_manifest_files(
            m, root, store, workers=workers,
            check_cache=None if force_s3_check else check_cache,
        )  # fmt: skip
        results.append(
            {
                "manifest": manifest_file,
                "root": root,
                "objects": s.objects,
                "uploaded": s.uploaded,
                "uploaded_bytes": s.uploaded_bytes,
                "skipped": s.skipped,
                "skipped_bytes": s.skipped_bytes,
            }
        )
        if not as_json:
            click.echo(
                f"{manifest_file}: {s.uploaded} objects uploaded ({s.uploaded_bytes} bytes), "
                f"{s.skipped} already in {store.uri}"
            )
    check_cache.close()
    if as_json:
        emit_json(results)
