"""``vfs mount`` says what is wrong before it says "mounted": one line naming the cause and
the fix, exit status 1, nothing left mounted (issue "On the render node")."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import run_vfs
from test_read_path import put_local, put_s3, write_manifest

from vfs.errors import MountError
from vfs.mount.launch import is_mounted
from vfs.mount.preflight import allow_other_permitted, check_fuse_options
from vfs.testing.mounts import Mounted, force_unmount, unmount_path, wait_exit

FILES = {"a/one.bin": b"1" * 5000, "b/two.bin": b"2" * 7000}


@pytest.fixture()
def point(tmp_path: Path) -> Iterator[Path]:
    """A mount point that is unmounted after the test whatever happened."""
    p = tmp_path / "mnt"
    p.mkdir()
    yield p
    if is_mounted(str(p)):
        unmount_path(str(p), None, ["fusermount3", "-u", str(p)])


def failed_mount(point: Path, manifest: Path, store: str, *extra: str, **kw: object) -> str:
    """Run a ``vfs mount`` that must fail; its one-line error."""
    result = run_vfs(
        "mount", str(point), "--manifest", str(manifest), "--store", store,
        "--cache-dir", str(point.parent / "cache"), *extra, check=False, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    assert result.returncode == 1, result
    assert not is_mounted(str(point))
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_non_empty_mount_point_needs_allow_non_empty(
    tmp_path: Path, point: Path, local_store: tuple[Path, str], vfs_mount: Callable[..., Mounted]
) -> None:
    put_local(local_store[0], FILES)
    manifest = write_manifest(tmp_path / "m", FILES)
    (point / "left-over.txt").write_text("x")
    error = failed_mount(point, manifest, local_store[1])
    assert f"mount point {point} is not empty" in error and "--allow-non-empty" in error
    m = vfs_mount(point, [manifest], local_store[1], "--allow-non-empty")
    assert (m.path / "a/one.bin").read_bytes() == FILES["a/one.bin"]


def test_missing_file_store(tmp_path: Path, point: Path) -> None:
    manifest = write_manifest(tmp_path / "m", FILES)
    error = failed_mount(point, manifest, f"file://{tmp_path}/nowhere")
    assert f"the store directory {tmp_path}/nowhere does not exist" in error


def test_missing_bucket_no_credentials_and_no_endpoint(
    tmp_path: Path, point: Path, s3_endpoint: str
) -> None:
    manifest = write_manifest(tmp_path / "m", FILES)
    error = failed_mount(point, manifest, "s3://no-such-bucket-vfs/DC", "--endpoint-url",
                         s3_endpoint)  # fmt: skip
    assert "bucket 'no-such-bucket-vfs' does not exist" in error
    none = str(tmp_path / "none")
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "",
           "AWS_SHARED_CREDENTIALS_FILE": none, "AWS_CONFIG_FILE": none,
           "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    error = failed_mount(point, manifest, "s3://bucket/DC", "--endpoint-url", s3_endpoint,
                         env=env)  # fmt: skip
    assert "no AWS credentials found" in error and "AWS_PROFILE" in error
    error = failed_mount(point, manifest, "s3://bucket/DC", "--endpoint-url",
                         "http://127.0.0.1:9", env={"AWS_MAX_ATTEMPTS": "1"})  # fmt: skip
    assert "cannot reach http://127.0.0.1:9" in error
    error = failed_mount(point, manifest, "s3://bucket/DC", "--endpoint-url", "not-a-url")
    assert "'not-a-url' is not a URL" in error
    error = failed_mount(point, manifest, "s3://bucket/DC", "--profile", "no-such-profile",
                         env={"AWS_CONFIG_FILE": none})  # fmt: skip
    assert "no-such-profile" in error and "--profile" in error


def test_an_object_missing_from_the_store_is_a_warning(
    tmp_path: Path, point: Path, s3_endpoint: str, s3_bucket: str, s3_client: object,
    vfs_mount: Callable[..., Mounted],
) -> None:  # fmt: skip
    put_s3(s3_client, s3_bucket, "DC", {"b/two.bin": FILES["b/two.bin"]})
    manifest = write_manifest(tmp_path / "m", FILES)
    result = run_vfs(
        "mount", str(point), "--manifest", str(manifest), "--store", f"s3://{s3_bucket}/DC",
        "--endpoint-url", s3_endpoint, "--cache-dir", str(tmp_path / "c"),
        "--log-file", str(tmp_path / "log"),
    )  # fmt: skip
    assert "a/one.bin: its content" in result.stderr and "is not in the store" in result.stderr
    assert (point / "b/two.bin").read_bytes() == FILES["b/two.bin"]
    subprocess.run(["fusermount3", "-u", str(point)], check=True, timeout=30)


def test_unknown_fuse_option_is_named(
    tmp_path: Path, point: Path, local_store: tuple[Path, str]
) -> None:
    put_local(local_store[0], FILES)
    manifest = write_manifest(tmp_path / "m", FILES)
    error = failed_mount(point, manifest, local_store[1], "-o", "bogus_opt")
    assert "unknown option(s): `-o bogus_opt'" in error and "check the -o options" in error


def test_allow_other_needs_user_allow_other_unless_root(tmp_path: Path) -> None:
    conf = tmp_path / "fuse.conf"
    conf.write_text("#user_allow_other\n")
    assert not allow_other_permitted(str(conf), euid=1000)
    assert allow_other_permitted(str(conf), euid=0)
    conf.write_text("user_allow_other\n")
    assert allow_other_permitted(str(conf), euid=1000)
    check_fuse_options({"ro", "allow_other"}, euid=0)
    check_fuse_options({"ro"}, euid=1000)
    if not allow_other_permitted(euid=1000):  # this machine's /etc/fuse.conf
        with pytest.raises(MountError, match=r"needs user_allow_other in /etc/fuse\.conf"):
            check_fuse_options({"allow_other"}, euid=1000)


def test_a_dead_mount_left_by_kill_9_is_cleaned_before_mounting(
    tmp_path: Path, local_store: tuple[Path, str], vfs_mount: Callable[..., Mounted]
) -> None:
    put_local(local_store[0], FILES)
    manifest = write_manifest(tmp_path / "m", FILES)
    first = vfs_mount(tmp_path / "mnt", [manifest], local_store[1])
    os.kill(first.pid, signal.SIGKILL)
    assert wait_exit(first.pid, 10)
    assert is_mounted(str(first.path))  # dead: ENOTCONN
    second = vfs_mount(tmp_path / "mnt", [manifest], local_store[1], "-v")
    assert (second.path / "a/one.bin").read_bytes() == FILES["a/one.bin"]


@pytest.mark.skipif(os.geteuid() != 0, reason="makes a read-only bind mount")
def test_read_only_cache_dir(tmp_path: Path, point: Path, local_store: tuple[Path, str]) -> None:
    put_local(local_store[0], FILES)
    manifest = write_manifest(tmp_path / "m", FILES)
    ro = tmp_path / "ro-cache"
    ro.mkdir()
    subprocess.run(["mount", "--bind", str(ro), str(ro)], check=True, timeout=30)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True, timeout=30)
        for extra in ([], ["--log-file", str(tmp_path / "log")]):
            result = run_vfs(
                "mount", str(point), "--manifest", str(manifest), "--store", local_store[1],
                "--cache-dir", str(ro), *extra, check=False,
            )  # fmt: skip
            assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
            assert f"{ro}" in result.stderr and "Read-only file system" in result.stderr
            assert "--cache-dir with a writable directory" in result.stderr
            assert not is_mounted(str(point))
    finally:
        force_unmount(str(ro))
        subprocess.run(["umount", "-l", str(ro)], check=False, timeout=30)


def test_mount_conventions_of_mount_s3_and_rclone(
    tmp_path: Path, local_store: tuple[Path, str], vfs_mount: Callable[..., Mounted]
) -> None:
    """--uid/--gid/--dir-mode/--file-mode, --allow-other, --read-only, --log-level and -v
    after the command, as mount-s3 and rclone spell them."""
    put_local(local_store[0], FILES)
    manifest = write_manifest(tmp_path / "m", FILES)
    m = vfs_mount(
        tmp_path / "mnt", [manifest], local_store[1], "--uid", "1234", "--gid", "5678",
        "--dir-mode", "0750", "--file-mode", "0o640", "--allow-other", "--read-only",
        "--log-level", "debug",
    )  # fmt: skip
    st = os.stat(m.path / "a")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 5678, 0o750)
    st = os.stat(m.path / "a/one.bin")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 5678, 0o640)
    with open("/proc/self/mountinfo") as f:
        line = next(x for x in f if f" {m.path} " in x)
    assert "allow_other" in line and " ro," in line
    assert " DEBUG " in m.log.read_text()
    result = run_vfs("mount", str(tmp_path / "x"), "--manifest", str(manifest), "--store",
                     local_store[1], "--dir-mode", "999", check=False)  # fmt: skip
    assert result.returncode == 2 and "'999' is not an octal mode" in result.stderr
