"""The worker agent's VFS side, driven one command at a time: deadline's own
``mount_vfs_from_manifests`` / ``VFSProcessManager`` (package ``deadline``), as the agent
calls them (reference/job-attachments.md §9).

Usage: ``python agent_vfs.py SESSION_DIR MOUNT_POINT BUCKET ENV_JSON`` with
``DEADLINE_VFS_PATH`` set to the installed layout. The process lives as long as the agent
would: the VFS it launches writes its log into a pipe this process reads (into
``SESSION_DIR/agent.log``). Commands, one JSON object per line on stdin; one JSON reply per
line on stdout (``{"error": "Type: message"}`` when deadline raised):

* ``{"op": "mount", "manifest": FILE}``: ``mount_vfs_from_manifests`` of the manifest at
  MOUNT_POINT (the agent's download action; a second call on a mounted point goes through
  ``handle_existing_vfs``); replies ``{"seconds": time it took}``;
* ``{"op": "launch", "manifest": FILE}``: only the launch of ``VFSProcessManager.start``:
  deadline's own ``build_launch_command`` and ``get_launch_environ``, run as ``start`` runs
  them (``shell=True``, bash, cwd the session, output into the log), without the
  ``findmnt`` poll and without ``create_mount_point`` (whose ``os.path.exists`` is False on
  a dead mount when the kernel has no cached attributes, so its ``makedirs`` then raises
  ``FileExistsError`` before anything is launched); replies ``{}``;
* ``{"op": "kill"}``: ``VFSProcessManager.kill_all_processes`` (session end); replies ``{}``;
* ``{"op": "exit"}``.

The job user is ``root``: a non-root job user cannot run this checkout's Python here (the
venv's interpreter lives under ``/root``, mode 0700: ``sudo -u nobody .venv/bin/python``
fails with "Permission denied").
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3
from deadline.job_attachments.asset_manifests.decode import decode_manifest
from deadline.job_attachments.download import mount_vfs_from_manifests
from deadline.job_attachments.os_file_permission import PosixFileSystemPermissionSettings
from deadline.job_attachments.vfs import VFSProcessManager

USER = GROUP = "root"
REGION = "us-west-2"
CAS_PREFIX = "DeadlineCloud/Data"


LAUNCHED: list[subprocess.Popen[bytes]] = []


def _copy_output(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        logging.getLogger("launched").info(line.decode(errors="replace").rstrip())


def run(command: dict[str, Any], session: Path, point: str, bucket: str,
        env: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    op = command["op"]
    started = time.monotonic()
    if op == "mount":
        manifest = decode_manifest(Path(command["manifest"]).read_text(encoding="utf-8"))
        mount_vfs_from_manifests(
            s3_bucket=bucket,
            manifests_by_root={point: manifest},
            boto3_session=boto3.Session(region_name=REGION),
            session_dir=session,
            os_env_vars=env,
            # The agent's settings for a job user (worker agent sessions/session.py).
            fs_permission_settings=PosixFileSystemPermissionSettings(
                os_user=USER, os_group=GROUP, dir_mode=0o20, file_mode=0o20
            ),
            cas_prefix=CAS_PREFIX,
        )
    elif op == "launch":
        vfs = VFSProcessManager(
            bucket, REGION, command["manifest"], point, USER, env, GROUP, CAS_PREFIX,
            str(session / ".vfs_object_cache"),
        )  # fmt: skip
        proc = subprocess.Popen(
            vfs.build_launch_command(point), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=str(session), env=vfs.get_launch_environ(), shell=True, executable="/bin/bash",
        )  # fmt: skip
        LAUNCHED.append(proc)
        threading.Thread(target=_copy_output, args=(proc,), daemon=True).start()
        return {}
    elif op == "kill":
        VFSProcessManager.kill_all_processes(session, USER)
        return {}
    else:
        raise ValueError(f"unknown op {op!r}")
    return {"seconds": time.monotonic() - started}


def main() -> None:
    session, point, bucket, env_json = sys.argv[1:5]
    logging.basicConfig(
        filename=os.path.join(session, "agent.log"),
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    env = json.loads(env_json)
    # Replies keep the real stdout; everything else printing there (deadline's findmnt
    # calls) goes to stderr.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "exit":
            break
        try:
            reply = run(command, Path(session), point, bucket, env)
        except Exception as e:
            logging.exception("command %s failed", command)
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), file=replies, flush=True)


if __name__ == "__main__":
    main()
