"""Running a mount: load and check the manifests, mount, serve, signal readiness, unmount.

``run_mount`` is the daemon (foreground) side. ``start_mount`` (:mod:`vfs.mount.launch`, which
imports no FUSE stack) is what ``vfs mount`` does by default: it starts the daemon as a
detached child process and returns only once the mount answers, or fails with the daemon's
own error message.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import pyfuse3
import trio

from vfs.errors import MountError, VfsError
from vfs.manifest import Manifest
from vfs.manifest.codec import ManifestColumns, decode_manifest_columns
from vfs.manifest.convert import decode_any_manifest
from vfs.manifest.v2 import ManifestV2
from vfs.mount.blockcache import BlockCache
from vfs.mount.fetcher import ContentFetcher, FetchPolicy
from vfs.mount.fs import ReadOnlyOperations
from vfs.mount.fs_rw import WritableOperations
from vfs.mount.launch import READY_PREFIX, WARNING_PREFIX
from vfs.mount.launch import READY_TIMEOUT as READY_TIMEOUT  # re-exported (moved to launch)
from vfs.mount.launch import default_log_file as default_log_file
from vfs.mount.launch import is_mounted as is_mounted
from vfs.mount.launch import python_argv as python_argv
from vfs.mount.launch import start_mount as start_mount
from vfs.mount.launch import unmount as unmount
from vfs.mount.overlay import Overlay, fetcher_reader
from vfs.mount.overlaydb import META_MANIFESTS, META_MOUNTPOINT, META_STORE
from vfs.mount.prefetch import PrefetchPlanner, PrefetchPolicy
from vfs.mount.preflight import check_fuse_options, check_mountpoint, check_store
from vfs.mount.stats import MountStats
from vfs.mount.tree import InodeTree
from vfs.mount.writebehind import WriteBehind
from vfs.storage import S3Options, open_store, read_location

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 10.0
"""Seconds an unmount waits for cache writes under way to finish."""

DEFAULT_CACHE_SIZE = 20 * 1024**3
"""Default bound of the block cache, in bytes."""

LOAD_TIMEOUT_US = 300_000_000
"""Time asked of systemd (``EXTEND_TIMEOUT_USEC``) for loading the manifests."""

READ_AHEAD_KB = 1024
"""Kernel readahead for the mount's bdi: 1 MiB requests instead of 128 KiB
(reference/test-environment.md: 0.8–0.95 GB/s → 1.8–3.2 GB/s on cache hits)."""

MAX_BACKGROUND = 64
"""FUSE ``max_background`` (kernel default 12), as mountpoint-s3 sets it."""


@dataclass(slots=True)
class MountConfig:
    """Everything a mount needs.

    ``manifests``: local paths or ``s3://bucket/key`` URIs, merged in order (last wins).
    ``store_uri``: where CAS objects are (``s3://BUCKET/PREFIX`` or ``file:///DIR``).
    ``fuse_options``: extra ``-o`` mount options (e.g. ``allow_other``).
    ``uid``/``gid`` (default: the daemon's) own the files; ``dir_mode``/``file_mode`` are
    their permission bits (runnable files add x where ``file_mode`` has r).
    ``cache_size``: bound of the shared block cache in bytes; ``min_free_ratio``: share of
    the cache's file system kept free; ``policy``: fetch limits and timeouts.
    ``writable``: writes land in the overlay in ``overlay_dir`` (default: one per mount
    point under ``cache_dir/overlays``, :func:`default_overlay_dir`).
    ``upload_on_close``: write-behind (:mod:`vfs.mount.writebehind`): files closed after
    writing are hashed and their CAS objects stored in the background.
    """

    mountpoint: str
    manifests: list[str]
    store_uri: str
    cache_dir: str
    fuse_options: list[str] = field(default_factory=list)
    s3: S3Options = field(default_factory=S3Options)
    cache_size: int = DEFAULT_CACHE_SIZE
    min_free_ratio: float = 0.05
    policy: FetchPolicy = field(default_factory=FetchPolicy)
    prefetch: PrefetchPolicy = field(default_factory=PrefetchPolicy)
    allow_non_empty: bool = False
    uid: int | None = None
    gid: int | None = None
    dir_mode: int = 0o755
    file_mode: int = 0o644
    writable: bool = False
    overlay_dir: str | None = None
    upload_on_close: bool = False


def load_manifests(
    locations: Sequence[str], s3: S3Options | None = None
) -> tuple[list[Manifest | ManifestV2 | ManifestColumns], list[str]]:
    """Read and decode each manifest (either format); return them with their names.

    Raises :class:`VfsError` (``StoreError``, ``ManifestError``) naming the manifest.
    """
    manifests: list[Manifest | ManifestV2 | ManifestColumns] = []
    for location in locations:
        data = read_location(location, s3)
        # A canonical v1 manifest (the common case) is held column by column, without an
        # object per entry; anything else is decoded (or explained) in full.
        manifests.append(
            decode_manifest_columns(data) or decode_any_manifest(data, source=location)
        )
        del data
    return manifests, list(locations)


def release_freed_memory() -> None:
    """Collect garbage and hand the heap's free pages back to the kernel (glibc
    ``malloc_trim``): decoding a large manifest leaves hundreds of MB freed but resident
    between the tree's few surviving blocks (1M entries: VmRSS 270 -> 150 MB)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def lock_mountpoint(path: str) -> int:
    """Take an exclusive ``flock`` on the mount point directory, held (the returned fd left
    open) for the life of the daemon, and check again that nothing is mounted there: two
    ``vfs mount`` started at once on one point never stack two mounts.

    Raises :class:`MountError` when another daemon holds it or a mount appeared meanwhile.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise MountError(
            f"another vfs mount is starting or running on {path}",
            hint=f"wait for it, or unmount it first: vfs unmount {path}",
        ) from None
    if is_mounted(path):
        os.close(fd)
        raise MountError(
            f"{path} is already a mount point", hint=f"unmount it first: vfs unmount {path}"
        )
    return fd


def default_overlay_dir(cache_dir: str, mountpoint: str) -> str:
    """The overlay of a writable mount without ``--overlay-dir``:
    ``{cache_dir}/overlays/{mount point with / as _}``."""
    name = os.path.abspath(mountpoint).strip("/").replace("/", "_") or "root"
    return os.path.join(cache_dir, "overlays", name)


def record_overlay_origin(
    overlay: Overlay, manifests: Sequence[str], store_uri: str, mountpoint: str
) -> None:
    """Write into the overlay's ``meta`` what ``vfs commit`` needs to diff it without the
    mount: ``manifests`` (JSON list of the base manifests' locations, merged in order),
    ``store`` (the store URI of the base objects) and ``mountpoint``."""
    with overlay.db.transaction():
        overlay.db.set_meta(META_MANIFESTS, json.dumps(list(manifests)))
        overlay.db.set_meta(META_STORE, store_uri)
        overlay.db.set_meta(META_MOUNTPOINT, mountpoint)


def fuse_options(extra: Sequence[str], writable: bool = False) -> set[str]:
    """Mount options: pyfuse3's defaults, named ``vfs``, read-only unless ``writable``,
    plus ``extra``.

    Raises :class:`MountError` for ``max_read``, which breaks pyfuse3 mounts
    (reference/test-environment.md, pitfall 4).
    """
    options = set(pyfuse3.default_options) | {"fsname=vfs", "subtype=vfs"}
    if not writable:
        options.add("ro")
    for item in extra:
        for opt in item.split(","):
            opt = opt.strip()
            if not opt:
                continue
            if opt.startswith("max_read"):
                raise MountError("the mount option max_read is not supported (it breaks mounts)")
            if opt == "rw" and not writable:
                raise MountError(
                    "this mount is read-only; the option rw is not supported",
                    hint="use --writable for a writable mount",
                )
            options.add(opt)
    return options


def _sd_notify(message: str) -> None:
    """Tell systemd (``Type=notify`` units) about our state; a no-op elsewhere."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(address)
        s.sendall(message.encode())


def run_mount(config: MountConfig, ready_fd: int | None = None) -> None:
    """Mount and serve until unmounted or signalled (SIGTERM, SIGINT, SIGHUP).

    When ``ready_fd`` is given, ``b"ready <pid>\\n"`` is written to it once the mount
    answers, or the error message if it could not be set up; the fd is then closed.
    Raises :class:`VfsError` for anything that prevents mounting.
    """
    try:
        mountpoint = check_mountpoint(config.mountpoint, config.allow_non_empty)
        point_lock = lock_mountpoint(mountpoint)
        started = time.monotonic()
        # A large manifest may take longer than systemd's start timeout to load.
        _sd_notify(f"STATUS=loading manifests\nEXTEND_TIMEOUT_USEC={LOAD_TIMEOUT_US}")
        # Decoding and building allocate millions of objects and no garbage cycles; the
        # cyclic GC's repeated scans of them cost about 20 % of a 1M-entry start-up.
        gc.disable()
        try:
            manifests, sources = load_manifests(config.manifests, config.s3)
            tree = InodeTree.from_manifests(manifests, sources)
            del manifests
        finally:
            gc.enable()
        release_freed_memory()
        for warning in tree.warnings:
            log.warning("%s", warning)
            if ready_fd is not None:
                with contextlib.suppress(OSError):
                    os.write(
                        ready_fd, WARNING_PREFIX + warning.encode(errors="backslashreplace") + b"\n"
                    )
        store = open_store(config.store_uri, mount_s3_options(config.s3, config.policy))
        options = fuse_options(config.fuse_options, config.writable)
        check_fuse_options(options)
        first = tree.first_file()
        problem = check_store(
            store,
            None if first is None else tree.file_parts(first)[0],
            None if first is None else tree.path_of(first),
        )
        if problem is not None:
            log.warning("%s", problem)
            if ready_fd is not None:
                with contextlib.suppress(OSError):
                    os.write(
                        ready_fd, WARNING_PREFIX + problem.encode(errors="backslashreplace") + b"\n"
                    )
        cache = BlockCache(config.cache_dir, config.cache_size, config.min_free_ratio)
        stats = MountStats()
        fetcher = ContentFetcher(cache, store, stats, config.policy)
        planner = PrefetchPlanner(tree, config.prefetch)
        overlay: Overlay | None = None
        write_behind: WriteBehind | None = None
        if config.writable:
            overlay_dir = config.overlay_dir or default_overlay_dir(config.cache_dir, mountpoint)
            overlay = Overlay.open(overlay_dir, tree, fetcher_reader(tree, fetcher), stats)
            record_overlay_origin(overlay, sources, config.store_uri, mountpoint)
            log.info("writable: the overlay is %s (%d changed inodes)", overlay_dir,
                     len(overlay.nodes))  # fmt: skip
            if config.upload_on_close:
                slots = fetcher.slots
                write_behind = WriteBehind(overlay, store, stats,
                                           busy=lambda: slots.borrowed_tokens > 0)  # fmt: skip
                overlay.on_closed = write_behind.enqueue
                log.info("write-behind: closed files are stored in %s", store.uri)
            ops: ReadOnlyOperations = WritableOperations(tree, fetcher, stats, overlay, planner)
        else:
            ops = ReadOnlyOperations(tree, fetcher, stats, planner)
        fetcher.on_bad = ops.invalidate_object
        ops.uid = os.getuid() if config.uid is None else config.uid
        ops.gid = os.getgid() if config.gid is None else config.gid
        ops.dir_mode, ops.file_mode = config.dir_mode, config.file_mode
        if overlay is not None:  # base entries show them; new ones keep their creator's
            overlay.dir_mode, overlay.file_mode = config.dir_mode, config.file_mode
        failed: RuntimeError | None = None
        with captured_stderr() as libfuse:
            try:
                pyfuse3.init(ops, mountpoint, options)
            except RuntimeError as e:
                failed = e
        if failed is not None:
            if overlay is not None:
                overlay.close()
            said = " ".join(libfuse.text().split())  # libfuse's own reason, e.g. an option
            raise MountError(
                f"cannot mount on {mountpoint}: {said or failed}",
                hint="check the -o options"
                if "option" in said
                else "run vfs doctor: /dev/fuse, fusermount3 and the permission to mount",
            )
        log.info(
            "tree of %d files (%d bytes) from %d manifest(s) built in %.2f s",
            tree.file_count,
            tree.total_size,
            len(sources),
            time.monotonic() - started,
        )
    except VfsError as e:
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, f"{e}\n".encode())
            os.close(ready_fd)
        raise

    terminated = False

    async def serve() -> None:
        nonlocal terminated
        async with trio.open_nursery() as nursery:

            async def announce_ready() -> None:
                # The stat is answered by our own loop: once it returns, the mount answers.
                st = await trio.to_thread.run_sync(os.stat, mountpoint)
                log.info("mounted %s (store %s, cache %s)", mountpoint, store.uri, cache.root)
                await trio.to_thread.run_sync(tune_kernel, st.st_dev)
                _sd_notify(f"READY=1\nSTATUS=serving {mountpoint} from {store.uri}")
                if ready_fd is not None:
                    with contextlib.suppress(OSError):
                        os.write(ready_fd, READY_PREFIX + f"{os.getpid()}\n".encode())
                    os.close(ready_fd)

            async def watch_signals() -> None:
                nonlocal terminated
                with trio.open_signal_receiver(
                    signal.SIGTERM, signal.SIGINT, signal.SIGHUP
                ) as sigs:
                    async for signum in sigs:
                        log.info("signal %d: unmounting %s", signum, mountpoint)
                        terminated = True
                        pyfuse3.terminate()
                        return

            async def persist_overlay() -> None:
                while overlay is not None and not overlay.closed:
                    await trio.sleep(1)
                    if overlay.closed:
                        return
                    try:
                        overlay.persist()
                    except Exception as e:
                        log.warning("saving sizes and mtimes in %s failed (%s: %s); retrying",
                                    overlay.root, type(e).__name__, e)  # fmt: skip

            async def flush_cache_index() -> None:
                while True:
                    await trio.sleep(5)
                    await failsafe("flushing the cache index", cache.flush_touched)

            fetcher.attach(nursery)
            fetcher.prefetch(planner.objects(planner.at_mount()))
            nursery.start_soon(announce_ready)
            nursery.start_soon(watch_signals)
            nursery.start_soon(flush_cache_index)
            nursery.start_soon(persist_overlay)
            nursery.start_soon(failsafe, "reconciling the cache index", cache.reconcile)
            behind = trio.CancelScope()
            if write_behind is not None:

                async def run_write_behind() -> None:
                    with behind:
                        await write_behind.run()

                nursery.start_soon(run_write_behind)
            # pyfuse3.main returns when the file system is unmounted or terminated.
            await pyfuse3.main()
            behind.cancel()  # what it did not store, vfs commit stores
            # Unmounted: a new mount may take the point (and the overlay) while the cache
            # writes finish.
            if overlay is not None:
                overlay.close()
            os.close(point_lock)
            await fetcher.drain(DRAIN_TIMEOUT)
            nursery.cancel_scope.cancel()

    try:
        trio.run(serve)
    finally:
        _sd_notify("STOPPING=1")
        pyfuse3.close(unmount=terminated)
        if overlay is not None:
            overlay.close()
        cache.close()
        log.info("unmounted %s", mountpoint)


class _Captured:
    """What was written to fd 2 inside :func:`captured_stderr` (after it ended)."""

    def __init__(self) -> None:
        self.data = b""

    def text(self) -> str:
        return self.data.decode(errors="replace").strip()


@contextlib.contextmanager
def captured_stderr() -> Iterator[_Captured]:
    """Capture what C code (libfuse) writes to fd 2 meanwhile, e.g. "fuse: unknown
    option(s): `-o bogus'", which would otherwise reach only the log; it is also written
    to the real stderr afterwards."""
    captured = _Captured()
    read_end, write_end = os.pipe()
    saved = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield captured
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.set_blocking(read_end, False)
        chunks = []
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(read_end, 65536):
                chunks.append(chunk)
        os.close(read_end)
        captured.data = b"".join(chunks)
        if captured.data:
            with contextlib.suppress(OSError):
                os.write(2, captured.data)


async def failsafe(what: str, fn: Callable[[], object]) -> None:
    """Run blocking ``fn`` in a worker thread; log an error (once per call, with its cause)
    and carry on: background work never takes the mount down (S3QL's failsafe idea)."""
    try:
        await trio.to_thread.run_sync(fn, abandon_on_cancel=True)
    except Exception as e:
        log.warning("%s failed (%s: %s); the mount goes on", what, type(e).__name__, e)


def mount_s3_options(options: S3Options, policy: FetchPolicy) -> S3Options:
    """The S3 client options of a mount: no botocore retries (the fetcher retries, one
    retry layer) and socket timeouts within one attempt's budget."""
    timeout = max(1.0, policy.attempt_timeout)
    return replace(
        options, max_attempts=1, connect_timeout=min(10.0, timeout), read_timeout=timeout
    )


def tune_kernel(st_dev: int) -> None:
    """Best effort: bigger kernel readahead and more background requests for the mount.

    Needs root (or CAP_SYS_ADMIN); what could not be set is logged, never fatal.
    """
    major, minor = os.major(st_dev), os.minor(st_dev)
    settings = [(f"/sys/class/bdi/{major}:{minor}/read_ahead_kb", READ_AHEAD_KB)]
    conn = "/sys/fs/fuse/connections"
    if not os.path.exists(f"{conn}/{minor}") and os.geteuid() == 0:
        subprocess.run(["mount", "-t", "fusectl", "fusectl", conn], capture_output=True,
                       check=False, timeout=10)  # fmt: skip
    settings += [
        (f"{conn}/{minor}/max_background", MAX_BACKGROUND),
        (f"{conn}/{minor}/congestion_threshold", MAX_BACKGROUND * 3 // 4),
    ]
    done, failed = [], []
    for path, value in settings:
        try:
            with open(path, "w") as f:
                f.write(str(value))
            done.append(f"{os.path.basename(path)}={value}")
        except OSError as e:
            failed.append(f"{path}: {e.strerror}")
    if done:
        log.info("kernel tuning applied: %s", ", ".join(done))
    if failed:
        log.info("kernel tuning not applied (needs root): %s", "; ".join(failed))
