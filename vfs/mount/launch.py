"""The parent side of a background mount: start the daemon, wait for its ready line;
unmount; tell whether a path is mounted.

What ``vfs mount`` runs before the daemon answers, so it imports neither the FUSE stack
(pyfuse3, trio) nor boto3: the daemon (:mod:`vfs.mount.service`) does that in its own process.
"""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence

from vfs.errors import MountError
from vfs.hashing import hash_string

READY_TIMEOUT = 300.0
"""Seconds ``start_mount`` waits for the daemon to answer before giving up."""

READY_PREFIX = b"ready "
WARNING_PREFIX = b"warning: "


def default_log_file(cache_dir: str, mountpoint: str) -> str:
    """Log file of a background mount: ``{cache_dir}/logs/mount-{hash of the mount point}.log``."""
    name = hash_string(os.path.abspath(mountpoint))[:16]
    return os.path.join(cache_dir, "logs", f"mount-{name}.log")


def start_mount(argv: Sequence[str], log_file: str, timeout: float = READY_TIMEOUT) -> int:
    """Start ``vfs mount … --foreground`` (``argv``, without the ready fd) detached.

    Returns the daemon's pid once the mount answers. Raises :class:`MountError` with the
    daemon's own message when it exits or fails to answer within ``timeout`` seconds.
    """
    try:
        os.makedirs(os.path.dirname(log_file), mode=0o700, exist_ok=True)
        os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600))
    except OSError as e:
        raise MountError(
            f"cannot write the log file {log_file}: {e.strerror}",
            hint="pass --cache-dir with a writable directory, or --log-file",
        ) from None
    read_end, write_end = os.pipe()
    log_fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    with open(log_fd, "ab") as log_out:
        proc = subprocess.Popen(
            [*argv, "--ready-fd", str(write_end), "--log-file", log_file],
            stdin=subprocess.DEVNULL,
            stdout=log_out,
            stderr=log_out,
            pass_fds=(write_end,),
            start_new_session=True,
        )
    os.close(write_end)
    try:
        lines = _read_ready(read_end, proc, timeout)
    finally:
        os.close(read_end)
    for line in lines:
        if line.startswith(WARNING_PREFIX):
            sys.stderr.write(line.decode(errors="replace") + "\n")
    message = lines[-1] + b"\n" if lines and not lines[-1].startswith(WARNING_PREFIX) else b""
    if message.startswith(READY_PREFIX):
        return int(message[len(READY_PREFIX) :].strip() or proc.pid)
    if proc.poll() is None:
        proc.terminate()
    text = message.decode(errors="replace").strip()
    if not text:
        text = f"the mount daemon exited with status {proc.poll()}; see {log_file}"
    raise MountError(text)


def _read_ready(fd: int, proc: subprocess.Popen[bytes], timeout: float) -> list[bytes]:
    """Lines from the daemon's ready pipe up to the first that is not a warning (the ready
    line or an error), or all of them at EOF; within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    buffer = b""
    while True:
        lines = buffer.split(b"\n")
        for n, line in enumerate(lines[:-1]):
            if not line.startswith(WARNING_PREFIX):  # ready, or an error (maybe of more lines)
                return [*lines[:n], b"\n".join(lines[n:]).rstrip(b"\n")]
        left = deadline - time.monotonic()
        if left <= 0:
            raise MountError(f"the mount did not answer within {timeout:.0f} s")
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            data = os.read(fd, 65536)
            if not data:
                return [line for line in lines if line]
            buffer += data
        elif proc.poll() is not None and not buffer:
            return []


def unmount(mountpoint: str, timeout: float = 60.0) -> None:
    """Unmount a vfs mount with ``fusermount3 -u``; wait until it is gone.

    Raises :class:`MountError` when ``mountpoint`` is not mounted or stays busy.
    """
    path = os.path.abspath(mountpoint)
    if not is_mounted(path):
        raise MountError(f"{path} is not mounted")
    result = subprocess.run(
        ["fusermount3", "-u", path], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        detail = result.stderr.strip() or f"fusermount3 exited with {result.returncode}"
        hint = "close the files and shells using it, or unmount lazily: fusermount3 -uz"
        raise MountError(f"cannot unmount {path}: {detail}", hint=hint)
    deadline = time.monotonic() + timeout
    while is_mounted(path):
        if time.monotonic() > deadline:
            raise MountError(f"{path} is still mounted after {timeout:.0f} s")
        time.sleep(0.05)


def is_mounted(path: str) -> bool:
    """True when ``path`` is a mount point, read from /proc (never touches the mount)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                target = line.split(" ")[4]
                if _unescape_mountinfo(target) == path:
                    return True
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise
    return False


def _unescape_mountinfo(field: str) -> str:
    """Undo the octal escapes (``\\040`` for space) of /proc/self/mountinfo."""
    if "\\" not in field:
        return field
    out = bytearray()
    raw = field.encode("utf-8", "surrogateescape")
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and i + 3 < len(raw) and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


def python_argv() -> list[str]:
    """The command that runs this vfs: ``[python, -m, vfs]``."""
    return [sys.executable, "-m", "vfs"]
