"""Checks before a mount is reported up: each failure is one line naming the cause and the
fix, and nothing is left mounted.

What is checked, in order (issue "On the render node", reference/fuse-anchors.md §3.3):

* the mount point: a directory, not already mounted (a dead mount left by a killed daemon —
  ``ENOTCONN`` — is lazily unmounted first, as ``fusermount3 -uz`` would), and empty unless
  ``--allow-non-empty`` (the files under it would be hidden, as rclone and mount-s3 warn);
* ``-o allow_other``: root may; anyone else needs ``user_allow_other`` in ``/etc/fuse.conf``;
* the store: one ``HEAD`` of an object the manifest lists proves the endpoint answers, the
  bucket exists and the credentials are accepted (a ``file://`` store: its directory
  exists). Errors that will not heal (no bucket, access denied, no or rejected credentials,
  endpoint unreachable or malformed) fail the mount; an object that is missing, or a store
  answering 5xx, is only a warning: cached and other files still read.

No FUSE imports here: ``vfs doctor`` uses the same checks.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess

from vfs.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    EndpointError,
    MountError,
    ObjectNotFoundError,
    StoreError,
)
from vfs.mount.launch import is_mounted
from vfs.mount.objects import ObjectRef
from vfs.storage import ObjectStore, data_key
from vfs.storage.local import LocalStore

log = logging.getLogger(__name__)

FUSE_CONF = "/etc/fuse.conf"

_DEAD = (errno.ENOTCONN, errno.ECONNABORTED)


def allow_other_permitted(conf: str = FUSE_CONF, euid: int | None = None) -> bool:
    """Whether user ``euid`` (default: this process's) may mount with ``allow_other``:
    root always, others when ``conf`` has a ``user_allow_other`` line (fuse.conf(5))."""
    if (os.geteuid() if euid is None else euid) == 0:
        return True
    try:
        with open(conf, encoding="utf-8", errors="replace") as f:
            return any(line.split("#", 1)[0].strip() == "user_allow_other" for line in f)
    except OSError:
        return False


def is_dead_mount(path: str) -> bool:
    """True when ``path`` is a FUSE mount whose daemon is gone (``ENOTCONN``)."""
    if not is_mounted(path):
        return False
    try:
        os.statvfs(path)  # never answered from the kernel's caches, unlike stat
    except OSError as e:
        return e.errno in _DEAD
    return False


def clean_dead_mount(path: str) -> bool:
    """Lazily unmount ``path`` when it is a dead mount; True when it was one and is gone.
    Raises :class:`MountError` when it cannot be unmounted."""
    if not is_dead_mount(path):
        return False
    result = subprocess.run(
        ["fusermount3", "-uz", path], capture_output=True, text=True, timeout=30, check=False
    )
    if is_mounted(path):
        raise MountError(
            f"{path} is a dead mount (its daemon is gone) and could not be unmounted: "
            f"{result.stderr.strip() or result.returncode}",
            hint=f"unmount it as its owner or root: fusermount3 -uz {path}",
        )
    return True


def check_mountpoint(mountpoint: str, allow_non_empty: bool = False) -> str:
    """The absolute mount point, after checking it is an existing, unmounted directory (a
    dead mount is cleaned first), empty unless ``allow_non_empty``. Raises
    :class:`MountError` naming the path."""
    path = os.path.abspath(mountpoint)
    if clean_dead_mount(path):
        log.info("%s was a dead mount (its daemon had died); unmounted it", path)
    if is_mounted(path):
        raise MountError(
            f"{path} is already a mount point", hint=f"unmount it first: vfs unmount {path}"
        )
    if not os.path.isdir(path):
        raise MountError(
            f"mount point {path} is not a directory", hint="create it first (mkdir -p)"
        )
    try:
        entries = os.listdir(path)
    except OSError as e:
        raise MountError(f"mount point {path}: {e.strerror}") from None
    if entries and not allow_non_empty:
        raise MountError(
            f"mount point {path} is not empty ({len(entries)} entries, e.g. {entries[0]!r})",
            hint="empty it, or pass --allow-non-empty to hide its files while mounted",
        )
    return path


def check_fuse_options(options: set[str], euid: int | None = None) -> None:
    """Refuse ``allow_other`` that the kernel would refuse. Raises :class:`MountError`."""
    if "allow_other" in options and not allow_other_permitted(euid=euid):
        raise MountError(
            f"-o allow_other needs user_allow_other in {FUSE_CONF} when not mounting as root",
            hint=f"add the line user_allow_other to {FUSE_CONF} (as root), or mount as root",
        )


def check_store(store: ObjectStore, obj: ObjectRef | None, path: str | None) -> str | None:
    """One cheap request proving the store answers with these credentials: ``HEAD`` of
    ``obj`` (the content of file ``path`` of the manifest; ``None`` for an empty manifest).
    Returns a warning when that object is missing; raises :class:`MountError` (the store's
    message and hint) when the store cannot be used at all."""
    if isinstance(store, LocalStore) and not os.path.isdir(store.root):
        raise MountError(
            f"the store directory {store.root} does not exist",
            hint="check the file:// store URI (file:///ABSOLUTE/DIR)",
        )
    if obj is None:
        return None
    key = data_key(obj.hash)
    try:
        size = store.head(key)
    except ObjectNotFoundError as e:
        if isinstance(e, BucketNotFoundError):
            raise MountError(f"the store cannot be used: {e.message}", hint=e.hint) from None
        size = None
    except (AccessDeniedError, EndpointError) as e:
        raise MountError(f"the store cannot be used: {e.message}", hint=e.hint) from None
    except StoreError as e:  # e.g. 503: may heal; cached files still read meanwhile
        return (
            f"the store did not answer a first HEAD ({e.message}); reads of uncached data "
            "fail until it does"
        )
    if size is None:
        return (
            f"{path}: its content {store.describe(key)} is not in the store; reading it "
            "will fail (EIO) until it is uploaded"
        )
    if size != obj.size:
        return (
            f"{path}: {store.describe(key)} has {size} bytes, the manifest says "
            f"{obj.size}; reading it will fail (EIO)"
        )
    return None
