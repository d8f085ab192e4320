"""``vfs attachment …``: moving file contents to and from the store."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import click

from vfs.cli.common import VfsGroup, byte_progress, emit_json, make_s3_options, s3_options
from vfs.defaults import default_cache_dir
from vfs.errors import VfsError
from vfs.hashing import hash_string
from vfs.manifest import decode_any_manifest
from vfs.pathmap import PathMappingRule, parse_path_mapping_rules
from vfs.storage import open_store, read_location
from vfs.storage.check_cache import S3CheckCache
from vfs.transfer import (
    ConflictResolution,
    DownloadOrchestrator,
    TransferProgress,
    TransferStatistics,
    UploadOrchestrator,
)
from vfs.transfer.upload import plan_objects


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
@click.option("--workers", default=16, show_default=True, help="Small objects uploaded at once.")
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
    hashed again first, so a file changed since its manifest was made is refused. Files
    up to 160 MiB go in parallel, larger ones one at a time as multipart uploads; v2
    manifests' chunked files go as one object per 256 MiB chunk. The upload stops at the
    first error that would fail every file (no bucket, access denied, no credentials).
    """
    s3 = make_s3_options(endpoint_url, expected_bucket_owner)
    store = open_store(s3_root_uri, s3)
    check_cache = S3CheckCache(s3_check_cache_dir or default_cache_dir())
    orch = UploadOrchestrator(
        store, workers=workers, check_cache=None if force_s3_check else check_cache
    )
    results = []
    try:
        for manifest_file, root in pair_roots(list(manifests), list(roots)):
            m = decode_any_manifest(read_location(manifest_file, s3), source=manifest_file)
            total = sum(o.size for o in plan_objects(m, root))
            with byte_progress("uploading", total, not as_json) as advance:
                stats = orch.upload_manifest(m, root, progress=_UploadBarFeed(advance, total))
            results.append(
                {"manifest": manifest_file, "root": root, "dest": store.uri, **stats.as_dict()}
            )
            if not as_json:
                click.echo(_upload_line(manifest_file, store.uri, stats))
    finally:
        check_cache.close()
    if as_json:
        emit_json(results)


class _UploadBarFeed:
    """A progress callback feeding a byte progress bar (``advance(n)``): bytes sent, plus
    the bytes of objects found already stored (they leave the report's ``bytes_total``),
    so that the bar ends full; never cancels."""

    def __init__(self, advance: Callable[[int], None] | None, total: int) -> None:
        self.advance = advance
        self.total = total
        self.done = 0

    def __call__(self, p: TransferProgress) -> bool:
        if self.advance is not None:
            done = p.bytes_done + (self.total - p.bytes_total)
            self.advance(done - self.done)
            self.done = done
        return True


def _upload_line(manifest: str, store: str, s: TransferStatistics) -> str:
    return (
        f"{manifest}: {s.files_transferred} objects uploaded ({s.bytes_transferred} bytes, "
        f"{s.rate / 1e6:.1f} MB/s), {s.files_skipped} already in {store}"
    )


def download_destinations(
    manifests: list[str],
    roots: list[str],
    dest: str | None,
    rules: list[PathMappingRule],
) -> list[tuple[str, str]]:
    """Pair each manifest with the directory its files go to.

    ``--root-dirs``: one per manifest, in order. Otherwise as ``deadline attachment
    download`` (``api/attachment.py::_attachment_download``): the destination of the path
    mapping rule whose hashed source path (xxh128 of ``source_path``) appears in the
    manifest's file name, else ``{dest or cwd}/{manifest file name}``; with one manifest and
    ``--dest`` and no matching rule, ``dest`` itself. Raises :class:`VfsError` when the
    counts differ or two manifests would share a destination.
    """
    if roots:
        if dest is not None or len(roots) != len(manifests):
            raise VfsError(
                f"{len(manifests)} manifests but {len(roots)} --root-dirs"
                + (" and --dest" if dest else ""),
                hint="give one --root-dirs per manifest, in order, or one --dest",
            )
        return list(zip(manifests, roots, strict=True))
    pairs: list[tuple[str, str]] = []
    for m in manifests:
        name = os.path.basename(m.rstrip("/"))
        mapped = next((r.destination_path for r in rules if r.hashed_source_path() in name), None)
        if mapped is not None:
            target = mapped
        elif dest is not None and len(manifests) == 1:
            target = dest
        else:
            target = os.path.join(dest or os.getcwd(), name)
        if any(os.path.abspath(t) == os.path.abspath(target) for _, t in pairs):
            raise VfsError(
                f"{target} is the destination of two manifests",
                hint="one destination per manifest: use --root-dirs",
            )
        pairs.append((m, target))
    return pairs


