"""Writable mounts through real FUSE: POSIX operations and their errnos, read-after-write,
durability across ``kill -9`` and remount, and base files that keep the manifest's size and
mtime (the fsx-style randomized data test is in test_fsx.py)."""

from __future__ import annotations

import contextlib
import errno
import inspect
import json
import mmap
import os
import random
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Mounted, pid_alive
from test_mount import MTIME_BASE, make_manifest

from vfs.mount.fs_rw import CHANGED_TIMEOUT
from vfs.testing.bench import vfs_stats
from vfs.testing.mounts import unmount_path, vfs_unmount_command, wait_exit
from vfs.testing.relay import wait_for

BIG = 9 * 1024 * 1024 + 123  # three 4 MiB blocks, the last one partial

FILES = {
    "scenes/comp.nk": b"nuke script\n" * 100,
    "scenes/plates/plate.0001.exr": os.urandom(300_000),
    "textures/wood.png": b"\x89PNG" + os.urandom(70_000),
    "big.bin": os.urandom(BIG),
    "README": b"top level file",
}

Mount = Callable[..., Mounted]


def stats(m: Mounted) -> dict[str, int]:
    return dict(json.loads(os.getxattr(m.path, "user.vfs.stats")))


class Setup:
    """A manifest over a local store; mounts it writable with one overlay dir."""

    def __init__(
        self,
        tmp_path: Path,
        vfs_mount: Mount,
        local_store: tuple[Path, str],
        files: dict[str, bytes] = FILES,
    ) -> None:
        self.tmp = tmp_path
        self.mount_fn = vfs_mount
        self.store = local_store[1]
        self.manifest = make_manifest(tmp_path, files, local_store[0])
        self.overlay = tmp_path / "overlay"
        self.mnt = tmp_path / "mnt"

    def mount(self, *extra: str) -> Mounted:
        return self.mount_fn(
            self.mnt, [self.manifest], self.store, "--writable", "--overlay-dir",
            str(self.overlay), *extra,
        )  # fmt: skip


@pytest.fixture()
def setup(tmp_path: Path, vfs_mount: Mount, local_store: tuple[Path, str]) -> Setup:
    return Setup(tmp_path, vfs_mount, local_store)


@pytest.fixture()
def rw(setup: Setup) -> Mounted:
    return setup.mount()


def errno_of(fn: Callable[[], object]) -> int:
    with pytest.raises(OSError) as e:
        fn()
    return e.value.errno or 0


def test_create_write_read_and_errors(rw: Mounted) -> None:
    root = rw.path
    p = root / "scenes" / "new.txt"
    p.write_bytes(b"hello")
    assert p.read_bytes() == b"hello"
    assert p.stat().st_size == 5
    assert errno_of(lambda: os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)) == errno.EEXIST
    with open(p, "ab") as f:
        f.write(b" world")
    assert p.read_bytes() == b"hello world"
    with open(p, "r+b") as f:
        f.seek(2)
        f.write(b"XY")
        f.flush()
        f.seek(0)
        assert f.read() == b"heXYo world"
    with open(p, "wb") as f:  # O_TRUNC
        f.write(b"new")
    assert p.read_bytes() == b"new"
    os.truncate(p, 10)
    assert p.read_bytes() == b"new" + bytes(7)
    with open(p, "r+b") as f:
        os.ftruncate(f.fileno(), 2)
    assert p.read_bytes() == b"ne"
    assert sorted(os.listdir(root / "scenes")) == ["comp.nk", "new.txt", "plates"]


