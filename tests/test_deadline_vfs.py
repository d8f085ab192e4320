"""vfs as the worker agent's ``deadline_vfs``: the layout it looks for, its exact argument
list, and the agent's own launcher (``deadline.job_attachments.vfs.VFSProcessManager``)
mounting and unmounting it against the moto server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import run_vfs
from test_read_path import put_s3, write_manifest

from vfs.cli.deadline_vfs import (
    LAUNCH_SCRIPT,
    UsageError,
    install_layout,
    overlay_dir,
    translate,
)
from vfs.mount.launch import is_mounted
from vfs.testing.mounts import unmount_path

ROOT = str(Path(__file__).resolve().parents[1])

AGENT_ARGS = [
    "/sess/assetroot-1", "-f", "--clienttype=deadline", "--bucket=bkt",
    "--manifest=/sess/.vfs_manifests/deadline-merged-manifest-x.json", "--region=us-west-2",
    "-oallow_other", "--casprefix=DeadlineCloud/Data", "--cachedir=/sess/.vfs_object_cache",
]  # fmt: skip


def test_the_agents_arguments_translate() -> None:
    args, env = translate(AGENT_ARGS, {})
    overlay = overlay_dir("/sess/.vfs_object_cache", "/sess/assetroot-1",
                          "/sess/.vfs_manifests/deadline-merged-manifest-x.json")  # fmt: skip
    assert args == [
        "-v", "mount", "/sess/assetroot-1", "--foreground", "--store", "s3://bkt/DeadlineCloud",
        "--manifest", "/sess/.vfs_manifests/deadline-merged-manifest-x.json",
        "--writable", "--overlay-dir", overlay, "-o", "allow_other",
    ]  # fmt: skip
    assert overlay.startswith("/sess/.vfs_object_cache/vfs-overlay/assetroot-1-")
    assert env == {"AWS_DEFAULT_REGION": "us-west-2"}
    shared, _ = translate(AGENT_ARGS, {"DEADLINE_VFS_CACHE": "/var/cache/vfs"})
    assert shared[-7:-5] == ["--cache-dir", "/var/cache/vfs"]  # not the per-session dir
    bare, _ = translate(["/m", "--bucket", "b", "--manifest", "/x", "--casprefix=Data"], {})
    assert bare[4:6] == ["--store", "s3://b"]
    assert "--writable" not in bare  # no per-session dir for writes: read-only


def test_the_overlay_follows_the_mount_point_and_the_manifests_content(tmp_path: Path) -> None:
    """A remount of the same merged manifest (a restart after kill -9) finds its writes
    again; another manifest (handle_existing_vfs merged new inputs) or another mount point
    gets an overlay of its own, in the per-session cache dir."""
    a, b, c = (tmp_path / n for n in ("a.json", "b.json", "c.json"))
    a.write_text("one")
    b.write_text("one")  # the same content under another (random) name
    c.write_text("two")
    cache = str(tmp_path / "cache")
    assert overlay_dir(cache, "/s/root-1", str(a)) == overlay_dir(cache, "/s/root-1", str(b))
    assert overlay_dir(cache, "/s/root-1", str(a)) != overlay_dir(cache, "/s/root-1", str(c))
    assert overlay_dir(cache, "/s/root-1", str(a)) != overlay_dir(cache, "/s/root-2", str(a))
    assert os.path.dirname(overlay_dir(cache, "/s/root-1", str(a))) == f"{cache}/vfs-overlay"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bucket=b", "--manifest=/m"], "one mount point"),
        (["/m", "--manifest=/m"], "--bucket is required"),
        (["/m", "--bucket=b", "--manifest=/m", "--clienttype=other"], "only 'deadline'"),
    ],
)
def test_arguments_the_agent_would_not_give_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        translate(argv, {})


def test_install_writes_the_layout_the_agent_looks_for(tmp_path: Path) -> None:
    run_vfs("install-deadline-vfs", str(tmp_path / "dv"))
    root = tmp_path / "dv"
    for rel in ("bin/deadline_vfs", LAUNCH_SCRIPT):
        assert os.access(root / rel, os.X_OK), rel
    assert os.path.realpath(root / "link/fusermount3").endswith("fusermount3")
    assert (root / "lib").is_dir()
    usage = subprocess.run([root / LAUNCH_SCRIPT], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "deadline_vfs: give exactly one mount point" in usage.stderr


DRIVER = """
import json, os, sys
from pathlib import Path
from deadline.job_attachments.vfs import VFSProcessManager
session, point, manifest, bucket, env = sys.argv[1:6]
vfs = VFSProcessManager(bucket, "us-west-2", manifest, point, "root", json.loads(env),
                        cas_prefix="DeadlineCloud/Data",
                        asset_cache_path=str(Path(session) / ".vfs_object_cache"))
vfs.start(Path(session))  # raises VFSFailedToMountError unless findmnt sees it within 60 s
print(json.dumps({"files": {p: Path(point, p).read_bytes().hex() for p in sys.argv[6:]}}))
VFSProcessManager.kill_all_processes(Path(session), "root")
print(json.dumps({"mounted_after_kill": VFSProcessManager.is_mount(point)}))
"""


def test_the_agents_launcher_mounts_and_unmounts_vfs(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, s3_client: object
) -> None:
    """The agent's code path end to end (as root: this machine's job user could not run the
    checkout's Python): install, start through the launch script with the agent's
    arguments and environment, poll findmnt, read, then kill_all_processes (fusermount3 -u
    from link/)."""
    files = {"scene/a.bin": os.urandom(200_000), "tex/b.exr": os.urandom(5000)}
    put_s3(s3_client, s3_bucket, "DeadlineCloud", files)
    manifest = write_manifest(tmp_path / "merged.json", files)
    # As `vfs install-deadline-vfs` does, but running this checkout: sudo drops PYTHONPATH.
    fusermount = shutil.which("fusermount3")
    assert fusermount is not None
    install_layout(str(tmp_path / "dv"), sys.executable, fusermount, pythonpath=ROOT)
    session = tmp_path / "session"
    session.mkdir()
    point = session / "assetroot-1"
    env = {
        "AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_PROFILE_UNUSED": "queue-role",
        "VFS_CACHE_DIR": str(tmp_path / "shared-cache"), "HOME": str(tmp_path),
    }  # fmt: skip
    try:
        out = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(DRIVER), str(session), str(point),
             str(manifest), s3_bucket, json.dumps(env), *files],
            capture_output=True, text=True, timeout=180,
            env={**os.environ, "DEADLINE_VFS_PATH": str(tmp_path / "dv")},
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        assert {p: bytes.fromhex(h) for p, h in lines[0]["files"].items()} == files
        assert lines[1] == {"mounted_after_kill": False}
        assert (tmp_path / "shared-cache").is_dir()  # the node's cache, not the session's
        assert "vfs_pids.txt" not in os.listdir(session)
    finally:
        if is_mounted(str(point)):
            unmount_path(str(point), None, ["fusermount3", "-u", str(point)])
