"""``--uid``, ``--gid``, ``--dir-mode`` and ``--file-mode`` on writable mounts: base entries
show the given owner and permission bits, also once they changed (a write, an attribute),
until a chmod; new files and directories keep the bits their creator asked for; all of it
again after a remount."""

from __future__ import annotations

import errno
import os
import stat

from test_writable_mount import Setup, errno_of, setup

from vfs.testing.mounts import unmount_path, vfs_unmount_command

__all__ = ["setup"]  # the fixture

MODES = ("--uid", "1234", "--gid", "5678", "--dir-mode", "0750", "--file-mode", "0640")


def mode(path: os.PathLike[str] | str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_base_entries_show_the_given_modes_new_ones_their_own(setup: Setup) -> None:
    m = setup.mount(*MODES)
    root = m.path
    old = os.umask(0)
    try:
        fd = os.open(root / "scenes" / "new.txt", os.O_CREAT | os.O_WRONLY, 0o604)
        os.close(fd)
        os.mkdir(root / "scenes" / "newdir", 0o711)
    finally:
        os.umask(old)
    with open(root / "textures" / "wood.png", "r+b") as f:  # a changed base file
        f.write(b"X")
    os.setxattr(root / "README", "user.k", b"v")  # a base file with an overlay record
    os.chmod(root / "big.bin", 0o600)
    os.symlink("README", root / "link")

    def check() -> None:
        for d in ("", "scenes", "scenes/plates", "textures"):
            assert mode(root / d) == 0o750, d
        for f in ("scenes/comp.nk", "textures/wood.png", "README"):
            assert mode(root / f) == 0o640, f
        assert mode(root / "big.bin") == 0o600
        assert mode(root / "scenes" / "new.txt") == 0o604
        assert mode(root / "scenes" / "newdir") == 0o711
        for p in ("", "README", "scenes/new.txt", "scenes/newdir", "link", "big.bin"):
            st = os.lstat(root / p)
            assert (st.st_uid, st.st_gid) == (1234, 5678), p

    check()
    os.chown(root / "README", 1234, 5678)  # to the mount's owner: allowed, changes nothing
    m.expect_log(r"chown of .* refused")
    assert errno_of(lambda: os.chown(root / "README", 0, 0)) == errno.EPERM
    unmount_path(str(m.path), m.pid, vfs_unmount_command(str(m.path)))
    m = setup.mount(*MODES)
    root = m.path
    check()
