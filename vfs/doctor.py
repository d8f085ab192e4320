"""``vfs doctor``: is this node ready to mount, and if not, what to fix.

Each check gives one :class:`Finding`: ``ok``, ``warn`` (works, but not as well as it could)
or ``fail`` (a mount or a transfer would fail), with the fix in one sentence. Nothing is
changed on the node; the only request sent is one ``HEAD`` to the store, when one is given.
Facts checked (fuse-anchors.md §3.3, reference/test-environment.md): ``/dev/fuse`` usable,
``fusermount3`` installed (setuid root for other users), ``user_allow_other`` in
``/etc/fuse.conf`` for ``allow_other`` without root, the sysfs readahead knobs writable
(root), libfuse 3 and pyfuse3 importable, the cache directory writable with room for
``--cache-size``, and the store answering with the credentials at hand.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass

from vfs.errors import VfsError
from vfs.mount.preflight import FUSE_CONF, allow_other_permitted
from vfs.storage import S3Options, open_store

OK, WARN, FAIL = "ok", "warn", "fail"

PROBE_KEY = "Data/00000000000000000000000000000000.xxh128"
"""Key asked for by the store check: an object that need not exist (a 404 proves access)."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One check: ``status`` (``ok``/``warn``/``fail``), ``name``, what was found
    (``detail``) and, unless ok, the ``fix``."""

    name: str
    status: str
    detail: str
    fix: str = ""


def check_fuse_device(path: str = "/dev/fuse") -> Finding:
    """``/dev/fuse`` exists, is a character device, and may be opened read-write."""
    try:
        st = os.stat(path)
    except OSError:
        return Finding("fuse device", FAIL, f"{path} does not exist",
                       "load the fuse module (modprobe fuse) or, in a container, pass "
                       "--device /dev/fuse")  # fmt: skip
    if not stat.S_ISCHR(st.st_mode):
        return Finding("fuse device", FAIL, f"{path} is not a character device",
                       "recreate it: mknod /dev/fuse c 10 229")  # fmt: skip
    if not os.access(path, os.R_OK | os.W_OK):
        return Finding("fuse device", FAIL, f"{path} is not readable and writable by you",
                       "chmod 0666 /dev/fuse (the distribution default)")  # fmt: skip
    return Finding("fuse device", OK, f"{path} usable")


def check_fusermount() -> Finding:
    """``fusermount3`` is on ``PATH`` (and setuid root when not running as root)."""
    found = shutil.which("fusermount3")
    if found is None:
        return Finding("fusermount3", FAIL, "not found on PATH",
                       "install fuse3 (apt-get install fuse3 / dnf install fuse3)")  # fmt: skip
    if os.geteuid() != 0 and not os.stat(found).st_mode & stat.S_ISUID:
        return Finding("fusermount3", FAIL, f"{found} is not setuid root",
                       f"chmod u+s {found} (as the fuse3 package installs it)")  # fmt: skip
    return Finding("fusermount3", OK, found)


def check_allow_other(conf: str = FUSE_CONF, euid: int | None = None) -> Finding:
    """``allow_other`` (which the worker agent passes) is permitted for the user ``euid``
    (default: this process's): always for root, else only with ``user_allow_other`` in
    ``/etc/fuse.conf``."""
    if (os.geteuid() if euid is None else euid) == 0:
        return Finding("allow_other", OK, "running as root: permitted")
    if allow_other_permitted(conf, euid):
        return Finding("allow_other", OK, f"user_allow_other set in {conf}")
    return Finding("allow_other", WARN, f"user_allow_other not set in {conf}",
                   f"add the line user_allow_other to {conf} if mounts use -o allow_other "
                   "(the worker agent's do)")  # fmt: skip


def check_kernel_tuning(bdi: str = "/sys/class/bdi") -> Finding:
    """The mount's readahead and background-request knobs can be set (needs root)."""
    if os.geteuid() == 0 and os.access(bdi, os.W_OK):
        return Finding("kernel tuning", OK, "readahead and max_background will be raised")
    return Finding("kernel tuning", WARN,
                   "not root: the kernel's FUSE readahead stays at 128 KiB (slower cache hits)",
                   "run mounts as root or under systemd (the vfs-mount@ unit)")  # fmt: skip


def check_fuse_library() -> Finding:
    """pyfuse3 (and so libfuse 3) can be imported (without importing it here)."""
    if importlib.util.find_spec("pyfuse3") is None:
        return Finding("pyfuse3", FAIL, "the pyfuse3 module is not installed",
                       "install libfuse3-dev and pkg-config, then reinstall vfs")  # fmt: skip
    return Finding("pyfuse3", OK, "installed")


def check_cache_dir(cache_dir: str, cache_size: int) -> Finding:
    """The cache directory exists or can be made, is writable, and its disk has room for
    ``cache_size`` bytes (a warning when not: eviction then keeps it smaller)."""
    path = os.path.abspath(cache_dir)
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        return Finding("cache dir", FAIL, f"{path} cannot be written (checked {probe})",
                       "pass --cache-dir with a writable directory, or fix its owner")  # fmt: skip
    if probe == path:
        try:
            tempfile.TemporaryFile(dir=path).close()
        except OSError as e:
            return Finding("cache dir", FAIL, f"{path}: cannot create a file ({e.strerror})",
                           "pass --cache-dir with a writable directory")  # fmt: skip
    st = os.statvfs(probe)
    free = st.f_bavail * st.f_frsize
    if free < cache_size:
        return Finding("cache dir", WARN,
                       f"{path}: {free / 2**30:.1f} GiB free, --cache-size is "
                       f"{cache_size / 2**30:.1f} GiB",
                       "free disk space or lower --cache-size")  # fmt: skip
    return Finding("cache dir", OK, f"{path} writable, {free / 2**30:.1f} GiB free")


def check_store(uri: str, options: S3Options) -> Finding:
    """The store answers with the credentials at hand: one ``HEAD`` of :data:`PROBE_KEY`
    (absent or present, both prove access)."""
    try:
        store = open_store(uri, options)
        store.head(PROBE_KEY)
    except VfsError as e:
        return Finding("store", FAIL, e.message, e.hint or "")
    if uri.startswith("file://") and not os.path.isdir(uri.removeprefix("file://")):
        return Finding("store", FAIL, f"{uri}: the directory does not exist",
                       "create it, or fix the path (file:///ABSOLUTE/DIR)")  # fmt: skip
    return Finding("store", OK, f"{store.uri} answers")


def run_checks(
    cache_dir: str, cache_size: int, store_uri: str | None, options: S3Options
) -> list[Finding]:
    """Every check, in the order shown to the user."""
    findings = [
        check_fuse_device(),
        check_fusermount(),
        check_fuse_library(),
        check_allow_other(),
        check_kernel_tuning(),
        check_cache_dir(cache_dir, cache_size),
    ]
    if store_uri:
        findings.append(check_store(store_uri, options))
    return findings
