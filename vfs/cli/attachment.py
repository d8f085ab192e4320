"""``vfs attachment …``: moving file contents to and from the store."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import click

from vfs.cli.common import (
    VfsGroup,
    byte_progress,
    ctrl_c_cancels,
    emit_json,
    make_s3_options,
    s3_options,
)
from vfs.defaults import default_cache_dir
from vfs.errors import AccessDeniedError, BucketNotFoundError, StoreError, VfsError
from vfs.hashing import hash_string
from vfs.manifest import decode_any_manifest, encode_any_manifest
from vfs.pathmap import PathMappingRule, parse_path_mapping_rules
from vfs.storage import manifest_metadata, open_store, read_location, upload_manifest
from vfs.storage.check_cache import S3CheckCache
from vfs.storage.layout import MANIFEST_FOLDER, join_key
from vfs.transfer import (
    ConflictResolution,
    DownloadError,
    DownloadOrchestrator,
    TransferProgress,
    TransferStatistics,
    UploadOrchestrator,
)
from vfs.transfer.sync_output import OutputSync, sleep_until
from vfs.transfer.upload import plan_objects

F = TypeVar("F", bound=Callable[..., Any])


def _conflict_option(default: ConflictResolution, when: str) -> Callable[[F], F]:
    """``--conflict-resolution`` with ``default``; ``when``: the help's opening words."""
    return click.option(
        "--conflict-resolution",
        type=click.Choice([c.value for c in ConflictResolution], case_sensitive=False),
        default=default.value,
        show_default=True,
        help=f"{when}: skip it, overwrite it, or write 'name (1).ext'.",
    )


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


class UploadSource(NamedTuple):
    """Where one manifest's files are read (``local_root``) and the root they are recorded
    under (``source_root``: the ``asset-root`` metadata of an uploaded manifest)."""

    manifest: str
    local_root: str
    source_root: str