def test_directories_rename_and_symlinks(rw: Mounted) -> None:
    root = rw.path
    (root / "out").mkdir()
    (root / "out" / "a").write_bytes(b"a")
    assert errno_of(lambda: (root / "out").rmdir()) == errno.ENOTEMPTY
    assert errno_of(lambda: (root / "out").mkdir()) == errno.EEXIST
    # rename a base file (no content fetched), a new file over an existing one, a dir
    ino = (root / "README").stat().st_ino
    os.rename(root / "README", root / "out" / "README.moved")
    assert (root / "out" / "README.moved").stat().st_ino == ino
    assert (root / "out" / "README.moved").read_bytes() == FILES["README"]
    assert not (root / "README").exists()
    os.rename(root / "out" / "a", root / "out" / "README.moved")
    assert (root / "out" / "README.moved").read_bytes() == b"a"
    os.rename(root / "scenes", root / "out" / "scenes2")
    assert (root / "out" / "scenes2" / "comp.nk").read_bytes() == FILES["scenes/comp.nk"]
    assert errno_of(lambda: os.rename(root / "out", root / "out" / "scenes2" / "x")) in (
        errno.EINVAL,
    )
    # RENAME_NOREPLACE via renameat2 is not in os; `mv -n` style check with os.link absent:
    (root / "t1").write_bytes(b"1")
    (root / "t2").write_bytes(b"2")
    assert _renameat2(root / "t1", root / "t2", 1) == errno.EEXIST  # RENAME_NOREPLACE
    assert _renameat2(root / "t1", root / "t2", 2) == errno.EINVAL  # RENAME_EXCHANGE
    # unlink, rmdir, whiteouts
    os.unlink(root / "textures" / "wood.png")
    assert os.listdir(root / "textures") == []
    (root / "textures").rmdir()
    assert not (root / "textures").exists()
    (root / "textures").mkdir()
    assert os.listdir(root / "textures") == []
    os.symlink("../out/README.moved", root / "textures" / "link")
    assert os.readlink(root / "textures" / "link") == "../out/README.moved"
    assert (root / "textures" / "link").read_bytes() == b"a"
    assert errno_of(lambda: os.rmdir(root / "out" / "scenes2" / "comp.nk")) == errno.ENOTDIR
    assert errno_of(lambda: os.unlink(root / "out")) in (errno.EISDIR, errno.EPERM)


def test_directory_renames_over_directories(rw: Mounted) -> None:
    root = rw.path
    (root / "empty").mkdir()
    (root / "full").mkdir()
    (root / "full" / "f").write_bytes(b"f")
    ino = (root / "full").stat().st_ino
    assert errno_of(lambda: os.rename(root / "empty", root / "full")) == errno.ENOTEMPTY
    assert errno_of(lambda: os.rename(root / "full", root / "README")) == errno.ENOTDIR
    assert errno_of(lambda: os.rename(root / "README", root / "full")) == errno.EISDIR
    os.rename(root / "full", root / "empty")  # over an empty directory
    assert (root / "empty").stat().st_ino == ino
    assert (root / "empty" / "f").read_bytes() == b"f"
    assert not (root / "full").exists()
    os.rename(root / "empty", root / "scenes" / "moved")  # a new dir into a base dir
    assert sorted(os.listdir(root / "scenes")) == ["comp.nk", "moved", "plates"]
    assert (root / "scenes" / "moved" / "f").read_bytes() == b"f"


def _renameat2(src: Path, dst: Path, flags: int) -> int:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    rc = libc.renameat2(at_fdcwd, bytes(src), at_fdcwd, bytes(dst), flags)
    return 0 if rc == 0 else ctypes.get_errno()


