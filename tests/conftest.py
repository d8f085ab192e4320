"""Shared fixtures: a real S3 endpoint (moto's server on 127.0.0.1), real FUSE mounts that are
always unmounted, and a runner for the ``vfs`` command. The machinery lives in
:mod:`vfs.testing` (shared with ``scripts/bench_*.py``).

No test talks to anything beyond 127.0.0.1: every S3 client gets the moto endpoint, and the
AWS configuration files are pointed at empty files so no profile can redirect traffic.

Every mount's log is checked when its test ends, after the unmount: a WARNING, ERROR,
CRITICAL or traceback record the test did not declare with ``Mounted.expect_log(regex)``
fails the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import boto3
import pytest

from vfs.testing import (
    Mounted,
    MountSet,
    Request,
    S3Relay,
    force_unmount,
    moto_server,
    pid_alive,
    run_vfs,
)
from vfs.testing.mounts import MOUNT_TIMEOUT, UNMOUNT_TIMEOUT

__all__ = [
    "Mounted",
    "Request",
    "S3Relay",
    "force_unmount",
    "pid_alive",
    "require_tool",
    "run_vfs",
]

# Credentials and region for moto; set before anything creates a boto3 session.
_AWS_HOME = tempfile.mkdtemp(prefix="vfs-test-aws-")
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.path.join(_AWS_HOME, "config"),
        "AWS_SHARED_CREDENTIALS_FILE": os.path.join(_AWS_HOME, "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        # Caches (block cache, hash cache, S3 check cache) of commands run without
        # --cache-dir go here, never into the user's own.
        "VFS_CACHE_DIR": os.path.join(_AWS_HOME, "vfs-cache"),
    }
)
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_var, None)

# Tests of Ctrl-C send SIGINT to commands they start, as a terminal does. A suite started in
# the background by a non-interactive shell (`nohup … &`, some CI runners) inherits SIGINT
# ignored, and an ignored signal stays ignored across exec: give this process and so every
# command it starts the interactive default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def require_tool(name: str, package: str) -> str:
    """Path of the executable ``name``; without it the test is skipped, or fails when
    ``VFS_TEST_REQUIRE_TOOLS=1`` (scripts/test sets it and installs the Debian ``package``)."""
    path = shutil.which(name)
    if path is None:
        why = f"{name} is not installed (Debian package `{package}`, see scripts/test)"
        if os.environ.get("VFS_TEST_REQUIRE_TOOLS") == "1":
            pytest.fail(f"{why}; VFS_TEST_REQUIRE_TOOLS=1 requires it", pytrace=False)
        pytest.skip(why)
    return path


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server on 127.0.0.1, started for the session."""
    with moto_server() as url:
        yield url


@pytest.fixture()
def s3_relay(s3_endpoint: str) -> Iterator[S3Relay]:
    """A recording, fault-injecting relay in front of the moto server (see :class:`S3Relay`)."""
    relay = S3Relay(s3_endpoint)
    try:
        yield relay
    finally:
        relay.close()


@pytest.fixture()
def s3_client(s3_endpoint: str):  # type: ignore[no-untyped-def]
    """A boto3 S3 client on the moto server."""
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture()
def s3_bucket(s3_client) -> str:  # type: ignore[no-untyped-def]
    """A new, empty bucket on the moto server."""
    name = f"vfs-test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture()
def vfs_mount(tmp_path: Path) -> Iterator[Callable[..., Mounted]]:
    """Factory: ``vfs_mount(mountpoint, manifests, store, *extra_args)`` mounts for real.

    Every mount is unmounted when the test ends, pass or fail: ``vfs unmount`` first, then
    a fusectl abort and a lazy unmount, and the daemon is killed if it lingers. Then the
    logs are checked: a WARNING/ERROR/CRITICAL/traceback record not declared with
    ``Mounted.expect_log`` fails the test.
    """
    mounts = MountSet(tmp_path, mount_timeout=MOUNT_TIMEOUT, unmount_timeout=UNMOUNT_TIMEOUT)

    def mount(
        mountpoint: Path,
        manifests: Sequence[str | Path],
        store: str,
        *extra: str,
        cache_dir: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Mounted:
        return mounts.mount(
            mountpoint, manifests, store, *extra, cache_dir=cache_dir or tmp_path / "cache", env=env
        )

    yield mount

    errors = mounts.close()
    unexpected = mounts.unexpected_logs()
    if errors or unexpected:
        report = [*errors]
        for log, lines in unexpected.items():
            report.append(f"{log}: undeclared (use Mounted.expect_log):")
            report.extend(f"    {line}" for line in lines)
        pytest.fail("\n".join(report), pytrace=False)


@pytest.fixture()
def local_store(tmp_path: Path) -> tuple[Path, str]:
    """An empty ``file://`` store: ``(directory, URI)``."""
    d = tmp_path / "store"
    d.mkdir()
    return d, f"file://{d}"
