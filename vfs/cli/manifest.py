"""``vfs manifest …``: manifests of directories, like ``deadline manifest …``.

Flags keep deadline's names where a counterpart exists (``--root``, ``-d/--destination``,
``-n/--name``, ``-i/--include``, ``-e/--exclude``, ``-ie/--include-exclude-config``, ``--diff``,
``--force-rehash``, ``--manifest``, ``--s3-cas-uri``, ``--s3-manifest-prefix``, ``--json``);
commands that take a store also accept ``--store``, as the other command groups do.
Every command prints JSON with ``--json`` for scripts.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import click

from vfs.cli.common import VfsGroup, byte_progress, emit_json, make_s3_options, s3_options
from vfs.defaults import default_cache_dir
from vfs.errors import VfsError
from vfs.hash_cache import HashCache
from vfs.hashing import hash_bytes
from vfs.manifest import (
    Manifest,
    ManifestV2,
    create_diff_manifest,
    decode_any_manifest,
    encode_any_manifest,
    merge_manifests_chronologically,
    to_v1,
)
from vfs.manifest.model import MANIFEST_VERSION_V1, MANIFEST_VERSION_V2
from vfs.snapshot import (
    diff_directory,
    snapshot_changes,
    snapshot_directory,
    snapshot_directory_v2,
    write_manifest_file,
)
from vfs.storage import (
    discover_output_manifest_keys,
    download_manifest,
    manifest_metadata,
    open_store,
    read_location,
    upload_manifest,
)
from vfs.storage.layout import MANIFEST_FOLDER, join_key


@click.group(cls=VfsGroup)
def manifest() -> None:
    """Create, compare, merge, inspect and move manifests."""


# -- shared options -------------------------------------------------------------------------


def glob_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``-i``, ``-e`` and ``-ie`` as deadline names them."""
    func = click.option(
        "-ie",
        "--include-exclude-config",
        "include_exclude_config",
        default=None,
        metavar="JSON_OR_FILE",
        help='{"include": [...], "exclude": [...]} as JSON text or a file holding it.',
    )(func)
    func = click.option(
        "-e", "--exclude", multiple=True, metavar="GLOB", help="Glob of files to exclude."
    )(func)
    func = click.option(
        "-i", "--include", multiple=True, metavar="GLOB", help="Glob of files to include."
    )(func)
    return func


def hash_cache_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--hash-cache-dir`` and ``--no-hash-cache``."""
    func = click.option(
        "--no-hash-cache", is_flag=True, help="Hash every file; neither read nor fill the cache."
    )(func)
    func = click.option(
        "--hash-cache-dir",
        default=None,
        metavar="DIR",
        help="Where the hash cache lives (default: the vfs cache directory).",
    )(func)
    return func


def globs(
    include: tuple[str, ...], exclude: tuple[str, ...], config: str | None
) -> tuple[list[str] | None, list[str] | None]:
    """Include and exclude globs from the flags, as deadline's ``_process_glob_inputs``.

    Raises :class:`VfsError` when the config is neither a JSON file nor JSON text.
    """
    if include or exclude or not config:
        return list(include) or None, list(exclude) or None
    text = config
    if os.path.isfile(config):
        with open(config, encoding="utf-8") as f:
            text = f.read()
    try:
        doc = json.loads(text)
        inc, exc = doc.get("include"), doc.get("exclude")
    except (ValueError, AttributeError):
        raise VfsError(
            f"--include-exclude-config {config!r} is neither a JSON file nor JSON text",
            hint='write {"include": ["**/*.exr"], "exclude": ["tmp/**"]}',
        ) from None
    return _config_globs(inc, "include", config), _config_globs(exc, "exclude", config)


def _config_globs(value: object, key: str, config: str) -> list[str] | None:
    """The ``include`` or ``exclude`` globs of a config as deadline reads them: missing or
    null is the default, a list is used as it is (an empty include list selects nothing),
    and a string, as in deadline, is iterated as one-character globs.

    Raises :class:`VfsError` for anything else (deadline crashes with a ``TypeError``).
    """
    if value is None:
        return None
    if isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    ):
        return list(value)
    raise VfsError(
        f"--include-exclude-config {config!r}: {key!r} must be a list of glob strings",
        hint='write {"include": ["**/*.exr"], "exclude": ["tmp/**"]}',
    )


@contextlib.contextmanager
def open_hash_cache(directory: str | None, disabled: bool) -> Iterator[HashCache | None]:
    """The hash cache the flags ask for (``None`` with ``--no-hash-cache``)."""
    if disabled:
        yield None
        return
    cache = HashCache(directory or default_cache_dir())
    try:
        yield cache
    finally:
        cache.close()


def read_manifest(location: str, s3: Any = None) -> Manifest | ManifestV2:
    """Read and decode a manifest of either format from a path or ``s3://`` URI."""
    return decode_any_manifest(read_location(location, s3), source=location)


