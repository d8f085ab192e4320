"""The render node end to end (issue 10's main test), with the real packages against the moto
server: deadline's own ``mount_vfs_from_manifests`` / ``VFSProcessManager`` launch our
installed ``deadline_vfs`` layout as the worker agent does (``sudo -E -u USER
run_deadline_vfs_al2.sh MOUNT -f …``, then 60 s of ``findmnt`` polls), a task reads its
inputs and writes outputs into the mount, the worker agent's own ``attachment_upload.py``
uploads them (reference/job-attachments.md §8.4), a second download action remounts
through ``handle_existing_vfs`` (§9.3), and ``kill_all_processes`` unmounts (§9.5).

The job user is root: a non-root job user cannot run this checkout's Python on this machine
(the venv's interpreter lives under ``/root``, mode 0700), so ``sudo -u`` another job user
is not exercised. Every mount is unmounted and every daemon ended by the fixture, pass
or fail.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_tool
from test_read_path import put_s3, write_manifest

from vfs.cli.deadline_vfs import OVERLAY_SUBDIR, install_layout
from vfs.hashing import hash_bytes, hash_string
from vfs.manifest import decode_manifest
from vfs.mount.launch import is_mounted
from vfs.storage import data_key
from vfs.testing.mounts import unmount_path, wait_exit

ROOT = Path(__file__).resolve().parents[1]
COMPAT = Path(__file__).resolve().parent / "compat"
PREFIX = "DeadlineCloud"
SOURCE_ROOT = "/projects/shot"
"""The asset root's path on the submitting machine (the manifest's ``rootPath``)."""
UPLOAD_SCRIPT = "deadline_worker_agent/sessions/actions/scripts/attachment_upload.py"
POLL = 60.0
"""The agent's ``wait_for_mount``: one ``findmnt`` a second for 60 s."""


def worker_agent_dir() -> str:
    """The unpacked ``deadline-cloud-worker-agent`` wheel scripts/bootstrap provides
    (``$VFS_WORKER_AGENT_DIR``, else one under this venv's ``share/``)."""
    candidates = [os.environ.get("VFS_WORKER_AGENT_DIR", "")]
    candidates += sorted(glob.glob(os.path.join(sys.prefix, "share", "deadline-worker-agent-*")))
    for d in candidates:
        if d and os.path.isfile(os.path.join(d, UPLOAD_SCRIPT)):
            return d
    why = "the worker agent's attachment_upload.py is not unpacked (scripts/bootstrap does it)"
    if os.environ.get("VFS_TEST_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{why}; VFS_TEST_REQUIRE_TOOLS=1 requires it", pytrace=False)
    pytest.skip(why)


def daemons(point: Path) -> list[int]:
    """Pids of the vfs daemons serving ``point`` (found by their command lines)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"--foreground" in args and os.fsencode(point) in args and b"mount" in args:
            found.append(int(entry))
    return found


def no_daemons_left(point: Path, timeout: float = 15) -> bool:
    """Wait for the daemons of ``point`` to exit (an unmounted daemon first finishes its
    cache writes); True when none is left."""
    deadline = time.monotonic() + timeout
    while daemons(point):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def pid_file_lines(session: Path) -> list[list[str]]:
    """``[mount point, pid, manifest]`` of each line of the agent's ``vfs_pids.txt``."""
    text = (session / "vfs_pids.txt").read_text()
    return [line.split(":") for line in text.splitlines() if line]


