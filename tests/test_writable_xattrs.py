"""``user.*`` extended attributes on writable mounts, through real FUSE: set, get, list and
remove on new, changed and untouched base files and on directories, ``XATTR_CREATE`` and
``XATTR_REPLACE``, the refusals (other namespaces, vfs's own ``user.vfs.*``, symlinks, too
many bytes), renames and unlinks, and durability across a clean remount and ``kill -9``."""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3

from test_writable_mount import FILES, Setup, errno_of, setup, stats

from vfs.testing import run_vfs
from vfs.testing.mounts import unmount_path, vfs_unmount_command, wait_exit

__all__ = ["setup"]  # the fixture


def test_user_xattrs_on_new_changed_and_base_files(setup: Setup) -> None:
    m = setup.mount()
    root = m.path
    new = root / "scenes" / "new.txt"
    new.write_bytes(b"new")
    os.setxattr(new, "user.color", b"red")
    assert os.getxattr(new, "user.color") == b"red"
    assert os.listxattr(new) == ["user.color"]
    os.setxattr(new, "user.color", b"blue")  # replace
    assert os.getxattr(new, "user.color") == b"blue"
    assert errno_of(lambda: os.setxattr(new, "user.color", b"x", os.XATTR_CREATE)) == errno.EEXIST
    assert errno_of(lambda: os.setxattr(new, "user.other", b"x", os.XATTR_REPLACE)) == (
        errno.ENODATA
    )
    os.setxattr(new, "user.empty", b"")
    assert os.getxattr(new, "user.empty") == b""
    os.removexattr(new, "user.empty")
    assert errno_of(lambda: os.removexattr(new, "user.empty")) == errno.ENODATA
    assert errno_of(lambda: os.getxattr(new, "user.empty")) == errno.ENODATA

    # A directory, new or from the base.
    (root / "out").mkdir()
    os.setxattr(root / "out", "user.kind", b"renders")
    os.setxattr(root / "scenes", "user.kind", b"inputs")
    assert os.getxattr(root / "scenes", "user.kind") == b"inputs"

    # An untouched base file: only its metadata is recorded, nothing fetched, and vfs's own
    # attributes (its base hash) stay; size, mtime and content are the manifest's.
    readme = root / "README"
    st = readme.stat()
    os.setxattr(readme, "user.note", b"checked")
    assert os.getxattr(readme, "user.note") == b"checked"
    assert set(os.listxattr(readme)) == {
        "user.vfs.hash", "user.vfs.source", "user.vfs.cached", "user.note"
    }  # fmt: skip
    assert os.getxattr(readme, "user.vfs.hash")
    after = readme.stat()
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert stats(m).get("fetch.bytes", 0) == 0
    assert readme.read_bytes() == FILES["README"]

    # A changed base file: its own attributes, and no base hash any more.
    comp = root / "scenes" / "comp.nk"
    with open(comp, "ab") as f:
        f.write(b"more")
    os.setxattr(comp, "user.state", b"edited")
    assert os.listxattr(comp) == ["user.state"]

    # The root keeps vfs's attributes beside the user's.
    os.setxattr(root, "user.job", b"J")
    assert {"user.vfs.stats", "user.vfs.overlay", "user.job"} <= set(os.listxattr(root))
    assert os.getxattr(root, "user.vfs.overlay") == os.fsencode(setup.overlay)


