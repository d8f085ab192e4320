"""Test and benchmark harness: a local S3 server, a fault-injecting relay in front of it,
real FUSE mounts that are always unmounted, and a checker of mount logs.

Shared by ``tests/conftest.py`` and ``scripts/bench_*.py``; nothing here talks to anything
beyond 127.0.0.1.
"""

from __future__ import annotations

from vfs.testing.logcheck import unexpected_log_lines
from vfs.testing.mounts import Mounted, MountSet, force_unmount, pid_alive, run_vfs
from vfs.testing.relay import Request, S3Relay
from vfs.testing.servers import free_port, moto_server, wait_port

__all__ = [
    "MountSet",
    "Mounted",
    "Request",
    "S3Relay",
    "force_unmount",
    "free_port",
    "moto_server",
    "pid_alive",
    "run_vfs",
    "unexpected_log_lines",
    "wait_port",
]