class Agent:
    """The worker agent's VFS side in a process of its own (tests/compat/agent_vfs.py)."""

    def __init__(self, tmp: Path, endpoint: str, bucket: str) -> None:
        self.session = tmp / "session"
        self.session.mkdir()
        self.point = self.session / "assetroot-1"
        self.layout = tmp / "deadline_vfs"
        self.shared_cache = tmp / "shared-cache"
        fusermount = shutil.which("fusermount3")
        assert fusermount is not None
        # The layout runs this checkout (sudo drops PYTHONPATH from the environment).
        install_layout(str(self.layout), sys.executable, fusermount, pythonpath=str(ROOT))
        vfs_env = {
            "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp / "aws-config"), "HOME": str(tmp),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "aws-credentials"),
            "VFS_CACHE_DIR": str(self.shared_cache),
        }  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, str(COMPAT / "agent_vfs.py"), str(self.session), str(self.point),
             bucket, json.dumps(vfs_env)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "DEADLINE_VFS_PATH": str(self.layout)},
        )  # fmt: skip

    def do(self, op: str, **args: str) -> dict[str, Any]:
        """Run one agent command; fail the test (with the agent's log) when deadline raised."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        reply: dict[str, Any] = json.loads(line) if line else {"error": "the agent died"}
        assert "error" not in reply, f"{op}: {reply['error']}\n{self.log()[-4000:]}"
        return reply

    def log(self) -> str:
        path = self.session / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        """End the agent, then whatever it left: mounts (``fusermount3 -u``, then abort and
        lazy unmount) and daemons."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        pids = daemons(self.point)
        if is_mounted(str(self.point)):
            unmount_path(str(self.point), pids[0] if pids else None,
                         ["fusermount3", "-u", str(self.point)])  # fmt: skip
        for pid in daemons(self.point):
            os.kill(pid, signal.SIGKILL)
            wait_exit(pid, 10)


