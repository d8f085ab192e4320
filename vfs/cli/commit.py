"""``vfs commit``: upload what a writable mount changed and write its output manifest."""

from __future__ import annotations

import errno
import os

import click

from vfs.cli.common import byte_bar, emit_json, make_s3_options, s3_options
from vfs.manifest import MANIFEST_VERSION_V1, MANIFEST_VERSION_V2

XATTR_OVERLAY = "user.vfs.overlay"
"""The writable mount root's extended attribute naming its overlay directory (kept equal
to :data:`vfs.mount.fs_rw.XATTR_OVERLAY`, which this command may not import)."""


def overlay_of_mount(mountpoint: str) -> str:
    """The overlay directory of the writable vfs mount at ``mountpoint`` (from its root's
    ``user.vfs.overlay`` attribute). Raises ``click.UsageError`` naming the path when it is
    no writable vfs mount."""
    try:
        return os.fsdecode(os.getxattr(mountpoint, XATTR_OVERLAY))
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise click.UsageError(
                f"{mountpoint} is not a writable vfs mount; for a stopped mount give "
                "--overlay-dir DIR"
            ) from None
        raise click.UsageError(f"{mountpoint}: {e.strerror}") from None


@click.command()
@click.argument("mountpoint", required=False, type=click.Path(file_okay=False))
@click.option("--overlay-dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Commit this overlay (of a stopped mount) instead of MOUNTPOINT's.")  # fmt: skip
@click.option("--output-dir", "output_dirs", metavar="REL", multiple=True,
              help="Only files under this directory (relative to the mount root) are "
              "outputs; repeatable. Default: the whole mount.")  # fmt: skip
@click.option("--store", "store_uri", metavar="URI",
              help="Store for the CAS objects and the manifest (s3://BUCKET/PREFIX or "
              "file:///DIR). Default: the mount's store.")  # fmt: skip
@click.option("--output", "output_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Also (or, without session ids, only) write the manifest to FILE.")  # fmt: skip
@click.option("--manifest-version", type=click.Choice([MANIFEST_VERSION_V1, MANIFEST_VERSION_V2]),
              default=MANIFEST_VERSION_V1, show_default=True,
              help=f"{MANIFEST_VERSION_V2} writes a diff manifest (with deletions and mode "
              "changes) whose parent is the base manifest.")  # fmt: skip
@click.option("--farm-id", help="Default: DEADLINE_FARM_ID.")
@click.option("--queue-id", help="Default: DEADLINE_QUEUE_ID.")
@click.option("--job-id", help="Default: DEADLINE_JOB_ID.")
@click.option("--step-id", help="Default: DEADLINE_STEP_ID.")
@click.option("--task-id", help="Default: DEADLINE_TASK_ID (none for a chunked step).")
@click.option("--session-action-id", help="Default: DEADLINE_SESSIONACTION_ID.")
@click.option("--start-time", metavar="SECONDS",
              help="Session action start, seconds since the epoch (the key's timestamp). "
              "Default: DEADLINE_SESSIONACTION_START_TIME, else the first try's time.")  # fmt: skip
@click.option("--asset-root", metavar="PATH",
              help="The job's rootPath for this root (manifest name and asset-root "
              "metadata). Default: the mount point.")  # fmt: skip
@click.option("--file-system-location-name", metavar="NAME",
              help="The root's storage-profile location name, if it has one.")  # fmt: skip
@click.option("--wait", is_flag=True, help="Wait for files still open for writing.")
@click.option("--include-dotfiles", is_flag=True,
              help="Also commit names starting with '.' (and what dot-directories hold); the "
              "worker agent's own output scan skips them, and so does vfs commit by "
              "default.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@s3_options
def commit(
    mountpoint: str | None,
    overlay_dir: str | None,
    output_dirs: tuple[str, ...],
    store_uri: str | None,
    output_file: str | None,
    manifest_version: str,
    farm_id: str | None,
    queue_id: str | None,
    job_id: str | None,
    step_id: str | None,
    task_id: str | None,
    session_action_id: str | None,
    start_time: str | None,
    asset_root: str | None,
    file_system_location_name: str | None,
    wait: bool,
    include_dotfiles: bool,
    as_json: bool,
    endpoint_url: str | None,
    expected_bucket_owner: str | None,
) -> None:
    """Upload what a writable mount created or changed and write its output manifest.

    Only files whose content differs from the base (or the last commit) are outputs:
    a file rewritten with the same bytes, or only touched, is not. Files still open for
    writing are named and skipped unless --wait. Running it again after an interruption
    finishes the commit; after a finished one it finds nothing new.
    """
    from vfs.commit import CommitOptions, commit_overlay, ids_from_env

    if (mountpoint is None) == (overlay_dir is None):
        raise click.UsageError("give MOUNTPOINT or --overlay-dir DIR (one of them)")
    directory = os.path.abspath(overlay_dir) if overlay_dir else overlay_of_mount(mountpoint or "")
    given = {"farm_id": farm_id, "queue_id": queue_id, "job_id": job_id, "step_id": step_id,
             "task_id": task_id, "session_action_id": session_action_id,
             "start_time": start_time}  # fmt: skip
    ids = ids_from_env(given)
    options = CommitOptions(
        output_dirs=output_dirs,
        manifest_version=manifest_version,
        ids=ids,
        output_file=os.path.abspath(output_file) if output_file else None,
        asset_root=asset_root or (os.path.abspath(mountpoint) if mountpoint else None),
        file_system_location_name=file_system_location_name,
        store_uri=store_uri,
        wait=wait,
        include_dotfiles=include_dotfiles,
    )
    s3 = make_s3_options(endpoint_url, expected_bucket_owner)
    with byte_bar("committing", None, enabled=not as_json, total_later=True) as bar:
        if bar is None:
            result = commit_overlay(directory, options, s3)
        else:  # the bytes to hash and upload are known once the overlay was read
            result = commit_overlay(directory, options, s3, bar.advance, bar.set_total)
    if as_json:
        emit_json(result.to_json())
        return
    if result.manifest_hash is None:
        click.echo("nothing to commit")
    else:
        where = " and ".join(x for x in (result.manifest_uri, result.output_file) if x)
        click.echo(
            f"committed {result.files} file(s), {result.bytes} bytes (uploaded "
            f"{result.uploaded} object(s), {result.uploaded_bytes} bytes; {result.skipped} "
            f"already stored); manifest {where}"
        )
    for path in result.open_for_writing:
        click.echo(f"skipped (open for writing): {path}", err=True)
