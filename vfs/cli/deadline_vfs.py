"""``deadline_vfs``: vfs under the name and arguments the Deadline Cloud worker agent uses.

The agent (``deadline.job_attachments.vfs.VFSProcessManager``, reference/job-attachments.md
§9.3) runs, per asset root, ``run_deadline_vfs_al2.sh MOUNT -f --clienttype=deadline
--bucket=B --manifest=FILE --region=R -oallow_other --casprefix=ROOT/Data
--cachedir=SESSION/.vfs_object_cache`` and then polls ``findmnt MOUNT`` for 60 s; at session
end it runs ``link/fusermount3 -u MOUNT`` and never signals the process (§9.5).

Translation to ``vfs mount MOUNT --foreground --store s3://B/ROOT --manifest FILE …``:

* ``--casprefix=ROOT/Data`` gives the store's root prefix ``ROOT`` (the ``/Data`` suffix is
  where vfs looks anyway); ``--region`` becomes ``AWS_DEFAULT_REGION``.
* The block cache is the node's shared one, not the per-session ``--cachedir`` (which the
  agent deletes with the session): ``$DEADLINE_VFS_CACHE`` if set, else ``$VFS_CACHE_DIR``,
  else vfs's default for the user. Logs go to stderr, which the agent copies line by line
  into the session log.
* ``-o OPTION`` / ``-oOPTION`` are FUSE options; ``-f`` (foreground) is what vfs does here
  anyway; ``--clienttype`` must be ``deadline``.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence

from vfs.defaults import CACHE_DIR_ENV

DEADLINE_CACHE_ENV = "DEADLINE_VFS_CACHE"
"""The agent copies this from its own environment into the VFS's (§9.3)."""


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
    if fuse:
        out += ["-o", ",".join(filter(None, fuse))]
    env = {"AWS_DEFAULT_REGION": values["region"]} if values.get("region") else {}
    return out, env


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
