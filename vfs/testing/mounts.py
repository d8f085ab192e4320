"""Real ``vfs mount`` processes for tests and benchmarks, always unmounted, never hanging.

:class:`MountSet` mounts with ``vfs mount ... --log-file`` and unmounts everything it made,
whatever happened: ``vfs unmount`` first, then a fusectl abort of the FUSE connection and a
lazy ``fusermount3 -uz``, and SIGKILL of a daemon that lingers. Every step has a timeout.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vfs.mount.service import is_mounted
from vfs.testing.logcheck import unexpected_log_lines

MOUNT_TIMEOUT = 120.0
UNMOUNT_TIMEOUT = 30.0
#: Seconds a daemon may take to exit after its mount is gone, before SIGKILL.
EXIT_TIMEOUT = 10.0
FUSECTL = "/sys/fs/fuse/connections"


def run_vfs(
    *args: str,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    check: bool = True,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``vfs ARGS`` (this Python's ``-m vfs``) in a subprocess; raise ``AssertionError``
    with its output when ``check`` and it fails, ``subprocess.TimeoutExpired`` (after killing
    it) when it takes longer than ``timeout`` seconds."""
    result = subprocess.run(
        [sys.executable, "-m", "vfs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"vfs {' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def run_vfs_on_a_tty(*args: str, timeout: float = 120) -> str:
    """``vfs ARGS`` (this Python's ``-m vfs``) with stderr on a pseudo-terminal, as in a
    shell (``COLUMNS=120``); what it wrote there. Raises ``AssertionError`` when it exits
    non-zero or is still running after ``timeout`` seconds (it is then killed)."""
    main, sub = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "vfs", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=sub,
                            env={**os.environ, "COLUMNS": "120", "TERM": "xterm"})  # fmt: skip
    os.close(sub)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"vfs {' '.join(args)} took over {timeout} s"
            if not select.select([main], [], [], left)[0]:
                continue
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=max(1.0, deadline - time.monotonic())) == 0
    finally:
        os.close(main)
        proc.kill()
        proc.communicate()
    return b"".join(chunks).decode(errors="replace")


@dataclass
class Mounted:
    """A mount made by a :class:`MountSet`: its path, daemon pid and log file.

    ``expect_log(regex)`` declares a WARNING/ERROR/traceback record of the log that is
    expected; :meth:`unexpected_log` returns the others.
    """

    path: Path
    pid: int
    log: Path
    elapsed: float = 0.0
    allowed: list[str] = field(default_factory=list)

    def log_text(self) -> str:
        """The log file's text ('' before it exists)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def expect_log(self, regex: str) -> None:
        """Declare that WARNING/ERROR/traceback records matching ``regex`` are expected."""
        re.compile(regex)  # fail here, not at teardown, on a bad pattern
        self.allowed.append(regex)

    def unexpected_log(self) -> list[str]:
        """The WARNING/ERROR/CRITICAL/traceback records not declared with :meth:`expect_log`."""
        return unexpected_log_lines(self.log, self.allowed)


def mount_fields(path: str) -> list[str] | None:
    """Fields of ``path``'s line in /proc/self/mountinfo (read without touching the mount)."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ")
            if fields[4] == path:
                return fields
    return None


def force_unmount(path: str) -> None:
    """Last resort for a stuck mount: abort the FUSE connection, then lazy-unmount."""
    with contextlib.suppress(Exception):
        if not os.path.ismount(FUSECTL):
            subprocess.run(
                ["mount", "-t", "fusectl", "fusectl", FUSECTL],
                capture_output=True,
                timeout=10,
                check=False,
            )
        fields = mount_fields(path)
        if fields is not None:
            minor = fields[2].split(":")[1]
            with open(f"{FUSECTL}/{minor}/abort", "w") as ab:
                ab.write("1")
    with contextlib.suppress(Exception):
        subprocess.run(["fusermount3", "-uz", path], capture_output=True, timeout=10, check=False)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped has finished)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to end; True when it did."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def vfs_unmount_command(path: str) -> list[str]:
    """The ``vfs unmount PATH`` command line (this Python's ``-m vfs``)."""
    return [sys.executable, "-m", "vfs", "unmount", path]