@pytest.fixture()
def agent(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> Iterator[Agent]:
    require_tool("sudo", "sudo")
    a = Agent(tmp_path, s3_endpoint, s3_bucket)
    try:
        yield a
    finally:
        a.close()
    assert not is_mounted(str(a.point))
    assert "Traceback" not in a.log(), a.log()[-4000:]


def read_all(point: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    return {p: (point / p).read_bytes() for p in files}


INPUTS_SEED = {
    "scene/shot.blend": 300_000,
    "tex/wood.exr": 70_000,
    "out/frame_0001.exr": 20_000,  # an earlier frame: an input under the output directory
    "out/frame_0002.exr": 20_000,  # re-rendered by the task
}


def upload_outputs(tmp: Path, agent_dir: str, endpoint: str, bucket: str,
                   point: Path, manifests: list[Path]) -> list[dict[str, str]]:  # fmt: skip
    """The agent's upload step after a task: the worker's own attachment_upload.py with the
    agent's arguments and environment (§8.4), in a working directory of its own. Returns
    the ``ja_upload:`` list it printed."""
    work = tmp / "upload-action"
    work.mkdir(exist_ok=True)
    properties = work / "worker_manifest_properties.json"
    properties.write_text(json.dumps([{
        "manifestProperties": {
            "rootPath": SOURCE_ROOT, "rootPathFormat": "posix",
            "outputRelativeDirectories": ["out"],
        },
        "localManifestPaths": [str(m) for m in manifests],
        "localRootPath": str(point),
    }]))  # fmt: skip
    env = {
        **os.environ, "AWS_ENDPOINT_URL": endpoint, "HOME": str(tmp / "job-home"),
        "DEADLINE_FARM_ID": "farm-1", "DEADLINE_QUEUE_ID": "queue-1",
        "DEADLINE_JOB_ID": "job-1", "DEADLINE_STEP_ID": "step-1", "DEADLINE_TASK_ID": "task-1",
        "DEADLINE_SESSIONACTION_ID": "sessionaction-1-1",
        "DEADLINE_SESSIONACTION_START_TIME": str(time.time()), "PYTHONIOENCODING": "utf-8",
    }  # fmt: skip
    out = subprocess.run(
        [sys.executable, str(COMPAT / "worker_agent.py"), agent_dir, "upload",
         "-s3", f"s3://{bucket}/{PREFIX}", "-wp", str(properties)],
        capture_output=True, text=True, timeout=120, cwd=work, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("ja_upload: ")]
    assert len(lines) == 1, out.stdout[-3000:]
    uploaded: list[dict[str, str]] = json.loads(lines[0].removeprefix("ja_upload: "))
    return uploaded


def keys(s3_client: Any, bucket: str, prefix: str) -> set[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def test_a_task_on_the_mount_and_the_workers_upload(
    tmp_path: Path, agent: Agent, s3_endpoint: str, s3_bucket: str, s3_client: Any
) -> None:
    agent_dir = worker_agent_dir()
    inputs = {p: os.urandom(n) for p, n in INPUTS_SEED.items()}
    put_s3(s3_client, s3_bucket, PREFIX, inputs)
    job_manifest = write_manifest(tmp_path / "job_manifest.json", inputs)
    base = {e.path: e for e in decode_manifest(job_manifest.read_bytes()).paths}

    took = agent.do("mount", manifest=str(job_manifest))["seconds"]
    assert took < POLL / 4, f"the mount took {took:.1f} s of the agent's {POLL:.0f} s poll"
    [first] = daemons(agent.point)
    with open(f"/proc/{first}/environ", "rb") as f:  # the layout runs this checkout
        assert f"PYTHONPATH={ROOT}".encode() in f.read().split(b"\0")

    # The task: reads its inputs, renders into out/, leaves scratch outside it.
    point = agent.point
    assert read_all(point, inputs) == inputs
    outputs = {
        "out/frame_0002.exr": os.urandom(20_000),  # same size: only the mtime tells
        "out/frame_0003.exr": os.urandom(50_000),
        "out/passes/depth.exr": os.urandom(9_000),
    }
    (point / "out/passes").mkdir()
    (point / "scratch").mkdir()
    (point / "scratch/render.log").write_text("not an output")
    for p, data in outputs.items():
        (point / p).write_bytes(data)
    for p in ("scene/shot.blend", "tex/wood.exr", "out/frame_0001.exr"):
        st = os.stat(point / p)  # untouched inputs keep the manifest's size and mtime
        assert (st.st_size, st.st_mtime_ns // 1000) == (base[p].size, base[p].mtime), p

    data_before = keys(s3_client, s3_bucket, f"{PREFIX}/Data/")
    [info] = upload_outputs(tmp_path, agent_dir, s3_endpoint, s3_bucket, point, [job_manifest])
    assert info["source_path"] == SOURCE_ROOT
    manifest_keys = keys(s3_client, s3_bucket, f"{PREFIX}/Manifests/")
    assert manifest_keys == {f"{PREFIX}/Manifests/{info['output_manifest_path']}"}
    assert info["output_manifest_path"].startswith("farm-1/queue-1/job-1/step-1/task-1/")
    assert info["output_manifest_path"].endswith(f"/{hash_string(SOURCE_ROOT)}_output")
    body = s3_client.get_object(Bucket=s3_bucket, Key=manifest_keys.pop())["Body"].read()
    uploaded = {e.path: (e.hash, e.size) for e in decode_manifest(body).paths}
    # Exactly the task's outputs: not the untouched frame_0001 under out/, not scratch/.
    assert uploaded == {p: (hash_bytes(d), len(d)) for p, d in outputs.items()}
    new_keys = keys(s3_client, s3_bucket, f"{PREFIX}/Data/") - data_before
    assert new_keys == {f"{PREFIX}/{data_key(hash_bytes(d))}" for d in outputs.values()}
    for data in outputs.values():
        key = f"{PREFIX}/{data_key(hash_bytes(data))}"
        assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == data

    # A second download action (new inputs, e.g. a dependency's outputs) on the mounted
    # point: handle_existing_vfs merges the running mount's manifest with the new one,
    # unmounts it and starts a new VFS.
    deps = {"deps/sim.abc": os.urandom(40_000)}
    put_s3(s3_client, s3_bucket, PREFIX, deps)
    deps_manifest = write_manifest(tmp_path / "deps_manifest.json", deps)
    [[_, _, first_manifest]] = pid_file_lines(agent.session)
    agent.do("mount", manifest=str(deps_manifest))
    assert wait_exit(first, 10), "the first daemon outlived its unmount"
    [[mount, _, merged]] = pid_file_lines(agent.session)
    assert (mount, merged != first_manifest) == (str(point), True)
    assert read_all(point, {**inputs, **deps}) == {**inputs, **deps}
    # A new base gets a new overlay: the first mount's outputs were uploaded and are gone.
    assert not (point / "out/frame_0003.exr").exists()
    assert len(os.listdir(agent.session / ".vfs_object_cache" / OVERLAY_SUBDIR)) == 2

    agent.do("kill")
    assert not is_mounted(str(point))
    assert not (agent.session / "vfs_pids.txt").exists()
    assert no_daemons_left(point)
    assert agent.shared_cache.is_dir()  # the node's block cache, kept after the session


def test_the_agent_remounts_a_point_whose_daemon_was_killed(
    tmp_path: Path, agent: Agent, s3_bucket: str, s3_client: Any
) -> None:
    """The same merged manifest finds the same overlay: what the task wrote survives a live
    remount (``handle_existing_vfs``) and ``kill -9`` of the daemon. A killed daemon leaves a
    dead mount that ``findmnt`` still lists: the agent's next download action unmounts it
    (``handle_existing_vfs``: ``link/fusermount3 -u``) and launches vfs again; the agent's
    launch command run on it without that step finds vfs cleaning it itself
    (vfs/mount/preflight.py)."""
    inputs = {"scene/shot.blend": os.urandom(100_000), "tex/a.exr": os.urandom(3000)}
    put_s3(s3_client, s3_bucket, PREFIX, inputs)
    job_manifest = write_manifest(tmp_path / "job_manifest.json", inputs)
    agent.do("mount", manifest=str(job_manifest))
    point = agent.point
    (point / "out").mkdir()
    (point / "out/frame.exr").write_bytes(b"frame 1")
    # A download action bringing the same inputs remounts over the same overlay.
    [before] = daemons(point)
    agent.do("mount", manifest=str(job_manifest))
    assert wait_exit(before, 10)
    assert (point / "out/frame.exr").read_bytes() == b"frame 1"
    [pid] = daemons(point)
    os.kill(pid, signal.SIGKILL)
    assert wait_exit(pid, 10)
    with pytest.raises(OSError) as dead:
        os.statvfs(point)
    assert dead.value.errno in (errno.ENOTCONN, errno.ECONNABORTED) and is_mounted(str(point))

    agent.do("mount", manifest=str(job_manifest))
    [new] = daemons(point)
    assert new != pid
    assert read_all(point, inputs) == inputs
    assert (point / "out/frame.exr").read_bytes() == b"frame 1"

    # Killed again, then the agent's launch command run on the dead point without
    # handle_existing_vfs: vfs itself lazily unmounts the dead mount before mounting.
    # (findmnt lists the dead mount, so the agent's poll would pass at once: wait for ours.)
    os.kill(new, signal.SIGKILL)
    assert wait_exit(new, 10)
    [[_, _, merged]] = pid_file_lines(agent.session)
    agent.do("launch", manifest=merged)
    assert answers(point), agent.log()[-3000:]
    assert read_all(point, inputs) == inputs
    assert (point / "out/frame.exr").read_bytes() == b"frame 1"
    assert "was a dead mount" in agent.log()
    agent.do("kill")
    assert not is_mounted(str(point)) and no_daemons_left(point)


def answers(point: Path, timeout: float = 20) -> bool:
    """Wait until a mount at ``point`` answers ``statvfs`` (a dead one fails ENOTCONN; between
    the dead one's unmount and the new mount, ``point`` is a plain directory)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.statvfs(point)
            if is_mounted(str(point)):
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False