def upload_sources(
    manifests: list[str], roots: list[str], rules: list[PathMappingRule]
) -> list[UploadSource]:
    """Pair each manifest with the directory its files are read from.

    As ``deadline attachment upload`` (``api/attachment.py::_attachment_upload``): exactly
    one of ``roots`` and ``rules`` must be given. With ``roots``, :func:`pair_roots` (the
    root is also the source root). With ``rules``, the first rule whose hashed source path
    (xxh128 of ``source_path``) appears in the manifest's file name: files are read under
    its ``destination_path`` and recorded under its ``source_path``. Raises
    :class:`VfsError` for both or neither, or a manifest no rule matches.
    """
    if bool(roots) == bool(rules):
        raise VfsError(
            "give either --root-dirs or --path-mapping-rules" + (", not both" if roots else ""),
            hint="-r DIR for each manifest, or a rules file whose source paths name them",
        )
    if roots:
        return [UploadSource(m, r, r) for m, r in pair_roots(manifests, roots)]
    out = []
    for m in manifests:
        name = os.path.basename(m.rstrip("/"))
        rule = next((r for r in rules if r.hashed_source_path() in name), None)
        if rule is None:
            raise VfsError(
                f"no path mapping rule's source path belongs to manifest {m}",
                hint="the file name must hold xxh128 of a rule's source_path "
                "(as `vfs manifest snapshot` and deadline name it)",
            )
        out.append(UploadSource(m, rule.destination_path, rule.source_path))
    return out


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
    help="Root directory the manifest's paths are relative to (repeatable).",
)
@click.option(
    "--path-mapping-rules",
    default=None,
    metavar="FILE",
    help="JSON rules file instead of --root-dirs: a manifest whose name holds a rule's hashed "
    "source path is read from that rule's destination (as deadline).",
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
    "--upload-manifest-path",
    default=None,
    metavar="PREFIX",
    help="Also upload each manifest, once its files are stored, to "
    "Manifests/PREFIX/<manifest file name> with its root as asset-root metadata.",
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
    path_mapping_rules: str | None,
    s3_root_uri: str,
    upload_manifest_path: str | None,
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

    The files of each manifest are read under its -r root, or, with --path-mapping-rules,
    under the destination of the rule whose hashed source path its file name holds (as
    deadline). With --upload-manifest-path the manifest itself (canonical encoding) goes to
    Manifests/PREFIX/<file name> with asset-root metadata (the root, or the rule's source
    path), after its files are stored; unlike deadline, not before, and not when the
    upload stopped.
    """
    s3 = make_s3_options(endpoint_url, expected_bucket_owner)
    sources = upload_sources(list(manifests), list(roots), _read_rules(path_mapping_rules))
    store = open_store(s3_root_uri, s3)
    check_cache = S3CheckCache(s3_check_cache_dir or default_cache_dir())
    orch = UploadOrchestrator(
        store, workers=workers, check_cache=None if force_s3_check else check_cache
    )
    results = []
    try:
        with ctrl_c_cancels() as interrupt:
            for src in sources:
                m = decode_any_manifest(read_location(src.manifest, s3), source=src.manifest)
                total = sum(o.size for o in plan_objects(m, src.local_root))
                with byte_progress("uploading", total, not as_json) as advance:
                    stats = orch.upload_manifest(
                        m, src.local_root, progress=interrupt.guard(_UploadBarFeed(advance, total))
                    )
                key = digest = None
                if upload_manifest_path is not None and not stats.cancelled:
                    key = join_key(
                        MANIFEST_FOLDER,
                        upload_manifest_path.strip("/"),
                        os.path.basename(src.manifest.rstrip("/")),
                    )
                    digest = upload_manifest(
                        store, key, encode_any_manifest(m), manifest_metadata(src.source_root)
                    )
                results.append(
                    {"manifest": src.manifest, "root": src.local_root, "dest": store.uri,
                     **stats.as_dict(), "source_root": src.source_root,
                     "manifest_key": key, "manifest_hash": digest}
                )  # fmt: skip
                if not as_json:
                    click.echo(_upload_line(src.manifest, store.uri, stats))
                    if key is not None:
                        click.echo(f"{src.manifest}: uploaded to {store.describe(key)} "
                                   f"(hash {digest}, asset-root {src.source_root})")  # fmt: skip
                if interrupt.hit:
                    break
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
@_conflict_option(ConflictResolution.CREATE_COPY, "When a file exists")
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
    rules = _read_rules(path_mapping_rules)
    pairs = download_destinations(list(manifests), list(roots), dest, rules)
    store = open_store(s3_root_uri, s3)
    orch = DownloadOrchestrator(store, workers=workers, verify_hash=verify_hash)
    resolution = ConflictResolution(conflict_resolution.lower())
    results = []
    with ctrl_c_cancels() as interrupt:
        for manifest_file, target in pairs:
            m = decode_any_manifest(read_location(manifest_file, s3), source=manifest_file)
            with byte_progress(
                f"{os.path.basename(manifest_file)}", m.effective_total_size(), not as_json
            ) as advance:
                stats = orch.download_manifest(
                    m,
                    target,
                    conflict_resolution=resolution,
                    progress=interrupt.guard(_BarFeed(advance)),
                )
            results.append({"manifest": manifest_file, "dest": target, **stats.as_dict()})
            if not as_json:
                click.echo(_summary_line(manifest_file, target, stats))
            if interrupt.hit:
                break
    if as_json:
        emit_json(results)


def _line(text: str) -> None:
    """One line on stdout, flushed: the worker agent reads step output as it comes."""
    click.echo(text)
    sys.stdout.flush()


def _worker_step_options(func: F) -> F:
    """The worker agent's script arguments, shared by both sync steps: ``-s3/--s3-uri``
    (also ``--store``) and ``-wp/--worker-properties``."""
    func = click.option(
        "-wp",
        "--worker-properties",
        required=True,
        metavar="FILE",
        help="JSON list of worker manifest properties (the worker agent's file).",
    )(func)
    return click.option(
        "-s3",
        "--s3-uri",
        "--store",
        "s3_uri",
        required=True,
        metavar="URI",
        help="Store root: s3://BUCKET/PREFIX (the queue's job attachments root) or file:///DIR.",
    )(func)


@attachment.command("worker-download")
@_worker_step_options
@_conflict_option(ConflictResolution.CREATE_COPY, "When a file exists")
@click.option("--workers", default=16, show_default=True, help="Parallel file downloads.")
@s3_options
def worker_download(
    s3_uri: str,
    worker_properties: str,
    conflict_resolution: str,
    workers: int,
    endpoint_url: str | None,
    expected_bucket_owner: str | None,
) -> None:
    """Sync a session's inputs, as the worker agent's attachment_download.py.

    Downloads each root's localInputManifestPath under its localRootPath, printing
    'openjd_progress: PERCENT' and 'openjd_status: MESSAGE' lines; a transfer slower than
    10 KB/s for a minute fails with 'openjd_fail: …'. Same arguments as the script.
    """
    from vfs.transfer.worker import load_worker_manifest_properties, sync_inputs

    start = time.monotonic()
    props = load_worker_manifest_properties(worker_properties)
    store = open_store(s3_uri, make_s3_options(endpoint_url, expected_bucket_owner))
    result = sync_inputs(
        props, store, out=_line, workers=workers,
        conflict_resolution=ConflictResolution(conflict_resolution.lower()),
    )  # fmt: skip
    for root, stats in result.by_root.items():
        _line(
            f"{root}: {stats.files_transferred} files downloaded "
            f"({stats.bytes_transferred} bytes), {stats.files_skipped} skipped"
            + (" - cancelled" if stats.cancelled else "")
        )
    if result.cancelled:
        raise SystemExit(1)
    _line(f"Finished downloading after {round(time.monotonic() - start, 2)} seconds")


@attachment.command("worker-upload")
@_worker_step_options
@click.option("--workers", default=8, show_default=True, help="Parallel uploads.")
@click.option(
    "--hash-cache-dir",
    default=None,
    metavar="DIR",
    help="Where the hash cache lives (default: the vfs cache directory).",
)
@s3_options
def worker_upload(
    s3_uri: str,
    worker_properties: str,
    workers: int,
    hash_cache_dir: str | None,
    endpoint_url: str | None,
    expected_bucket_owner: str | None,
) -> None:
    """Sync a session's outputs, as the worker agent's attachment_upload.py.

    Per root: merge localManifestPaths (the base), snapshot the files under the output
    directories that are new or changed against it (written to ./manifest_snapshot/ and
    printed as 'ja_snapshot: …'), upload them and the output manifest to the official key
    (from DEADLINE_FARM_ID, DEADLINE_QUEUE_ID, DEADLINE_JOB_ID, DEADLINE_STEP_ID,
    DEADLINE_TASK_ID, DEADLINE_SESSIONACTION_ID and DEADLINE_SESSIONACTION_START_TIME), and
    print 'ja_upload: […]'. Same arguments and environment as the script.
    """
    from vfs.hash_cache import HashCache
    from vfs.transfer.worker import (
        load_worker_manifest_properties,
        output_prefix_from_env,
        sync_outputs,
    )

    start = time.monotonic()
    props = load_worker_manifest_properties(worker_properties)
    prefix = output_prefix_from_env()
    store = open_store(s3_uri, make_s3_options(endpoint_url, expected_bucket_owner))
    cache = HashCache(hash_cache_dir or default_cache_dir())
    try:
        sync_outputs(props, store, prefix, hash_cache=cache, workers=workers, out=_line)
    finally:
        cache.close()
    _line(f"Finished after {round(time.monotonic() - start, 2)} seconds")


@attachment.command("prepare-job")
@click.option("-i", "--input", "inputs", multiple=True, metavar="FILE",
              help="Input file of the job (repeatable).")  # fmt: skip
@click.option("--input-dir", "input_dirs", multiple=True, metavar="DIR",
              help="Input directory: every file under it (repeatable).")  # fmt: skip
@click.option("-o", "--output-dir", "outputs", multiple=True, metavar="DIR",
              help="Output directory of the job (repeatable).")  # fmt: skip
@click.option("--reference", "references", multiple=True, metavar="PATH",
              help="Referenced path: places the root, uploads nothing (repeatable).")  # fmt: skip
@click.option("--storage-profile", default=None, metavar="FILE",
              help="The queue's storage profile as JSON (GetStorageProfileForQueue's answer): "
              "paths under SHARED locations are skipped, LOCAL locations make roots.")  # fmt: skip
@click.option("--store", "--s3-root-uri", "store_uri", required=True, metavar="URI",
              help="The queue's attachments root: s3://BUCKET/PREFIX or file:///DIR.")  # fmt: skip
@click.option("--farm-id", required=True, envvar="DEADLINE_FARM_ID", help="Farm id.")
@click.option("--queue-id", required=True, envvar="DEADLINE_QUEUE_ID", help="Queue id.")
@click.option("--file-system", type=click.Choice(["COPIED", "VIRTUAL"]), default="COPIED",
              show_default=True, help="attachments.fileSystem of the job.")  # fmt: skip
@click.option("--require-paths-exist", is_flag=True,
              help="Fail on a missing input instead of making it a referenced path.")  # fmt: skip
@click.option("--hash-cache-dir", default=None, metavar="DIR",
              help="Where the hash cache lives (default: the vfs cache directory).")  # fmt: skip
@click.option("--force-s3-check", is_flag=True,
              help="HEAD every object instead of trusting the S3 check cache.")  # fmt: skip
@click.option("--workers", default=8, show_default=True, help="Parallel uploads.")
@s3_options
def prepare_job(
    inputs: tuple[str, ...],
    input_dirs: tuple[str, ...],
    outputs: tuple[str, ...],
    references: tuple[str, ...],
    storage_profile: str | None,
    store_uri: str,
    farm_id: str,
    queue_id: str,
    file_system: str,
    require_paths_exist: bool,
    hash_cache_dir: str | None,
    force_s3_check: bool,
    workers: int,
    endpoint_url: str | None,
    expected_bucket_owner: str | None,
) -> None:
    """Hash and upload a job's inputs and print its `attachments` JSON for CreateJob.

    As deadline's job submission: the paths are grouped by asset root (the storage
    profile's SHARED locations skipped, its LOCAL locations grouped with their
    fileSystemLocationName), each root's input files are hashed into a manifest, the data
    and the manifests are uploaded (Manifests/FARM/QUEUE/Inputs/GUID/HASH_input), and
    {"manifests": [...], "fileSystem": ...} is printed on stdout.
    """
    from vfs.hash_cache import HashCache
    from vfs.pathmap import StorageProfile
    from vfs.storage import FileSystem
    from vfs.transfer.submit import (
        expand_input_directories,
        group_asset_paths,
        prepare_job_attachments,
    )

    profile = None
    if storage_profile:
        try:
            with open(storage_profile, encoding="utf-8") as f:
                profile = StorageProfile.from_dict(json.load(f))
        except (OSError, ValueError) as e:
            raise VfsError(f"cannot read storage profile {storage_profile}: {e}") from None
    files, empty_dirs = expand_input_directories(input_dirs)
    groups = group_asset_paths(
        [*inputs, *files], outputs, [*references, *empty_dirs], profile,
        require_paths_exist=require_paths_exist,
    )  # fmt: skip
    store = open_store(store_uri, make_s3_options(endpoint_url, expected_bucket_owner))
    hash_cache = HashCache(hash_cache_dir or default_cache_dir())
    check_cache = None if force_s3_check else S3CheckCache(default_cache_dir())
    try:
        total = sum(os.path.getsize(p) for g in groups for p in g.inputs)
        with byte_progress("preparing", 2 * total, True) as advance:
            prepared = prepare_job_attachments(
                groups, store, farm_id, queue_id, file_system=FileSystem(file_system),
                hash_cache=hash_cache, check_cache=check_cache, workers=workers,
                on_bytes=advance,
            )  # fmt: skip
    finally:
        hash_cache.close()
        if check_cache is not None:
            check_cache.close()
    for props, summary in zip(
        [p for p in prepared.attachments.manifests if p.input_manifest_path],
        prepared.uploads,
        strict=True,
    ):
        click.echo(
            f"{props.root_path}: {summary.uploaded} objects uploaded ({summary.uploaded_bytes} "
            f"bytes), {summary.skipped} already in {store.uri}; manifest "
            f"{props.input_manifest_path}",
            err=True,
        )
    emit_json(prepared.attachments.to_dict())


@attachment.command("sync-output")
@click.option(
    "--s3-root-uri",
    "--store",
    "s3_root_uri",
    required=True,
    metavar="URI",
    help="Store root: s3://BUCKET/PREFIX or file:///DIR.",
)
@click.option("--farm-id", required=True, help="Farm of the queue.")
@click.option("--queue-id", required=True, help="Queue whose job outputs are synced.")
@click.option(
    "--job-id",
    "job_ids",
    multiple=True,
    help="Only this job's outputs (repeatable; default: every job of the queue).",
)
@click.option(
    "--dest",
    default=None,
    metavar="DIR",
    help="Directory under which outputs land at their job path "
    "(/mnt/proj/out/a.exr -> DIR/mnt/proj/out/a.exr) unless a path mapping rule maps them.",
)
@click.option(
    "--path-mapping-rules",
    default=None,
    metavar="FILE",
    help="JSON rules file mapping the jobs' roots to local directories (these win over --dest).",
)
@click.option(
    "--checkpoint",
    default=None,
    metavar="FILE",
    help="Where to record the manifests already downloaded (default: one file per store, "
    "queue and destination in the vfs cache directory).",
)
@click.option(
    "--watch",
    type=click.FloatRange(min=0.1),
    default=None,
    metavar="SECONDS",
    help="Poll again every SECONDS until Ctrl-C.",
)
@_conflict_option(ConflictResolution.OVERWRITE, "When a different file exists")
@click.option("--verify-hash", is_flag=True, help="Hash every file before it gets its name.")
@click.option("--workers", default=16, show_default=True, help="Parallel file downloads.")
@s3_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line per poll.")
def sync_output(
    s3_root_uri: str,
    farm_id: str,
    queue_id: str,
    job_ids: tuple[str, ...],
    dest: str | None,
    path_mapping_rules: str | None,
    checkpoint: str | None,
    watch: float | None,
    conflict_resolution: str,
    verify_hash: bool,
    workers: int,
    endpoint_url: str | None,
    expected_bucket_owner: str | None,
    as_json: bool,
) -> None:
    """Download the outputs of a queue's jobs that are new since the last run.

    Output manifests are found by listing the store under Manifests/FARM/QUEUE/[JOB/],
    merged per local path (later session actions win, as deadline's sync-output), and
    their files downloaded. The checkpoint records the manifests done, so each run (or
    --watch poll) fetches only new ones; a run that was killed resumes: files already
    complete are not fetched again and no partial file is ever left under a final name.
    """
    s3 = make_s3_options(endpoint_url, expected_bucket_owner)
    rules = _read_rules(path_mapping_rules)
    store = open_store(s3_root_uri, s3)
    sync = OutputSync(
        store, farm_id, queue_id, job_ids, dest=dest, rules=rules,
        checkpoint_path=checkpoint,
        conflict_resolution=ConflictResolution(conflict_resolution.lower()),
        orchestrator=DownloadOrchestrator(store, workers=workers, verify_hash=verify_hash),
    )  # fmt: skip
    if watch is None:
        _sync_once(sync, as_json, quiet=False)
        return
    try:
        while True:
            started = time.monotonic()
            try:
                _sync_once(sync, as_json, quiet=True)
            except (StoreError, DownloadError) as e:
                if isinstance(e, AccessDeniedError | BucketNotFoundError):
                    raise
                click.echo(f"sync-output: this poll failed, trying again: {e}", err=True)
            sleep_until(started + watch)
    except KeyboardInterrupt:
        # Ctrl-C ends --watch; a poll it interrupted left no partial file and recorded
        # nothing, so the next run takes it up again.
        click.echo("sync-output: stopped", err=True)


def _sync_once(sync: OutputSync, as_json: bool, *, quiet: bool) -> None:
    """One poll with a progress bar and its summary (``quiet``: no line when nothing was
    new)."""
    with sync.locked() as state, ctrl_c_cancels() as interrupt:
        plan = sync.plan(state)
        with byte_progress("sync-output", plan.bytes_to_download, not as_json) as advance:
            result = sync.run(plan, state, progress=interrupt.guard(_BarFeed(advance)))
    if as_json:
        emit_json(result.as_dict())
    elif result.plan.keys or not quiet:
        s = result.stats
        click.echo(
            f"{len(result.plan.keys)} new output manifests: {s.files_transferred} files "
            f"downloaded ({s.bytes_transferred} bytes), {len(result.plan.up_to_date)} up to "
            f"date, {s.files_skipped} skipped, {len(result.plan.unmapped)} unmapped"
        )


def _read_rules(path: str | None) -> list[PathMappingRule]:
    """The rules of a rules file (``[]`` without one). Raises :class:`VfsError` naming it."""
    if not path:
        return []
    try:
        with open(path, encoding="utf-8") as f:
            return parse_path_mapping_rules(json.load(f))
    except (OSError, ValueError) as e:
        raise VfsError(f"cannot read path mapping rules {path}: {e}") from None
