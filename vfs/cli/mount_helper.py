"""``mount.fuse.vfs``: lets ``mount -t fuse.vfs`` and ``/etc/fstab`` mount vfs.

mount(8) runs ``/sbin/mount.fuse.vfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`` for file
systems of type ``fuse.vfs`` (util-linux's external helper convention, as ``mount.fuse3``
and ``mount.s3fs`` use it). SOURCE is the store URI; the options carry the rest::

    # SOURCE                   MOUNTPOINT   TYPE      OPTIONS (one comma-separated word)
    s3://bucket/DeadlineCloud  /mnt/assets  fuse.vfs  manifest=/etc/vfs/shot.manifest,\
        cache_dir=/var/cache/vfs,allow_other,_netdev,x-systemd.automount  0 0

Translation to ``vfs mount MOUNTPOINT --store SOURCE …`` (which returns once the mount
answers, as mount(8) expects):

* ``name=value`` for a ``vfs mount`` option (``manifest`` may repeat; ``_`` or ``-`` in the
  name) becomes ``--name value``;
* options meant for mount(8) or systemd (``_netdev``, ``nofail``, ``noauto``, ``auto``,
  ``user``, ``users``, ``owner``, ``group``, ``defaults``, ``rw``, ``x-*``, ``comment=*``)
  are dropped;
* anything else is a FUSE option, passed as ``-o`` (``allow_other``, ``default_permissions``…).

``-f`` (fake) prints the command instead of running it; ``-v`` makes ``vfs`` verbose; ``-s``
and ``-n`` are accepted and ignored. Install with
``ln -s /opt/vfs/bin/mount.fuse.vfs /sbin/mount.fuse.vfs``.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence

VALUE_OPTIONS = frozenset(
    {
        "manifest", "cache-dir", "cache-size", "min-free-ratio", "max-memory", "max-fetches",
        "fetch-timeout", "verify", "prefetch", "log-file", "endpoint-url",
        "expected-bucket-owner",
    }
)  # fmt: skip
"""``vfs mount`` options that may be given as ``name=value`` mount options."""

MOUNT_ONLY = frozenset(
    {"_netdev", "nofail", "noauto", "auto", "user", "users", "owner", "group", "defaults", "rw"}
)
"""Options for mount(8) or systemd, not for the file system."""


class UsageError(Exception):
    """The helper was called with arguments mount(8) would not give."""


def translate(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``vfs`` arguments for a helper invocation ``argv`` (without the program name), and
    whether ``-f`` (fake) was given. Raises :class:`UsageError`."""
    positional: list[str] = []
    options: list[str] = []
    fake = verbose = False
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "-o":
            if not args:
                raise UsageError("-o needs a value")
            options += args.pop(0).split(",")
        elif arg.startswith("-o"):
            options += arg[2:].split(",")
        elif arg.startswith("-") and len(arg) > 1:
            for flag in arg[1:]:
                if flag == "f":
                    fake = True
                elif flag == "v":
                    verbose = True
                elif flag not in "sn":
                    raise UsageError(f"unknown flag -{flag}")
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise UsageError("give SOURCE (the store URI) and MOUNTPOINT")
    source, mountpoint = positional
    out = ["-v"] if verbose else []
    out += ["mount", mountpoint, "--store", source]
    fuse: list[str] = []
    for option in filter(None, options):
        name, eq, value = option.partition("=")
        key = name.replace("_", "-")
        if key in VALUE_OPTIONS and eq:
            out += [f"--{key}", value]
        elif name in MOUNT_ONLY or name.startswith("x-") or name == "comment":
            continue
        elif key in VALUE_OPTIONS:
            raise UsageError(f"mount option {name} needs a value ({name}=…)")
        else:
            fuse.append(option)
    if "--manifest" not in out:
        raise UsageError("give the manifest(s) as mount options: manifest=PATH[,manifest=…]")
    if fuse:
        out += ["-o", ",".join(fuse)]
    return out, fake


def main() -> None:
    """Run as ``mount.fuse.vfs``: translate and exec ``vfs`` (exit status: vfs's)."""
    try:
        args, fake = translate(sys.argv[1:])
    except UsageError as e:
        sys.stderr.write(
            f"mount.fuse.vfs: {e}\nusage: mount.fuse.vfs STORE_URI MOUNTPOINT "
            "-o manifest=PATH[,OPTION…]\n"
        )
        raise SystemExit(1) from None
    argv = [sys.executable, "-m", "vfs", *args]
    if fake:
        print(shlex.join(argv))
        return
    os.execv(sys.executable, argv)


if __name__ == "__main__":
    main()
