"""``deadline_vfs``: vfs under the name and arguments the Deadline Cloud worker agent uses.

The agent (``deadline.job_attachments.vfs.VFSProcessManager``, reference/job-attachments.md
§9.3) runs, per asset root, ``run_deadline_vfs_al2.sh MOUNT -f --clienttype=deadline
--bucket=B --manifest=FILE --region=R -oallow_other --casprefix=ROOT/Data
--cachedir=SESSION/.vfs_object_cache`` and then polls ``findmnt MOUNT`` for 60 s; at session
end it runs ``link/fusermount3 -u MOUNT`` and never signals the process (§9.5).

Translation to ``vfs mount MOUNT --foreground --store s3://B/ROOT --manifest FILE
--writable --overlay-dir CACHEDIR/vfs-overlay/NAME …``:

* ``--casprefix=ROOT/Data`` gives the store's root prefix ``ROOT`` (the ``/Data`` suffix is
  where vfs looks anyway); ``--region`` becomes ``AWS_DEFAULT_REGION``.
* The block cache is the node's shared one, not the per-session ``--cachedir`` (which the
  agent deletes with the session): ``$DEADLINE_VFS_CACHE`` if set, else ``$VFS_CACHE_DIR``,
  else vfs's default for the user. Logs go to stderr, which the agent copies line by line
  into the session log.
* The mount is writable, because the job writes its outputs into it: the worker's upload
  step (``attachment_upload.py``, reference §8.4/§9.4) finds them by globbing the output
  directories through the mount and diffing size/mtime against the input manifest. The
  writes land in an overlay in the per-session ``--cachedir``
  (:func:`overlay_dir`: ``CACHEDIR/vfs-overlay/<mount point name>-<key>``), so they live
  exactly as long as the session: the agent runs the upload step after each task, before
  ``kill_all_processes``, and deletes the session directory (with the overlay) at the end;
  nothing accumulates in the node's shared cache. The agent makes ``CACHEDIR`` group-writable
  for the job user's group before launching (deadline's ``mount_vfs_from_manifests`` →
  ``_set_fs_group`` on ``CACHEDIR/ROOT/Data`` and its parents up to ``CACHEDIR``), so the
  daemon, running as the job user, can create the overlay there.
  The key is the xxh128 of the mount point and of the manifest file's content: a remount
  with the same merged manifest (a restart after ``kill -9``) finds the earlier writes
  again, while a remount with another manifest (``handle_existing_vfs`` merging new inputs,
  §9.3) gets a new, empty overlay (an overlay is only ever reopened over the base it was
  made on); the earlier writes were uploaded by then. Without ``--cachedir`` (the agent
  always passes it) the mount is read-only: there is no per-session place for writes.
* ``-o OPTION`` / ``-oOPTION`` are FUSE options; ``-f`` (foreground) is what vfs does here
  anyway; ``--clienttype`` must be ``deadline``.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence

from vfs.defaults import CACHE_DIR_ENV
from vfs.hashing import hash_bytes, hash_file

DEADLINE_CACHE_ENV = "DEADLINE_VFS_CACHE"
"""The agent copies this from its own environment into the VFS's (§9.3)."""


OVERLAY_SUBDIR = "vfs-overlay"
"""Where the overlays of writable mounts go under the agent's per-session ``--cachedir``."""


class UsageError(Exception):
    """Arguments the agent would not give."""


