"""``vfs mount`` and ``vfs unmount``.

:mod:`vfs.cli.main` loads this module only when one of its commands runs (or ``--help`` of
one of them is asked for). It imports the FUSE stack (pyfuse3, trio), the fetcher and boto3
only in the daemon (``--foreground``): a background ``vfs mount`` spawns the daemon before
any of that is loaded, so it answers as soon as the daemon does.
"""

from __future__ import annotations

import os
import sys

import click

from vfs.cli.common import make_s3_options, s3_options, setup_logging, size_callback
from vfs.defaults import DEFAULT_CACHE_SIZE, default_cache_dir
from vfs.mount.launch import default_log_file, python_argv, start_mount
from vfs.mount.launch import unmount as unmount_path
from vfs.mount.prefetch import DEFAULT_PREFETCH, PrefetchPolicy

# The defaults of vfs.mount.fetcher.DEFAULT_POLICY and vfs.mount.verify.VERIFY_MODES, spelt
# out so that the background path imports neither (tests/test_cli_imports.py checks them).
DEFAULT_MAX_FETCHES = 16
DEFAULT_FETCH_TIMEOUT = 60.0
DEFAULT_VERIFY = "block"
VERIFY_MODES = ("block", "strict")


def _octal(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """``--dir-mode``/``--file-mode``: permission bits in octal (``0755``, ``0o755``)."""
    try:
        mode = int(value.removeprefix("0o"), 8)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an octal mode like 0755") from None
    if not 0 <= mode <= 0o777:
        raise click.BadParameter(f"{value!r}: permission bits only (0000-0777)")
    return mode


@click.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option(
    "--manifest",
    "manifests",
    multiple=True,
    required=True,
    metavar="FILE",
    help="Manifest file or s3://BUCKET/KEY (repeatable; later ones win per path).",
)
@click.option(
    "--store",
    "store_uri",
    required=True,
    metavar="URI",
    help="Where the CAS objects are: s3://BUCKET/PREFIX or file:///DIR.",
)
@click.option(
    "--cache-dir",
    default=None,
    metavar="DIR",
    help="Block cache shared by all mounts (default: $VFS_CACHE_DIR or ~/.cache/vfs).",
)
@click.option(
    "--cache-size",
    callback=size_callback,
    metavar="SIZE",
    default=DEFAULT_CACHE_SIZE,
    show_default=True,
    help="Bound of the block cache (e.g. 50G).",
)
@click.option(
    "--min-free-ratio",
    type=click.FloatRange(0, 0.9),
    default=0.05,
    show_default=True,
    help="Share of the cache's file system kept free.",
)
@click.option(
    "--max-memory",
    callback=size_callback,
    metavar="SIZE",
    default="256M",
    show_default=True,
    help="Memory for blocks in memory: downloads in flight, readahead and recently read "
    "blocks (e.g. 512M).",
)
@click.option(
    "--max-fetches",
    default=DEFAULT_MAX_FETCHES,
    show_default=True,
    help="Concurrent downloads.",
)
@click.option(
    "--fetch-timeout",
    type=click.FloatRange(1),
    default=DEFAULT_FETCH_TIMEOUT,
    show_default=True,
    help="Seconds before a read of uncached data fails with EIO.",
)
@click.option(
    "--verify",
    type=click.Choice(VERIFY_MODES),
    default=DEFAULT_VERIFY,
    show_default=True,
    help="block: serve blocks of a large object before its whole hash is checked (each "
    "block checked against its checksum); strict: no byte of an object before its hash "
    "is checked (README, Integrity).",
)
@click.option(
    "--prefetch",
    "prefetch",
    multiple=True,
    metavar="none|dirs|all|GLOB",
    help="Fetch files into the cache in the background, on spare download slots: none "
    "(default); dirs: the other files of a directory once one is read; all: every file once "
    "one is read; GLOB (repeatable, `manifest snapshot -i` semantics): those files from the "
    "start.",
)
@click.option(
    "-o",
    "fuse_options",
    multiple=True,
    metavar="OPTION",
    help="FUSE mount option, e.g. -o allow_other (repeatable, comma-separated).",
)
@click.option(
    "--writable",
    is_flag=True,
    help="Writes land in a durable local overlay (nothing is fetched to write); without "
    "it the mount is read-only (EROFS).",
)
@click.option(
    "--overlay-dir",
    default=None,
    metavar="DIR",
    help="The overlay of a --writable mount, kept across remounts (default: "
    "CACHE_DIR/overlays/<mount point>).",
)
@click.option(
    "--upload-on-close",
    is_flag=True,
    help="Write-behind (with --writable): files closed after writing are hashed and their "
    "CAS objects stored in the background, one at a time, so vfs commit has little left.",
)
@click.option("-f", "--foreground", is_flag=True, help="Serve in this process until unmounted.")
@click.option(
    "--allow-other", is_flag=True, help="Let other users read the mount (-o allow_other)."
)
@click.option("--allow-root", is_flag=True, help="Let root read the mount (-o allow_root).")
@click.option("--uid", type=int, default=None, help="Owner of the files (default: yours).")
@click.option("--gid", type=int, default=None, help="Group of the files (default: yours).")
@click.option(
    "--dir-mode", default="0755", show_default=True, callback=_octal, help="Directory permissions."
)
@click.option(
    "--file-mode", default="0644", show_default=True, callback=_octal,
    help="File permissions (runnable files add x where this has r).",
)  # fmt: skip
@click.option("--read-only", is_flag=True, help="Mount read-only (the default, unless --writable).")
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None,
    help="Log level (default: warning; info in the foreground or with -v).",
)  # fmt: skip
@click.option(
    "--allow-non-empty",
    is_flag=True,
    help="Mount over a directory that has files (hidden while mounted).",
)
@click.option(
    "--log-file",
    default=None,
    metavar="FILE",
    help="Log file (default: stderr in the foreground, "
    "CACHE_DIR/logs/mount-*.log in the background).",
)
@click.option("--ready-fd", type=int, default=None, hidden=True)
@s3_options
@click.pass_context
def mount(
    ctx: click.Context,
    mountpoint: str,
    manifests: tuple[str, ...],
    store_uri: str,
    cache_dir: str | None,
    cache_size: int,
    min_free_ratio: float,
    max_memory: int,
    max_fetches: int,
    fetch_timeout: float,
    verify: str,
    prefetch: tuple[str, ...],
    fuse_options: tuple[str, ...],
    writable: bool,
    overlay_dir: str | None,
    upload_on_close: bool,
    foreground: bool,
    allow_other: bool,
    allow_root: bool,
    uid: int | None,
    gid: int | None,
    dir_mode: int,
    file_mode: int,
    read_only: bool,
    log_level: str | None,
    allow_non_empty: bool,
    log_file: str | None,
    ready_fd: int | None,
    endpoint_url: str | None,
    expected_bucket_owner: str | None,
) -> None:
    """Mount the merged MANIFESTs at MOUNTPOINT, read-only unless --writable.

    Without --foreground, returns once the mount answers (exit status 1 and the reason
    when it cannot mount); the daemon keeps running until `vfs unmount MOUNTPOINT`.
    """
    prefetch = prefetch or DEFAULT_PREFETCH
    fuse_options += ("allow_other",) * allow_other + ("allow_root",) * allow_root
    prefetch_policy = PrefetchPolicy.parse(prefetch)  # refuse a bad value before forking
    cache = os.path.abspath(cache_dir or default_cache_dir())
    locations = [m if m.startswith("s3://") else os.path.abspath(m) for m in manifests]
    verbose = ctx.obj.get("verbose", 0) if ctx.obj else 0
    if log_level is not None:
        verbose = {"debug": 2, "info": 1, "warning": 0, "error": -1}[log_level]
    if read_only and writable:
        raise click.UsageError("--read-only and --writable exclude each other")
    if overlay_dir is not None:
        if not writable:
            raise click.UsageError("--overlay-dir needs --writable")
        overlay_dir = os.path.abspath(overlay_dir)
    if upload_on_close and not writable:
        raise click.UsageError("--upload-on-close needs --writable")
    if foreground:
        from vfs.mount.fetcher import DEFAULT_POLICY, FetchPolicy
        from vfs.mount.service import MountConfig, run_mount

        # What the daemon writes (cache entries, index, logs) is nobody else's business.
        os.umask(0o077)
        if log_level is not None:
            setup_logging(verbose, log_file)
        elif log_file:
            setup_logging(max(verbose, 1), log_file)
        elif verbose == 0:
            setup_logging(1 if ready_fd is None else 0)
        config = MountConfig(
            mountpoint=mountpoint,
            manifests=locations,
            store_uri=store_uri,
            cache_dir=cache,
            fuse_options=list(fuse_options),
            s3=make_s3_options(endpoint_url, expected_bucket_owner),
            cache_size=cache_size,
            min_free_ratio=min_free_ratio,
            policy=FetchPolicy(
                max_fetches=max_fetches,
                max_memory=max_memory,
                fetch_timeout=fetch_timeout,
                attempt_timeout=min(DEFAULT_POLICY.attempt_timeout, fetch_timeout),
                verify=verify,
            ),
            prefetch=prefetch_policy,
            allow_non_empty=allow_non_empty,
            uid=uid,
            gid=gid,
            dir_mode=dir_mode,
            file_mode=file_mode,
            writable=writable,
            overlay_dir=overlay_dir,
            upload_on_close=upload_on_close,
        )
        run_mount(config, ready_fd)
        return
    argv = [*python_argv(), *(["-" + "v" * verbose] if verbose > 0 else []), "mount",
            os.path.abspath(mountpoint), "--store", store_uri, "--cache-dir", cache,
            "--cache-size", str(cache_size), "--min-free-ratio", str(min_free_ratio),
            "--max-memory", str(max_memory), "--max-fetches", str(max_fetches),
            "--fetch-timeout", str(fetch_timeout), "--verify", verify,
            "--foreground"]  # fmt: skip
    for m in locations:
        argv += ["--manifest", m]
    for o in fuse_options:
        argv += ["-o", o]
    if allow_non_empty:
        argv.append("--allow-non-empty")
    argv += ["--dir-mode", oct(dir_mode), "--file-mode", oct(file_mode)]
    argv += ["--uid", str(uid)] if uid is not None else []
    argv += ["--gid", str(gid)] if gid is not None else []
    if log_level is not None:
        argv += ["--log-level", log_level]
    for p in prefetch:
        argv += ["--prefetch", p]
    if writable:
        argv += ["--writable"]
    if overlay_dir is not None:
        argv += ["--overlay-dir", overlay_dir]
    if upload_on_close:
        argv += ["--upload-on-close"]
    if endpoint_url:
        argv += ["--endpoint-url", endpoint_url]
    if expected_bucket_owner:
        argv += ["--expected-bucket-owner", expected_bucket_owner]
    log_path = log_file or default_log_file(cache, mountpoint)
    pid = start_mount(argv, log_path)
    click.echo(f"mounted {os.path.abspath(mountpoint)} (pid {pid}, log {log_path})")
    sys.stdout.flush()


@click.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
def unmount(mountpoint: str) -> None:
    """Unmount a vfs mount; returns once it is gone."""
    unmount_path(mountpoint)