def as_v1(manifest: Manifest | ManifestV2, source: str) -> Manifest:
    """The manifest in format 2023-03-03, warning about what that drops."""
    if isinstance(manifest, Manifest):
        return manifest
    converted, dropped = to_v1(manifest)
    if dropped:
        click.echo(
            f"warning: {source}: format 2023-03-03 cannot hold {len(dropped)} entries "
            f"(e.g. {dropped[0].path}: {dropped[0].reason}); they are left out",
            err=True,
        )
    return converted


# -- snapshot -------------------------------------------------------------------------------


@manifest.command()
@click.option("--root", required=True, help="The directory to snapshot.")
@click.option(
    "-d", "--destination", default=None, help="Where to write the manifest (default: the root)."
)
@click.option("-n", "--name", default=None, help="Name prefix of the manifest file.")
@glob_options
@click.option(
    "--diff",
    "diff_base",
    default=None,
    metavar="MANIFEST",
    help="Only what changed since this manifest (v2: with delete markers).",
)
@click.option("--force-rehash", is_flag=True, help="With --diff: compare hashes, not mtimes.")
@click.option(
    "--manifest-version",
    type=click.Choice([MANIFEST_VERSION_V1, MANIFEST_VERSION_V2]),
    default=MANIFEST_VERSION_V1,
    show_default=True,
    help="2023-03-03 is what deadline reads; 2025-12-04-beta adds links, empty dirs, chunks.",
)
@hash_cache_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def snapshot(
    root: str,
    destination: str | None,
    name: str | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    include_exclude_config: str | None,
    diff_base: str | None,
    force_rehash: bool,
    manifest_version: str,
    hash_cache_dir: str | None,
    no_hash_cache: bool,
    as_json: bool,
) -> None:
    """Write the manifest of the files under ROOT.

    The file is named NAME-HASH-TIMESTAMP.manifest exactly as `deadline manifest snapshot`
    names it, and holds the same bytes for the same tree (format 2023-03-03).
    """
    inc, exc = globs(include, exclude, include_exclude_config)
    base = read_manifest(diff_base) if diff_base else None
    result: Manifest | ManifestV2 | None
    with (
        open_hash_cache(hash_cache_dir, no_hash_cache) as cache,
        byte_progress("hashing", None, not as_json) as on_bytes,
    ):
        if manifest_version == MANIFEST_VERSION_V2:
            full = snapshot_directory_v2(root, inc, exc, hash_cache=cache, on_bytes=on_bytes)
            result = full
            if base is not None and full is not None:
                result = create_diff_manifest(base, full)
                if not result.files and not result.dirs:
                    result = None
        elif base is None:
            result = snapshot_directory(root, inc, exc, hash_cache=cache, on_bytes=on_bytes)
        else:
            result = snapshot_changes(
                as_v1(base, str(diff_base)), root, inc, exc,
                force_rehash=force_rehash, hash_cache=cache, on_bytes=on_bytes,
            )  # fmt: skip
    if result is None:
        if as_json:
            emit_json({"root": root, "manifest": None})
        else:
            click.echo("No manifest generated (no files selected, or nothing changed)")
        return
    path = write_manifest_file(root, result, destination or root, name)
    if as_json:
        emit_json({"root": root, "manifest": path})
    else:
        click.echo(f"Manifest generated at {path}")


# -- diff -----------------------------------------------------------------------------------


@manifest.command()
@click.option("--manifest", "manifest_file", required=True, help="The manifest to compare with.")
@click.option("--root", required=True, help="The directory to compare.")
@glob_options
@click.option("--force-rehash", is_flag=True, help="Compare hashes instead of size and mtime.")
@hash_cache_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def diff(
    manifest_file: str,
    root: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    include_exclude_config: str | None,
    force_rehash: bool,
    hash_cache_dir: str | None,
    no_hash_cache: bool,
    as_json: bool,
) -> None:
    """List the files under ROOT that are new, modified or deleted since MANIFEST.

    Fast by default, like deadline: modified means another size, or an mtime more than
    1 µs away; --force-rehash compares content hashes instead.
    """
    inc, exc = globs(include, exclude, include_exclude_config)
    base = as_v1(read_manifest(manifest_file), manifest_file)
    with open_hash_cache(hash_cache_dir, no_hash_cache) as cache:
        result = diff_directory(base, root, inc, exc, force_rehash=force_rehash, hash_cache=cache)
    if as_json:
        emit_json(result.to_dict())
        return
    for mark, paths in (("+", result.new), ("~", result.modified), ("-", result.deleted)):
        for p in paths:
            click.echo(f"{mark} {p}")
    click.echo(
        f"{len(result.new)} new, {len(result.modified)} modified, "
        f"{len(result.deleted)} deleted under {root}"
    )