def test_attributes_and_refusals(rw: Mounted) -> None:
    root = rw.path
    p = root / "scenes" / "comp.nk"
    st = p.stat()
    assert st.st_size == len(FILES["scenes/comp.nk"])
    os.chmod(p, 0o755)
    assert stat.S_IMODE(p.stat().st_mode) == 0o755
    os.utime(p, ns=(1_600_000_000_000_000_123, 1_600_000_000_000_000_123))
    assert p.stat().st_mtime_ns == 1_600_000_000_000_000_123
    assert p.read_bytes() == FILES["scenes/comp.nk"]
    # Each refusal: its errno and exactly one log line naming it (chown too when root asks,
    # as these tests do: a vfs mount has one owner).
    refusals = {
        r"hard link to scenes/comp\.nk refused \(EPERM\)": lambda: os.link(p, root / "hard"),
        r"mknod of 'fifo' refused \(EPERM\)": lambda: os.mkfifo(root / "fifo"),
        r"chown of scenes/comp\.nk refused \(EPERM\)": lambda: os.chown(p, 1234, 1234),
    }
    for pattern, refused in refusals.items():
        rw.expect_log(pattern)
        assert errno_of(refused) == errno.EPERM, pattern
    warnings = [line for line in rw.log_text().splitlines() if " WARNING " in line]
    for pattern in refusals:
        assert len([w for w in warnings if re.search(pattern, w)]) == 1, (pattern, warnings)
    assert len(warnings) == len(refusals), warnings
    assert not (root / "hard").exists() and not (root / "fifo").exists()
    sv = os.statvfs(root)
    assert sv.f_bavail > 0 and sv.f_blocks > 0