def translate(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """``vfs`` arguments and extra environment for a ``deadline_vfs`` invocation ``argv``
    (without the program name). Raises :class:`UsageError`."""
    values: dict[str, str] = {}
    fuse: list[str] = []
    positional: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-f", "--foreground", "-d", "--debug"):
            continue
        if arg == "-o":
            if not args:
                raise UsageError("-o needs a value")
            fuse += args.pop(0).split(",")
        elif arg.startswith("-o"):
            fuse += arg[2:].split(",")
        elif arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if not eq:
                if not args:
                    raise UsageError(f"--{name} needs a value")
                value = args.pop(0)
            values[name] = value
        else:
            positional.append(arg)
    if len(positional) != 1:
        raise UsageError("give exactly one mount point (the first argument)")
    if values.get("clienttype", "deadline") != "deadline":
        raise UsageError(f"--clienttype={values['clienttype']}: only 'deadline' is supported")
    for name in ("bucket", "manifest"):
        if not values.get(name):
            raise UsageError(f"--{name} is required")
    prefix = values.get("casprefix", "").strip("/")
    prefix = prefix[: -len("Data")].rstrip("/") if prefix.endswith("Data") else prefix
    store = f"s3://{values['bucket']}/{prefix}" if prefix else f"s3://{values['bucket']}"
    out = ["-v", "mount", positional[0], "--foreground", "--store", store,
           "--manifest", values["manifest"]]  # fmt: skip
    cache = environ.get(DEADLINE_CACHE_ENV) or environ.get(CACHE_DIR_ENV)
    if cache:
        out += ["--cache-dir", cache]
    if values.get("cachedir"):
        out += ["--writable", "--overlay-dir",
                overlay_dir(values["cachedir"], positional[0], values["manifest"])]  # fmt: skip
    if fuse:
        out += ["-o", ",".join(filter(None, fuse))]
    env = {"AWS_DEFAULT_REGION": values["region"]} if values.get("region") else {}
    return out, env


def overlay_dir(cachedir: str, mountpoint: str, manifest: str) -> str:
    """The overlay of the writable mount of ``manifest`` at ``mountpoint`` in the agent's
    per-session ``cachedir``: ``{cachedir}/vfs-overlay/{name}-{key}``, ``name`` the mount
    point's last component, ``key`` 16 hex digits of the xxh128 of the absolute mount point
    and of the manifest file's xxh128 (the module docstring says why). An unreadable manifest
    gets a key all the same; ``vfs mount`` then reports the manifest's problem."""
    point = os.path.abspath(mountpoint)
    try:
        content = hash_file(manifest)
    except OSError:
        content = "unreadable"
    key = hash_bytes(os.fsencode(point) + b"\0" + content.encode())[:16]
    name = os.path.basename(point) or "root"
    return os.path.join(os.path.abspath(cachedir), OVERLAY_SUBDIR, f"{name}-{key}")


LAUNCH_SCRIPT = "scripts/production/al2/run_deadline_vfs_al2.sh"
"""Where the agent looks for the launch script under ``DEADLINE_VFS_PATH`` (§9.2)."""


def install_layout(directory: str, python: str, fusermount: str, pythonpath: str = "") -> None:
    """Write the layout the agent looks for under ``directory`` (reference §9.2):
    ``bin/deadline_vfs`` (runs this module with ``python``), the launch script,
    ``link/fusermount3`` (a symlink to ``fusermount``) and an empty ``lib/``. Files are
    replaced; raises ``OSError``."""
    root = os.path.abspath(directory)
    for sub in ("bin", "link", "lib", os.path.dirname(LAUNCH_SCRIPT)):
        os.makedirs(os.path.join(root, sub), mode=0o755, exist_ok=True)
    env = f"PYTHONPATH={shlex.quote(pythonpath)} " if pythonpath else ""
    scripts = {
        "bin/deadline_vfs": f'{env}exec {shlex.quote(python)} -m vfs.cli.deadline_vfs "$@"',
        LAUNCH_SCRIPT: 'exec "$(dirname "$0")/../../../bin/deadline_vfs" "$@"',
    }
    for rel, body in scripts.items():
        path = os.path.join(root, rel)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(f"#!/bin/sh\n# written by vfs install-deadline-vfs\n{body}\n")
        os.chmod(path + ".tmp", 0o755)
        os.replace(path + ".tmp", path)
    link = os.path.join(root, "link", "fusermount3")
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(fusermount, link)


def main() -> None:
    """Run as ``deadline_vfs``: translate and exec ``vfs mount`` (exit status: vfs's)."""
    try:
        args, env = translate(sys.argv[1:], os.environ)
    except UsageError as e:
        sys.stderr.write(f"deadline_vfs: {e}\n")
        raise SystemExit(2) from None
    os.environ.update(env)
    os.execv(sys.executable, [sys.executable, "-m", "vfs", *args])


if __name__ == "__main__":
    main()
