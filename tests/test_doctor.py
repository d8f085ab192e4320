"""``vfs doctor``: each check on a real node (this machine), the failures with their fixes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import run_vfs

from vfs.doctor import check_allow_other, check_cache_dir, check_fuse_device


def findings(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, str]]:
    return {f["name"]: f for f in json.loads(result.stdout)}


def test_a_ready_node_passes(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    result = run_vfs(
        "doctor", "--json", "--cache-dir", str(tmp_path / "cache"), "--cache-size", "1M",
        "--store", f"s3://{s3_bucket}/root", "--endpoint-url", s3_endpoint,
    )  # fmt: skip
    found = findings(result)
    assert {f["status"] for f in found.values()} == {"ok"}, found
    assert set(found) == {"fuse device", "fusermount3", "pyfuse3", "allow_other",
                          "kernel tuning", "cache dir", "store"}  # fmt: skip
    assert not (tmp_path / "cache").exists()  # checked, not created


def test_a_missing_bucket_fails_with_its_name(tmp_path: Path, s3_endpoint: str) -> None:
    result = run_vfs(
        "doctor", "--cache-dir", str(tmp_path / "c"), "--store", "s3://no-such-bucket-vfs/x",
        "--endpoint-url", s3_endpoint, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "FAIL  store: HEAD s3://no-such-bucket-vfs/x/Data/" in result.stdout
    assert "bucket 'no-such-bucket-vfs' does not exist" in result.stdout
    assert "fix: check the bucket name" in result.stdout


def test_no_credentials_fail_with_the_fix(tmp_path: Path, s3_endpoint: str) -> None:
    none = str(tmp_path / "none")
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "",
           "AWS_SHARED_CREDENTIALS_FILE": none, "AWS_CONFIG_FILE": none,
           "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    result = run_vfs(
        "doctor", "--cache-dir", str(tmp_path / "c"), "--store", "s3://bucket/x",
        "--endpoint-url", s3_endpoint, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout
    assert "no AWS credentials found" in result.stdout
    assert "fix: give credentials" in result.stdout


def test_missing_file_store_and_unwritable_cache_dir_fail(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = run_vfs(
        "doctor", "--cache-dir", str(tmp_path / "file" / "cache"),
        "--store", f"file://{tmp_path}/nonexistent", check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"FAIL  cache dir: {tmp_path}/file/cache cannot be written" in result.stdout
    assert f"FAIL  store: file://{tmp_path}/nonexistent: the directory does not exist" in (
        result.stdout
    )


def test_cache_smaller_disk_than_cache_size_warns(tmp_path: Path) -> None:
    found = check_cache_dir(str(tmp_path), 1 << 60)
    assert found.status == "warn" and "lower --cache-size" in found.fix


def test_missing_fuse_device_fails() -> None:
    found = check_fuse_device("/nonexistent/fuse")
    assert found.status == "fail" and "modprobe fuse" in found.fix
    assert check_fuse_device("/tmp").status == "fail"  # not a character device


def test_allow_other_for_a_user_needs_user_allow_other(tmp_path: Path) -> None:
    """As the worker agent's job user (not root), allow_other needs user_allow_other."""
    conf = tmp_path / "fuse.conf"
    conf.write_text("# user_allow_other\nmount_max = 1000\n")
    found = check_allow_other(str(conf), euid=1000)
    assert found.status == "warn" and f"add the line user_allow_other to {conf}" in found.fix
    conf.write_text("mount_max = 1000\n  user_allow_other  # for vfs\n")
    assert check_allow_other(str(conf), euid=1000).status == "ok"
    assert check_allow_other(str(tmp_path / "missing"), euid=1000).status == "warn"
    assert check_allow_other(str(tmp_path / "missing"), euid=0).status == "ok"