def test_shared_writable_mmap(rw: Mounted) -> None:
    p = rw.path / "scenes" / "plates" / "plate.0001.exr"  # a base file, copied up by mmap
    with open(p, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        mm[10:20] = b"M" * 10
        mm.flush()
    expected = bytearray(FILES["scenes/plates/plate.0001.exr"])
    expected[10:20] = b"M" * 10
    assert p.read_bytes() == bytes(expected)
    with open(p, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert f.read() == bytes(expected)  # from the daemon, not the kernel's pages


def test_unlinked_file_stays_usable_through_open_handles(rw: Mounted) -> None:
    root = rw.path
    p = root / "tmpfile"
    with open(p, "w+b") as f:
        f.write(b"abc")
        f.flush()
        os.unlink(p)
        assert not p.exists()
        f.write(b"def")
        f.flush()
        f.seek(0)
        assert f.read() == b"abcdef"
        assert os.fstat(f.fileno()).st_size == 6
    with open(root / "big.bin", "r+b") as f:
        os.unlink(root / "big.bin")
        f.seek(BIG - 3)
        assert f.read() == FILES["big.bin"][-3:]
        f.seek(5)
        f.write(b"zz")
        f.flush()
        f.seek(0)
        assert f.read(10) == FILES["big.bin"][:5] + b"zz" + FILES["big.bin"][7:10]
    assert not (root / "big.bin").exists()


def test_writes_into_a_base_file_fetch_nothing(setup: Setup) -> None:
    m = setup.mount()
    p = m.path / "big.bin"
    block = 4 * 1024 * 1024
    with open(p, "r+b") as f:
        f.seek(block + 10)  # 100 bytes inside block 1
        f.write(b"X" * 100)
        f.flush()
        f.seek(2 * block)  # block 2 (the last, partial one) overwritten whole
        f.write(b"Y" * (BIG - 2 * block))
    counters = stats(m)
    assert counters.get("fetch.bytes", 0) == 0 and counters.get("fetch.blocks", 0) == 0
    assert counters["overlay.blocks.written"] == 1
    data = bytearray(FILES["big.bin"])
    data[block + 10 : block + 110] = b"X" * 100
    data[2 * block :] = b"Y" * (BIG - 2 * block)
    assert p.read_bytes() == bytes(data)  # blocks 0 and 1 (around the extent) from the base
    assert p.stat().st_size == BIG


def test_renaming_base_files_and_directories_fetches_nothing(rw: Mounted) -> None:
    """Renaming a base file (also over another base file) or a directory holding base
    files fetches no content and copies nothing up, also when the moved files are then
    listed and stat'ed; only a read fetches."""
    root = rw.path
    fetch_keys = ("fetch.objects", "fetch.blocks", "fetch.bytes", "fetch.runs")

    def fetched() -> dict[str, int]:
        counters = vfs_stats(str(root))
        return {k: counters.get(k, 0) for k in (*fetch_keys, "overlay.copyup.files")}

    nothing = dict.fromkeys((*fetch_keys, "overlay.copyup.files"), 0)
    assert fetched() == nothing
    (root / "out").mkdir()
    os.rename(root / "README", root / "out" / "README.moved")
    os.rename(root / "big.bin", root / "textures" / "wood.png")  # over another base file
    os.rename(root / "scenes", root / "out" / "scenes2")  # a directory of base files
    moved = {
        "out/README.moved": FILES["README"],
        "textures/wood.png": FILES["big.bin"],
        "out/scenes2/comp.nk": FILES["scenes/comp.nk"],
        "out/scenes2/plates/plate.0001.exr": FILES["scenes/plates/plate.0001.exr"],
    }
    for path, data in moved.items():
        assert (root / path).stat().st_size == len(data), path
    assert sorted(os.listdir(root / "out" / "scenes2")) == ["comp.nk", "plates"]
    assert fetched() == nothing
    assert os.getxattr(root / "textures" / "wood.png", "user.vfs.hash")  # still the base's
    assert fetched() == nothing
    for path, data in moved.items():
        assert (root / path).read_bytes() == data, path
    after = fetched()
    assert after["fetch.bytes"] >= sum(map(len, moved.values()))
    assert after["overlay.copyup.files"] == 0


def test_base_files_keep_manifest_size_and_mtime(rw: Mounted) -> None:
    root = rw.path
    (root / "scenes" / "comp.nk").write_bytes(b"changed")
    # The base hash no longer describes a changed file; an untouched one keeps it.
    assert errno_of(lambda: os.getxattr(root / "scenes" / "comp.nk", "user.vfs.hash")) == (
        errno.ENODATA
    )
    assert os.getxattr(root / "README", "user.vfs.hash")
    for i, (path, data) in enumerate(sorted(FILES.items())):
        st = (root / path).stat()
        if path == "scenes/comp.nk":
            assert st.st_size == 7
            assert abs(st.st_mtime_ns / 1e9 - time.time()) < 60
            continue
        assert st.st_size == len(data), path
        assert st.st_mtime_ns == (MTIME_BASE + i * 1_000_001) * 1000, path


def test_kill_9_then_remount_keeps_everything(setup: Setup) -> None:
    m = setup.mount()
    root = m.path
    (root / "out").mkdir()
    (root / "out" / "frame.exr").write_bytes(b"F" * 100_000)
    with open(root / "big.bin", "r+b") as f:
        f.seek(10)
        f.write(b"hello")
        os.fsync(f.fileno())
        f.seek(BIG + 5)
        f.write(b"tail")
    os.rename(root / "README", root / "out" / "README")
    os.unlink(root / "textures" / "wood.png")
    os.symlink("frame.exr", root / "out" / "link")
    os.chmod(root / "out" / "frame.exr", 0o700)
    inos = {p: (root / p).lstat().st_ino for p in ["out", "out/frame.exr", "out/README"]}
    os.kill(m.pid, signal.SIGKILL)
    assert wait_exit(m.pid, 10)
    unmount_path(str(m.path), None, None)  # the dead daemon's mount: abort + lazy unmount
    m2 = setup.mount()
    assert not pid_alive(m.pid)
    root = m2.path
    assert (root / "out" / "frame.exr").read_bytes() == b"F" * 100_000
    assert stat.S_IMODE((root / "out" / "frame.exr").stat().st_mode) == 0o700
    big = bytearray(FILES["big.bin"])
    big[10:15] = b"hello"
    big += bytes(5) + b"tail"
    assert (root / "big.bin").read_bytes() == bytes(big)
    assert (root / "out" / "README").read_bytes() == FILES["README"]
    assert not (root / "README").exists()
    assert not (root / "textures" / "wood.png").exists()
    assert os.readlink(root / "out" / "link") == "frame.exr"
    for p, ino in inos.items():
        assert (root / p).lstat().st_ino == ino, p


PIECE = 3000  # bytes of each write into big.bin
STEP = 70_001  # between them: under 64 pieces per block in one pass, more in two (copy-up)
WRITES = 1000  # more than the writer gets through before the kill


def stream_chunk(i: int) -> bytes:
    """The ``i``-th piece appended to the new file by :data:`WRITER`."""
    rng = random.Random(i)
    return rng.randbytes(rng.randrange(1, 50_000))


def base_piece(i: int) -> tuple[int, bytes]:
    """Where and what the ``i``-th write into big.bin puts (by :data:`WRITER`)."""
    return (i * STEP) % (BIG - PIECE), random.Random(-1 - i).randbytes(PIECE)


WRITER = f"""
import os, random, sys
BIG, PIECE, STEP = {BIG}, {PIECE}, {STEP}
{inspect.getsource(stream_chunk)}
{inspect.getsource(base_piece)}
new = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
base = os.open(sys.argv[2], os.O_WRONLY)
size = 0
try:
    for i in range({WRITES}):
        data = stream_chunk(i)
        while data:
            n = os.pwrite(new, data, size)
            data, size = data[n:], size + n
        off, piece = base_piece(i)
        os.pwrite(base, piece, off)
        os.fsync(new)
        os.fdatasync(base)
        print(i, size, flush=True)  # both fsyncs returned: these bytes must survive
except OSError as e:
    print("error", e.errno, flush=True)
"""


def test_kill_9_during_fsynced_writes_loses_no_fsynced_byte(setup: Setup) -> None:
    """A writer appends to a new file and patches a base file, fsyncing both after each
    write, while the daemon gets SIGKILL mid-stream; after a remount with the same overlay,
    every byte whose fsync returned is there, and nothing else changed (the write in flight
    may or may not have landed). The base file's blocks hold extents and, in the first
    block, a copy-up when the kill comes."""
    m = setup.mount()
    new, base = m.path / "stream.bin", m.path / "big.bin"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(new), str(base)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(writer.stdout or []), daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(lines) >= 150 or writer.poll() is not None, timeout=120,
                 what="150 fsynced writes")  # fmt: skip
        os.kill(m.pid, signal.SIGKILL)
        assert wait_exit(m.pid, 10)
        writer.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        writer.kill()
        writer.wait(timeout=10)
    assert lines and lines[-1].startswith("error"), lines[-3:]  # killed mid-stream
    acked = [tuple(map(int, line.split())) for line in lines[:-1]]
    last, size = acked[-1]
    assert 150 <= len(acked) < WRITES and last == len(acked) - 1
    unmount_path(str(m.path), None, None)  # the dead daemon's mount

    m2 = setup.mount()
    got = (m2.path / "stream.bin").read_bytes()
    assert len(got) >= size
    stream = b"".join(stream_chunk(i) for i in range(last + 2))  # the one in flight too
    assert got == stream[: len(got)], "the new file differs from what was written"
    expected = bytearray(FILES["big.bin"])
    for i in range(last + 1):
        off, piece = base_piece(i)
        expected[off : off + PIECE] = piece
    off, piece = base_piece(last + 1)  # in flight: either state
    got = (m2.path / "big.bin").read_bytes()
    assert got[off : off + PIECE] in (bytes(expected[off : off + PIECE]), piece)
    expected[off : off + PIECE] = got[off : off + PIECE]
    assert len(got) == BIG
    wrong = [i for i in range(0, BIG, PIECE) if got[i : i + PIECE] != expected[i : i + PIECE]]
    assert not wrong, f"big.bin differs at offsets {wrong[:10]}"


def test_default_overlay_dir_survives_a_clean_remount(
    tmp_path: Path, vfs_mount: Mount, local_store: tuple[Path, str]
) -> None:
    setup = Setup(tmp_path, vfs_mount, local_store)
    m = vfs_mount(setup.mnt, [setup.manifest], setup.store, "--writable")
    with open(m.path / "out.txt", "wb") as f:
        f.write(b"kept")
        os.fdatasync(f.fileno())
    with open(m.path / "scenes" / "comp.nk", "ab") as f:
        f.write(b"appended")
    unmount_path(str(m.path), m.pid, vfs_unmount_command(str(m.path)))
    overlays = os.listdir(tmp_path / "cache" / "overlays")
    assert overlays == [str(setup.mnt).strip("/").replace("/", "_")]
    m2 = vfs_mount(setup.mnt, [setup.manifest], setup.store, "--writable")
    assert (m2.path / "out.txt").read_bytes() == b"kept"
    assert (m2.path / "scenes" / "comp.nk").read_bytes() == FILES["scenes/comp.nk"] + b"appended"
    unmount_path(str(m2.path), m2.pid, vfs_unmount_command(str(m2.path)))
    # Without --writable the same mount point is the base, read-only.
    m3 = vfs_mount(setup.mnt, [setup.manifest], setup.store)
    assert not (m3.path / "out.txt").exists()
    assert errno_of(lambda: (m3.path / "new").write_bytes(b"x")) == errno.EROFS


def test_overlay_dir_needs_writable(setup: Setup) -> None:
    with pytest.raises(AssertionError, match="--overlay-dir needs --writable"):
        setup.mount_fn(setup.mnt, [setup.manifest], setup.store, "--overlay-dir", "x")


def test_other_base_manifest_is_refused(setup: Setup, tmp_path: Path) -> None:
    m = setup.mount()
    (m.path / "x").write_bytes(b"x")
    unmount_path(str(m.path), m.pid, vfs_unmount_command(str(m.path)))
    setup.manifest = make_manifest(tmp_path, {"other": b"other"}, None, name="other.manifest")
    with pytest.raises(AssertionError) as e:
        setup.mount()
    assert str(setup.overlay) in str(e.value) and "other base manifests" in str(e.value)


def test_disk_full_gives_enospc_and_the_mount_stays_up(setup: Setup) -> None:
    """The overlay on a 3 MiB tmpfs: a write past the space fails with ENOSPC, what was
    written before stays, and after a delete writing works again."""
    disk = setup.tmp / "small-disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], check=True)
    try:
        setup.overlay = disk / "overlay"
        m = setup.mount()
        m.expect_log(r"No space left|database failed")
        (m.path / "kept.txt").write_bytes(b"kept")
        with pytest.raises(OSError) as e, open(m.path / "huge.bin", "wb") as f:
            for _ in range(8):
                f.write(b"h" * (1 << 20))
                f.flush()
        assert e.value.errno == errno.ENOSPC
        assert (m.path / "kept.txt").read_bytes() == b"kept"
        assert (m.path / "README").read_bytes() == FILES["README"]
        os.unlink(m.path / "huge.bin")
        (m.path / "after.txt").write_bytes(b"after")
        assert (m.path / "after.txt").read_bytes() == b"after"
        unmount_path(str(m.path), m.pid, vfs_unmount_command(str(m.path)))
    finally:
        if subprocess.run(["umount", str(disk)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=False)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (made), unmounted at the end (lazily when
    something still holds it)."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True, timeout=30)  # fmt: skip
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)


def test_statfs_reports_the_overlay_directorys_disk(setup: Setup) -> None:
    """statfs of a writable mount is the overlay disk's (a 37 MiB tmpfs here, unlike the
    disk of everything else): same block counts and sizes, and the free space follows what
    is written through the mount."""
    with tmpfs(setup.tmp / "disk", "37m") as disk:
        setup.overlay = disk / "overlay"
        m = setup.mount()
        tolerance = 256 * 1024  # bytes the overlay's database may take between two looks
        for fill in (0, 5_000_000):
            if fill:
                with open(m.path / "filler.bin", "wb") as f:
                    f.write(b"f" * fill)
                    os.fsync(f.fileno())
            mine, disks = os.statvfs(m.path), os.statvfs(setup.overlay)
            assert (mine.f_blocks, mine.f_bsize, mine.f_frsize) == (
                disks.f_blocks, disks.f_bsize, disks.f_frsize,
            )  # fmt: skip
            assert mine.f_blocks * mine.f_frsize == 37 * 1024 * 1024
            assert abs(mine.f_bavail - disks.f_bavail) * disks.f_frsize <= tolerance
            assert abs(mine.f_bfree - disks.f_bfree) * disks.f_frsize <= tolerance
        assert mine.f_bavail * mine.f_frsize <= 37 * 1024 * 1024 - 5_000_000
        unmount_path(str(m.path), m.pid, vfs_unmount_command(str(m.path)))


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under ``root``: (kind, permission bits, size, content) for files,
    (kind, permission bits) for directories, (kind, target) for symlinks."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
                if name in dirnames:
                    dirnames.remove(name)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size, p.read_bytes())
    return out