class _BarFeed:
    """A progress callback feeding a byte progress bar (``advance(n)``) with the bytes
    done since the last report; never cancels."""

    def __init__(self, advance: Callable[[int], None] | None) -> None:
        self.advance = advance
        self.done = 0

    def __call__(self, p: TransferProgress) -> bool:
        if self.advance is not None:
            self.advance(p.bytes_done - self.done)
            self.done = p.bytes_done
        return True


def _summary_line(manifest: str, dest: str, s: TransferStatistics) -> str:
    rate = s.rate / 1e6
    line = (
        f"{manifest} -> {dest}: {s.files_transferred} files downloaded "
        f"({s.bytes_transferred} bytes, {rate:.1f} MB/s), {s.files_skipped} skipped"
    )
    return line + (" - cancelled" if s.cancelled else "")


@attachment.command()
@click.option(
    "-m",
    "--manifests",
    "manifests",
    multiple=True,
    required=True,
    help="Manifest file or s3:// URI (repeatable).",
)
@click.option(
    "-r",
    "--root-dirs",
    "--root-dir",
    "roots",
    multiple=True,
    help="Directory to download each manifest into, one per manifest, in order.",
)
@click.option(
    "--dest",
    default=None,
    metavar="DIR",
    help="Directory to download into (several manifests: DIR/<manifest file name>).",
)
@click.option(
    "--s3-root-uri",
    "--store",
    "s3_root_uri",
    required=True,
    metavar="URI",
    help="Store root: s3://BUCKET/PREFIX or file:///DIR.",
)
@click.option(
    "--path-mapping-rules",
    default=None,
    metavar="FILE",
    help="JSON rules file; a manifest whose name holds a rule's hashed source path goes to "
    "that rule's destination (as deadline).",
)
@click.option(
    "--conflict-resolution",
    type=click.Choice([c.value for c in ConflictResolution], case_sensitive=False),
    default=ConflictResolution.CREATE_COPY.value,
    show_default=True,
    help="When a file exists: skip it, overwrite it, or write 'name (1).ext'.",
)
@click.option("--verify-hash", is_flag=True, help="Hash every file before it gets its name.")
@click.option("--workers", default=16, show_default=True, help="Parallel file downloads.")
@s3_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def download(
    manifests: tuple[str, ...],
    roots: tuple[str, ...],
    dest: str | None,
    s3_root_uri: str,
    path_mapping_rules: str | None,
    conflict_resolution: str,
    verify_hash: bool,
    workers: int,
    endpoint_url: str | None,
    expected_bucket_owner: str | None,
    as_json: bool,
) -> None:
    """Download the files the manifests list from the content-addressed store.

    Each file is written to a temporary file beside its destination and renamed once
    complete, with the manifest's mtime; nothing partial is left on an error or Ctrl-C.
    Free space is checked first, and the download stops at the first error that would
    fail every file (no bucket, access denied, no credentials).
    """
    s3 = make_s3_options(endpoint_url, expected_bucket_owner)  # --profile/--region: env
    rules: list[PathMappingRule] = []
    if path_mapping_rules:
        try:
            with open(path_mapping_rules, encoding="utf-8") as f:
                rules = parse_path_mapping_rules(json.load(f))
        except (OSError, ValueError) as e:
            raise VfsError(f"cannot read path mapping rules {path_mapping_rules}: {e}") from None
    pairs = download_destinations(list(manifests), list(roots), dest, rules)
    store = open_store(s3_root_uri, s3)
    orch = DownloadOrchestrator(store, workers=workers, verify_hash=verify_hash)
    resolution = ConflictResolution(conflict_resolution.lower())
    results = []
    for manifest_file, target in pairs:
        m = decode_any_manifest(read_location(manifest_file, s3), source=manifest_file)
        with byte_progress(
            f"{os.path.basename(manifest_file)}", m.effective_total_size(), not as_json
        ) as advance:
            stats = orch.download_manifest(
                m, target, conflict_resolution=resolution, progress=_BarFeed(advance)
            )
        results.append({"manifest": manifest_file, "dest": target, **stats.as_dict()})
        if not as_json:
            click.echo(_summary_line(manifest_file, target, stats))
    if as_json:
        emit_json(results)