def test_xattr_refusals(setup: Setup) -> None:
    m = setup.mount()
    root = m.path
    p = root / "new.txt"
    p.write_bytes(b"x")
    for name in ("trusted.x", "security.x"):
        assert errno_of(lambda n=name: os.setxattr(p, n, b"v")) == errno.ENOTSUP, name
        assert errno_of(lambda n=name: os.getxattr(p, n)) == errno.ENODATA, name
        assert errno_of(lambda n=name: os.removexattr(p, n)) == errno.ENOTSUP, name
    for name in ("user.vfs.hash", "user.vfs.mine"):
        assert errno_of(lambda n=name: os.setxattr(root / "README", n, b"v")) == errno.EPERM, name
        assert errno_of(lambda n=name: os.removexattr(root / "README", n)) == errno.EPERM, name
    os.symlink("new.txt", root / "link")  # the kernel keeps user.* off symlinks
    assert (
        errno_of(lambda: os.setxattr(root / "link", "user.a", b"v", follow_symlinks=False))
        == errno.EPERM
    )
    # At most 64 KiB of names and values per inode (one value of 64 KiB is the kernel's own
    # limit).
    os.setxattr(p, "user.big1", b"b" * 40_000)
    assert errno_of(lambda: os.setxattr(p, "user.big2", b"b" * 40_000)) == errno.ENOSPC
    os.setxattr(p, "user.big1", b"b" * 20_000)  # replacing counts the new value only
    os.setxattr(p, "user.big2", b"b" * 40_000)
    assert sorted(os.listxattr(p)) == ["user.big1", "user.big2"]


def test_xattrs_follow_renames_go_with_unlinks_and_survive_remounts(setup: Setup) -> None:
    m = setup.mount()
    root = m.path
    (root / "a").write_bytes(b"a")
    os.setxattr(root / "a", "user.tag", b"one")
    os.rename(root / "a", root / "b")
    assert os.getxattr(root / "b", "user.tag") == b"one"
    os.unlink(root / "b")
    (root / "b").write_bytes(b"again")
    assert os.listxattr(root / "b") == []
    (root / "c").write_bytes(b"c")
    os.setxattr(root / "c", "user.tag", b"kept")
    os.setxattr(root / "README", "user.tag", b"base")
    os.setxattr(root / "textures" / "wood.png", "user.tag", b"gone")
    os.unlink(root / "textures" / "wood.png")
    os.rename(root / "c", root / "scenes" / "c")
    unmount_path(str(m.path), m.pid, vfs_unmount_command(str(m.path)))

    m = setup.mount()
    root = m.path
    assert os.getxattr(root / "scenes" / "c", "user.tag") == b"kept"
    assert os.getxattr(root / "README", "user.tag") == b"base"
    os.setxattr(root / "scenes" / "c", "user.after", b"kill")
    os.removexattr(root / "README", "user.tag")
    os.kill(m.pid, signal.SIGKILL)  # every xattr change is committed before it returns
    assert wait_exit(m.pid, 10)
    unmount_path(str(m.path), None, None)

    m = setup.mount()
    root = m.path
    assert os.getxattr(root / "scenes" / "c", "user.after") == b"kill"
    assert sorted(os.listxattr(root / "scenes" / "c")) == ["user.after", "user.tag"]
    assert "user.tag" not in os.listxattr(root / "README")
    assert os.listxattr(root / "b") == []
    unmount_path(str(m.path), m.pid, vfs_unmount_command(str(m.path)))
    # The attributes of inodes whose last name went are gone from the overlay too.
    with sqlite3.connect(setup.overlay / "overlay.db") as db:
        names = sorted(bytes(n) for (n,) in db.execute("SELECT name FROM xattrs"))
    assert names == [b"user.after", b"user.tag"]


def test_xattrs_alone_are_no_output(setup: Setup) -> None:
    """An attribute changes no content: ``vfs commit`` finds nothing to commit (v1, v2)."""
    m = setup.mount()
    os.setxattr(m.path / "README", "user.tag", b"x")
    os.setxattr(m.path / "scenes", "user.tag", b"x")
    for version in ("2023-03-03", "2025-12-04-beta"):
        out = setup.tmp / f"{version}.manifest"
        result = run_vfs("commit", str(m.path), "--output", str(out), "--json",
                         "--manifest-version", version)  # fmt: skip
        assert json.loads(result.stdout.splitlines()[-1])["manifest_hash"] is None
        assert not out.exists()