def test_random_namespace_ops_match_a_local_directory(setup: Setup) -> None:
    """Seeded random create / write / truncate / mkdir / rmdir / unlink / rename / symlink /
    chmod on the mount and on a local copy of the base: the same errors and the same tree
    after every step, and again after kill -9 and a remount."""
    rng = random.Random(int(os.environ.get("VFS_NS_SEED", "7")))
    steps = int(os.environ.get("VFS_NS_OPS", "200"))
    ref = setup.tmp / "ref"
    for path, data in FILES.items():
        (ref / path).parent.mkdir(parents=True, exist_ok=True)
        (ref / path).write_bytes(data)
    m = setup.mount()
    names = ["a", "b", "c", "d"]

    def paths() -> list[str]:
        return sorted(snapshot(ref))

    def pick_dir() -> str:
        dirs = [p for p, v in snapshot(ref).items() if v[0] == "dir"]
        return rng.choice(["", *dirs])

    def target(existing: bool) -> str:
        if existing and paths():
            return rng.choice(paths())
        d = pick_dir()
        return f"{d}/{rng.choice(names)}" if d else rng.choice(names)

    def apply(root: Path, op: str, a: str, b: str, data: bytes, n: int) -> int:
        try:
            if op == "create":
                with open(root / a, "xb") as f:
                    f.write(data)
            elif op == "write":
                fd = os.open(root / a, os.O_WRONLY)
                try:
                    os.pwrite(fd, data, n)
                finally:
                    os.close(fd)
            elif op == "truncate":
                os.truncate(root / a, n)
            elif op == "mkdir":
                os.mkdir(root / a)
            elif op == "rmdir":
                os.rmdir(root / a)
            elif op == "unlink":
                os.unlink(root / a)
            elif op == "rename":
                os.rename(root / a, root / b)
            elif op == "symlink":
                os.symlink(b, root / a)
            elif op == "chmod":
                os.chmod(root / a, 0o700 | (n & 0o55), follow_symlinks=False)
        except OSError as e:
            return e.errno or -1
        return 0

    ops = ["create", "write", "truncate", "mkdir", "rmdir", "unlink", "rename", "symlink", "chmod"]
    for step in range(steps):
        op = rng.choice(ops)
        a = target(existing=op not in ("create", "mkdir", "symlink") or rng.random() < 0.2)
        b = target(existing=rng.random() < 0.5) if op == "rename" else rng.choice(names)
        data = rng.randbytes(rng.choice([0, 10, 5000]))
        n = rng.randrange(0, 400_000)
        if op == "chmod" and (ref / a).is_symlink():
            continue  # Linux has no lchmod
        expected = apply(ref, op, a, b, data, n)
        got = apply(m.path, op, a, b, data, n)
        what = f"step {step}: {op} {a!r} {b!r}"
        assert got == expected, f"{what}: errno {got} on the mount, {expected} locally"
        assert snapshot(m.path) == snapshot(ref), what
    os.kill(m.pid, signal.SIGKILL)
    assert wait_exit(m.pid, 10)
    unmount_path(str(m.path), None, None)
    m2 = setup.mount()
    assert snapshot(m2.path) == snapshot(ref)