# -- merge ----------------------------------------------------------------------------------


@manifest.command()
@click.option("--root", required=True, help="The root the merged manifest belongs to (names it).")
@click.option(
    "-m",
    "--manifest",
    "manifests",
    multiple=True,
    required=True,
    help="Manifest to merge, oldest first (repeatable; later ones win per path).",
)
@click.option("-d", "--destination", required=True, help="Where to write the merged manifest.")
@click.option("-n", "--name", default=None, help="Name prefix of the merged manifest file.")
@click.option(
    "--case-insensitive",
    is_flag=True,
    help="Paths that differ only in case are the same file (Windows roots).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def merge(
    root: str,
    manifests: tuple[str, ...],
    destination: str,
    name: str | None,
    case_insensitive: bool,
    as_json: bool,
) -> None:
    """Merge manifests into one: the last one given wins for a path (deadline's merge).

    Across manifests a later file replaces an earlier directory with everything in it, and a
    later directory replaces an earlier file, as in a mount of the same manifests; a manifest
    in which a path is both a file and a directory is refused.
    """
    decoded = [(float(i), read_manifest(m)) for i, m in enumerate(manifests)]
    merged = merge_manifests_chronologically(
        decoded, case_insensitive=case_insensitive, sources=manifests
    )
    if merged is None or (isinstance(merged, Manifest) and not merged.paths):
        if as_json:
            emit_json({"root": root, "manifest": None})
        else:
            click.echo("No manifest generated (nothing to merge)")
        return
    path = write_manifest_file(root, merged, destination, name)
    if as_json:
        emit_json({"root": root, "manifest": path})
    else:
        click.echo(f"Manifest generated at {path}")


# -- show -----------------------------------------------------------------------------------


@manifest.command()
@click.argument("location")
@click.option("--json", "as_json", is_flag=True, help="Print the summary and entries as JSON.")
@s3_options
def show(
    location: str, as_json: bool, endpoint_url: str | None, expected_bucket_owner: str | None
) -> None:
    """Describe the manifest at LOCATION (a file or s3://BUCKET/KEY) and list its entries."""
    m = read_manifest(location, make_s3_options(endpoint_url, expected_bucket_owner))
    data = encode_any_manifest(m)
    entries: list[dict[str, Any]]
    summary: dict[str, Any]
    if isinstance(m, Manifest):
        entries = [
            {"path": p.path, "size": p.size, "mtime": p.mtime, "hash": p.hash} for p in m.paths
        ]
        summary = {"manifestVersion": m.manifest_version, "files": len(m.paths), "dirs": 0,
                   "symlinks": 0, "totalSize": m.effective_total_size()}  # fmt: skip
    else:
        entries = []
        for f in m.files:
            e: dict[str, Any] = {"path": f.path}
            for key, value in (("size", f.size), ("mtime", f.mtime), ("hash", f.hash),
                               ("chunkhashes", list(f.chunkhashes or []) or None),
                               ("symlink", f.symlink_target)):  # fmt: skip
                if value is not None:
                    e[key] = value
            if f.runnable:
                e["runnable"] = True
            if f.deleted:
                e["delete"] = True
            entries.append(e)
        summary = {"manifestVersion": m.manifest_version,
                   "files": sum(1 for f in m.files if not f.is_symlink and not f.deleted),
                   "dirs": len(m.dirs), "symlinks": sum(1 for f in m.files if f.is_symlink),
                   "totalSize": m.computed_total_size(),
                   "parentManifestHash": m.parent_manifest_hash}  # fmt: skip
    summary["manifestHash"] = hash_bytes(data)
    if as_json:
        emit_json({"manifest": location, **summary, "entries": entries})
        return
    for key, value in summary.items():
        if value is not None:
            click.echo(f"{key:<19} {value}")
    for e in entries:
        what = e.get("hash") or ("symlink -> " + e["symlink"] if "symlink" in e else "")
        if "chunkhashes" in e:
            what = f"{len(e['chunkhashes'])} chunks"
        if e.get("delete"):
            what = "deleted"
        click.echo(f"{e.get('size', ''):>14} {what:<34} {e['path']}")


# -- upload / download ----------------------------------------------------------------------


