"""A local S3 server: moto's ``moto_server`` on 127.0.0.1 on a free port."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import IO


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int, proc: subprocess.Popen[bytes] | None, what: str, timeout: float = 60
) -> None:
    """Wait until 127.0.0.1:``port`` accepts connections; raise when ``proc`` exits first or
    ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            status = proc.poll() if proc is not None else None
            if status is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start (exit status {status})") from None
            time.sleep(0.1)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM ``proc``, then SIGKILL when it is still there after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)


def moto_executable() -> str:
    """``moto_server`` next to this Python (the virtualenv's), else the one on ``PATH``."""
    return shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"


@contextlib.contextmanager
def moto_server(log_file: str | None = None, timeout: float = 60) -> Iterator[str]:
    """Run moto's S3 server on 127.0.0.1 on a free port; yield its endpoint URL.

    Its output goes to ``log_file`` (discarded when None). The server is stopped on exit,
    whatever happens in the ``with`` block.
    """
    port = free_port()
    out: IO[bytes] | int = open(log_file, "wb") if log_file else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            [moto_executable(), "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    finally:
        if not isinstance(out, int):
            out.close()
    try:
        wait_port(port, proc, "moto_server", timeout)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)