def test_missing_base_content_gives_eio_and_the_mount_stays_up(setup: Setup) -> None:
    from vfs.hashing import hash_bytes
    from vfs.storage import data_key

    (setup.tmp / "store" / data_key(hash_bytes(FILES["big.bin"]))).unlink()
    m = setup.mount()
    m.expect_log(r"cannot read the base content of big\.bin")
    m.expect_log(r"big\.bin|Data/")  # the fetcher's own account of the missing object
    fd = os.open(m.path / "big.bin", os.O_RDWR)
    try:
        # Writes need no base bytes; reading what was not written does.
        assert os.pwrite(fd, b"x", 5) == 1
        assert errno_of(lambda: os.pread(fd, 10, 0)) == errno.EIO
        block = 4 * 1024 * 1024
        assert os.pwrite(fd, b"w" * block, block) == block
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.pread(fd, 10, block) == b"w" * 10
    finally:
        os.close(fd)
    (m.path / "new").write_bytes(b"ok")
    assert (m.path / "new").read_bytes() == b"ok"


def test_untouched_base_metadata_stays_in_the_kernel(rw: Mounted) -> None:
    """A writable mount keeps the long timeouts of untouched base entries: a second stat
    pass over them sends no lookup or getattr to the daemon."""
    (rw.path / "new").write_bytes(b"n")
    for path in FILES:
        (rw.path / path).stat()
    time.sleep(CHANGED_TIMEOUT + 0.5)  # long enough for a short timeout to run out
    before = stats(rw)
    for path in FILES:
        (rw.path / path).stat()
    after = stats(rw)
    for key in ("req.lookup", "req.getattr"):
        assert after.get(key, 0) == before.get(key, 0), key