@manifest.command()
@click.argument("manifest_file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--s3-cas-uri",
    "--store",
    "s3_cas_uri",
    required=True,
    metavar="URI",
    help="Store root: s3://BUCKET/PREFIX or file:///DIR.",
)
@click.option(
    "--s3-manifest-prefix",
    default="",
    metavar="PREFIX",
    help="Folder under Manifests/ to upload to.",
)
@click.option(
    "--asset-root",
    default=None,
    metavar="PATH",
    help="Record this root in the object's metadata (asset-root), as outputs do.",
)
@click.option(
    "--file-system-location-name",
    default=None,
    metavar="NAME",
    help="Record this storage-profile location name in the metadata.",
)
@s3_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def upload(
    manifest_file: str,
    s3_cas_uri: str,
    s3_manifest_prefix: str,
    asset_root: str | None,
    file_system_location_name: str | None,
    endpoint_url: str | None,
    expected_bucket_owner: str | None,
    as_json: bool,
) -> None:
    """Upload MANIFEST_FILE to PREFIX/Manifests/[S3_MANIFEST_PREFIX/]NAME in the store.

    The bytes are uploaded unchanged (after checking that they decode).
    """
    with open(manifest_file, "rb") as f:
        data = f.read()
    decode_any_manifest(data, source=manifest_file)
    store = open_store(s3_cas_uri, make_s3_options(endpoint_url, expected_bucket_owner))
    key = join_key(MANIFEST_FOLDER, s3_manifest_prefix.strip("/"), os.path.basename(manifest_file))
    metadata = (
        manifest_metadata(asset_root, file_system_location_name)
        if asset_root
        else ({"file-system-location-name": file_system_location_name}
              if file_system_location_name else None)
    )  # fmt: skip
    digest = upload_manifest(store, key, data, metadata)
    if as_json:
        emit_json({"manifest": manifest_file, "uri": store.describe(key), "hash": digest})
    else:
        click.echo(f"Uploaded {manifest_file} to {store.describe(key)} (hash {digest})")


@manifest.command()
@click.argument("download_dir")
@click.option(
    "--s3-cas-uri",
    "--store",
    "s3_cas_uri",
    required=True,
    metavar="URI",
    help="Store root: s3://BUCKET/PREFIX or file:///DIR.",
)
@click.option(
    "--key",
    "keys",
    multiple=True,
    metavar="KEY",
    help="Manifest key under the store root (repeatable), e.g. Manifests/farm-…/…_input.",
)
@click.option("--farm-id", default=None, help="With --queue-id and --job-id: the job's outputs.")
@click.option("--queue-id", default=None)
@click.option("--job-id", default=None)
@click.option("--step-id", default=None, help="Only this step's outputs.")
@click.option("--task-id", default=None, help="Only this task's outputs.")
@s3_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def download(
    download_dir: str,
    s3_cas_uri: str,
    keys: tuple[str, ...],
    farm_id: str | None,
    queue_id: str | None,
    job_id: str | None,
    step_id: str | None,
    task_id: str | None,
    endpoint_url: str | None,
    expected_bucket_owner: str | None,
    as_json: bool,
) -> None:
    """Download manifests into DOWNLOAD_DIR, merged per asset root.

    Give manifest keys, or a job (--farm-id, --queue-id, --job-id, and optionally
    --step-id, --task-id) whose output manifests are found by listing the store: the latest
    session action per task counts, and manifests of one root are merged oldest first by
    their modification time, as deadline merges outputs.
    """
    store = open_store(s3_cas_uri, make_s3_options(endpoint_url, expected_bucket_owner))
    wanted = list(keys)
    if farm_id or queue_id or job_id:
        if not (farm_id and queue_id and job_id):
            raise VfsError("give --farm-id, --queue-id and --job-id together")
        wanted += discover_output_manifest_keys(store, farm_id, queue_id, job_id, step_id, task_id)
    if not wanted:
        raise VfsError("no manifests to download", hint="give --key, or a job with outputs")
    by_root: dict[str, list[tuple[float, Manifest | ManifestV2, str]]] = {}
    for key in wanted:
        got = download_manifest(store, key)
        root = got.asset_root or ""
        by_root.setdefault(root, []).append((got.last_modified, got.manifest, key))
    results = []
    for root, items in by_root.items():
        merged = merge_manifests_chronologically(
            [(t, m) for t, m, _ in items], sources=[store.describe(k) for _, _, k in items]
        )
        if merged is None:
            continue
        name = root.replace("/", "_") if root else "manifest"
        path = write_manifest_file(root or download_dir, merged, download_dir, name or None)
        results.append({"root": root or None, "manifest": path, "keys": [k for _, _, k in items]})
        if not as_json:
            click.echo(f"{path} (root {root or '?'}, from {len(items)} manifest(s))")
    if as_json:
        emit_json(results)
