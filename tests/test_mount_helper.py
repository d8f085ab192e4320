"""``mount.fuse.vfs``: ``mount -t fuse.vfs`` and fstab lines, run through the real mount(8)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_read_path import put_local, write_manifest

from vfs.cli.mount_helper import UsageError, translate
from vfs.mount.launch import is_mounted
from vfs.testing.mounts import unmount_path
from vfs.testing.relay import wait_for

HELPER = Path("/sbin/mount.fuse.vfs")
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["s3://b/DC", "/mnt/a", "-o", "manifest=/m1,manifest=/m2,cache_dir=/var/c"],
         ["mount", "/mnt/a", "--store", "s3://b/DC", "--manifest", "/m1", "--manifest", "/m2",
          "--cache-dir", "/var/c"]),
        (["-v", "file:///s", "/p", "-o", "rw,_netdev,nofail,x-systemd.automount,manifest=/m",
          "-o", "allow_other,default_permissions,comment=x-gvfs-hide,prefetch=dirs"],
         ["-v", "mount", "/p", "--store", "file:///s", "--manifest", "/m", "--prefetch", "dirs",
          "-o", "allow_other,default_permissions"]),
        (["-sn", "s3://b", "/p", "-omanifest=s3://b/x,endpoint_url=http://h:1"],
         ["mount", "/p", "--store", "s3://b", "--manifest", "s3://b/x", "--endpoint-url",
          "http://h:1"]),
    ],
)  # fmt: skip
def test_translation(argv: list[str], expected: list[str]) -> None:
    assert translate(argv) == (expected, False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["s3://b", "/p"], "give the manifest"),
        (["s3://b", "-o", "manifest=/m"], "give SOURCE"),
        (["s3://b", "/p", "-o", "manifest"], "needs a value"),
        (["s3://b", "/p", "-x", "-o", "manifest=/m"], "unknown flag -x"),
    ],
)
def test_bad_invocations(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        translate(argv)


@pytest.fixture()
def helper() -> Iterator[Path]:
    """``/sbin/mount.fuse.vfs`` running this checkout with this Python (removed after)."""
    if os.geteuid() != 0:
        pytest.skip("installing a mount helper in /sbin needs root")
    if HELPER.exists():
        pytest.skip(f"{HELPER} exists already; not replacing it")
    HELPER.write_text(
        f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m vfs.cli.mount_helper "$@"\n'
    )
    HELPER.chmod(0o755)
    try:
        yield HELPER
    finally:
        HELPER.unlink()


def mounted_daemon(point: Path) -> int | None:
    out = subprocess.run(["pgrep", "-f", f"vfs mount {point} "], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    return pids[0] if pids else None


@pytest.mark.parametrize("how", ["mount -t", "fstab"])
def test_mount_t_fuse_vfs_and_fstab(
    tmp_path: Path, local_store: tuple[Path, str], helper: Path, how: str
) -> None:
    files = {"shot/plate.exr": os.urandom(200_000)}
    put_local(local_store[0], files)
    manifest = write_manifest(tmp_path / "m.manifest", files)
    point = tmp_path / "mnt"
    point.mkdir()
    options = (
        f"manifest={manifest},cache_dir={tmp_path / 'cache'},allow_other,_netdev,nofail,"
        "x-systemd.automount"
    )
    if how == "fstab":
        fstab = tmp_path / "fstab"
        fstab.write_text(f"{local_store[1]} {point} fuse.vfs {options} 0 0\n")
        argv = ["mount", "-T", str(fstab), str(point)]
    else:
        argv = ["mount", "-t", "fuse.vfs", local_store[1], str(point), "-o", options]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert is_mounted(str(point))
        assert (point / "shot/plate.exr").read_bytes() == files["shot/plate.exr"]
        pid = mounted_daemon(point)
        assert pid is not None
        subprocess.run(["umount", str(point)], check=True, timeout=60)
        assert not is_mounted(str(point))
        wait_for(lambda: mounted_daemon(point) is None, 30, "the daemon to exit after umount")
    finally:
        unmount_path(str(point), mounted_daemon(point), None)


def test_fake_mount_prints_the_command(tmp_path: Path, helper: Path) -> None:
    result = subprocess.run(
        ["mount", "-f", "-v", "-t", "fuse.vfs", "file:///s", str(tmp_path), "-o", "manifest=/m"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not is_mounted(str(tmp_path))