def unmount_path(
    path: str,
    pid: int | None,
    command: Sequence[str] | None,
    timeout: float = UNMOUNT_TIMEOUT,
    exit_timeout: float = EXIT_TIMEOUT,
) -> None:
    """Unmount the FUSE mount at ``path`` whatever state it is in, and end its daemon ``pid``.

    ``command`` (e.g. ``vfs unmount PATH`` or ``fusermount3 -u PATH``) is tried first, for at
    most ``timeout`` seconds; then the FUSE connection is aborted and the mount lazily
    detached (:func:`force_unmount`); a daemon still running ``exit_timeout`` seconds later
    gets SIGTERM, then SIGKILL.
    """
    if command and is_mounted(path):
        with contextlib.suppress(Exception):
            subprocess.run(list(command), capture_output=True, timeout=timeout, check=False)
    if is_mounted(path):
        force_unmount(path)
    if pid is None or wait_exit(pid, exit_timeout):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
        if wait_exit(pid, 2.0):
            return


class MountSet:
    """The mounts of one test or benchmark; :meth:`close` unmounts them all.

    ``log_dir`` receives one log file per mount (``mount-N.log``) unless :meth:`mount` is
    given ``log``.
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        mount_timeout: float = MOUNT_TIMEOUT,
        unmount_timeout: float = UNMOUNT_TIMEOUT,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.mount_timeout = mount_timeout
        self.unmount_timeout = unmount_timeout
        self.mounts: list[Mounted] = []
        self.made: list[Mounted] = []  # every mount, unmounted or not (for the log check)
        self._counter = 0

    def mount(
        self,
        mountpoint: Path,
        manifests: Sequence[str | Path],
        store: str,
        *extra: str,
        cache_dir: Path | None = None,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        cwd: str | Path | None = None,
    ) -> Mounted:
        """``vfs mount MOUNTPOINT --store STORE --manifest ... EXTRA``; the new mount.

        A mount that fails or times out is cleaned up (it may have been half made) and the
        error raised.
        """
        mountpoint = Path(mountpoint)
        mountpoint.mkdir(parents=True, exist_ok=True)
        log = log or self.log_dir / f"mount-{self._counter}.log"
        self._counter += 1
        args = ["mount", str(mountpoint), "--store", store, "--log-file", str(log)]
        if cache_dir is not None:
            args += ["--cache-dir", str(cache_dir)]
        for manifest in manifests:
            args += ["--manifest", str(manifest)]
        t0 = time.perf_counter()
        try:
            result = run_vfs(*args, *extra, timeout=self.mount_timeout, env=env, cwd=cwd)
        except BaseException:
            if is_mounted(str(mountpoint)):
                force_unmount(str(mountpoint))
            raise
        elapsed = time.perf_counter() - t0
        found = re.search(r"\(pid (\d+)", result.stdout)
        if not found:
            if is_mounted(str(mountpoint)):
                force_unmount(str(mountpoint))
            raise AssertionError(f"vfs mount printed no pid: {result.stdout!r}")
        mounted = Mounted(mountpoint, int(found.group(1)), log, elapsed)
        self.mounts.append(mounted)
        self.made.append(mounted)
        return mounted

    def unmount(self, m: Mounted) -> None:
        """Unmount ``m``: ``vfs unmount``, then fusectl abort + lazy unmount; then make sure
        its daemon is gone (SIGKILL after :data:`EXIT_TIMEOUT` seconds)."""
        path = str(m.path)
        unmount_path(path, m.pid, vfs_unmount_command(path), self.unmount_timeout)
        if m in self.mounts:
            self.mounts.remove(m)

    def close(self) -> list[str]:
        """Unmount every mount still there, newest first; the errors met (each is cleaned
        up anyway)."""
        errors: list[str] = []
        for m in reversed(list(self.mounts)):
            try:
                self.unmount(m)
            except Exception as e:  # keep cleaning up the rest
                errors.append(f"unmount of {m.path} failed: {type(e).__name__}: {e}")
        return errors

    def unexpected_logs(self) -> dict[Path, list[str]]:
        """Per log file of every mount made, the records not declared with ``expect_log``."""
        out: dict[Path, list[str]] = {}
        for m in self.made:
            lines = m.unexpected_log()
            if lines:
                out[m.log] = lines
        return out

    def __enter__(self) -> MountSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