def test_merge_of_extents() -> None:
    from vfs.mount.overlay import _merge

    assert _merge([], (3, 5)) == [(3, 5)]
    assert _merge([(0, 2), (5, 6)], (2, 5)) == [(0, 6)]
    assert _merge([(0, 2), (8, 9)], (4, 5)) == [(0, 2), (4, 5), (8, 9)]
    assert _merge([(0, 2), (4, 6), (8, 9)], (1, 8)) == [(0, 9)]


def test_remount_while_the_old_daemon_still_finishes_its_cache_writes(setup: Setup) -> None:
    """The overlay is released as soon as the mount is gone: a new mount with the same
    overlay dir does not wait for (or fail on) the old daemon's cache writes."""
    import fcntl

    m = setup.mount()
    (m.path / "out.txt").write_bytes(b"kept")
    lock = os.open(setup.tmp / "cache" / "lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)  # the old daemon's cache writes wait for it
    try:
        assert (m.path / "textures/wood.png").read_bytes() == FILES["textures/wood.png"]
        subprocess.run(vfs_unmount_command(str(m.path)), check=True, timeout=60)
        assert pid_alive(m.pid)  # still draining its cache writes
        m2 = setup.mount()
        assert (m2.path / "out.txt").read_bytes() == b"kept"
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
    m.expect_log(r"WARNING vfs\.mount\.blockcache: cache .* cannot store")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_unmount_cleanly_and_keep_the_overlay(
    setup: Setup, sig: signal.Signals
) -> None:
    m = setup.mount()
    (m.path / "render" / "frame.exr").parent.mkdir()
    (m.path / "render" / "frame.exr").write_bytes(b"pixels")
    os.kill(m.pid, sig)
    assert wait_exit(m.pid, 30)
    assert not os.path.ismount(m.path)
    assert "signal" in m.log.read_text() and "unmounted" in m.log.read_text()
    again = setup.mount()
    assert (again.path / "render" / "frame.exr").read_bytes() == b"pixels"
