"""The overlay as a library, without FUSE: over a real tree, block cache, fetcher and
``file://`` store. Durability across reopen (also after the process is killed), writes that
fetch nothing (extents) and copy-up of crowded blocks, whiteouts, and inode numbers that stay
put."""

from __future__ import annotations

import errno
import os
import resource
import signal
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from vfs.errors import MountError
from vfs.hashing import hash_bytes
from vfs.manifest import Manifest, ManifestPath
from vfs.mount.blockcache import BlockCache
from vfs.mount.blocks import BLOCK_SIZE
from vfs.mount.fetcher import ContentFetcher
from vfs.mount.overlay import MAX_EXTENTS, Overlay, fetcher_reader
from vfs.mount.readahead import ReadaheadState
from vfs.mount.stats import MountStats
from vfs.mount.tree import ROOT_INODE, InodeTree
from vfs.storage import LocalStore, data_key

BIG = os.urandom(3 * BLOCK_SIZE + 1000)
SMALL = b"small file\n" * 10
FILES = {"d/big.bin": BIG, "d/small.txt": SMALL, "d/sub/x": b"x", "top": b"top"}


class World:
    """A tree of :data:`FILES` over a local store, and overlays opened on it."""

    def __init__(self, tmp: Path, files: dict[str, bytes] = FILES) -> None:
        self.store = LocalStore(str(tmp / "store"))
        for data in files.values():
            self.store.put_bytes(data_key(hash_bytes(data)), data)
        entries = [ManifestPath(p, hash_bytes(d), len(d), 1_000_000 + i)
                   for i, (p, d) in enumerate(sorted(files.items()))]  # fmt: skip
        self.tree = InodeTree.from_manifests([Manifest(entries)], ["m.json"])
        self.cache_dir = str(tmp / "cache")
        self.dir = str(tmp / "overlay")
        self.stats = MountStats()

    def run(self, body: Callable[[Overlay], Awaitable[None]]) -> None:
        """Open the overlay, run ``body`` in a Trio run with an attached fetcher, close."""

        async def main() -> None:
            fetcher = ContentFetcher(BlockCache(self.cache_dir, 1 << 30), self.store, self.stats)
            overlay = Overlay.open(self.dir, self.tree, fetcher_reader(self.tree, fetcher),
                                   self.stats)  # fmt: skip
            try:
                async with trio.open_nursery() as nursery:
                    fetcher.attach(nursery)
                    await body(overlay)
                    await fetcher.drain(10)
                    nursery.cancel_scope.cancel()
            finally:
                overlay.close()

        trio.run(main)

    def ino(self, overlay: Overlay, path: str) -> int:
        ino = ROOT_INODE
        for part in path.split("/"):
            found = overlay.lookup(ino, part.encode())
            assert found is not None, path
            ino = found
        return ino


async def read_all(overlay: Overlay, ino: int) -> bytes:
    return await overlay.read(ino, 0, overlay.attr(ino).size + 10, ReadaheadState())


def test_writes_fetch_nothing_and_crowded_blocks_are_copied_up(tmp_path: Path) -> None:
    w = World(tmp_path)
    expected = bytearray(BIG)

    async def body(o: Overlay) -> None:
        ino = w.ino(o, "d/big.bin")

        async def write(off: int, data: bytes) -> None:
            expected[off : off + len(data)] = data
            assert await o.write(ino, off, data) == len(data)

        # Block 1 overwritten whole in 1 MiB pieces (as the kernel sends them): no fetch.
        for i in range(4):
            await write(BLOCK_SIZE + i * (1 << 20), b"A" * (1 << 20))
        assert o.nodes[ino].blocks == {1} and 1 not in o.nodes[ino].extents
        # 10 bytes inside block 2: recorded as an extent, nothing fetched.
        await write(2 * BLOCK_SIZE + 5, b"B" * 10)
        assert o.nodes[ino].extents[2] == [(2 * BLOCK_SIZE + 5, 2 * BLOCK_SIZE + 15)]
        assert w.stats.counters["fetch.bytes"] == 0
        # Block 0 written in more than MAX_EXTENTS pieces: copied up (one block fetched).
        for i in range(MAX_EXTENTS + 1):
            await write(i * 1000, b"C")
        assert w.stats.counters["overlay.copyup.fetched"] == 1
        assert 0 < w.stats.counters["fetch.bytes"] <= BLOCK_SIZE
        assert o.nodes[ino].blocks == {0, 1} and 0 not in o.nodes[ino].extents
        # Reads compose base, extents and copied-up blocks.
        assert await read_all(o, ino) == bytes(expected)
        assert await o.read(ino, 2 * BLOCK_SIZE, 20, ReadaheadState()) == bytes(
            expected[2 * BLOCK_SIZE : 2 * BLOCK_SIZE + 20]
        )
        assert o.attr(ino).size == len(BIG)

    w.run(body)

    async def reopened(o: Overlay) -> None:
        ino = w.ino(o, "d/big.bin")
        assert o.nodes[ino].blocks == {0, 1} and set(o.nodes[ino].extents) == {2}
        assert await read_all(o, ino) == bytes(expected)

    w.run(reopened)


def test_truncate_fetches_nothing_and_never_shows_old_bytes(tmp_path: Path) -> None:
    w = World(tmp_path)

    async def body(o: Overlay) -> None:
        ino = w.ino(o, "d/big.bin")
        await o.truncate(ino, 100)
        await o.truncate(ino, 2 * BLOCK_SIZE)
        assert w.stats.counters["overlay.copyup.fetched"] == 0
        data = await read_all(o, ino)
        assert data == BIG[:100] + bytes(2 * BLOCK_SIZE - 100)
        await o.write(ino, 50, b"zz")  # copy-up of block 0: base bytes up to 100 only
        data = await read_all(o, ino)
        assert data == BIG[:50] + b"zz" + BIG[52:100] + bytes(2 * BLOCK_SIZE - 100)

    w.run(body)


def test_namespace_survives_reopen_and_inodes_stay_put(tmp_path: Path) -> None:
    w = World(tmp_path)
    inos: dict[str, int] = {}

    async def body(o: Overlay) -> None:
        d = w.ino(o, "d")
        inos["small"] = w.ino(o, "d/small.txt")
        out = o.mkdir(ROOT_INODE, b"out", 0o755).ino
        new = o.create(out, b"frame.exr", 0o644).ino
        await o.write(new, 0, b"frame")
        o.flush(new)
        o.rename(d, b"small.txt", out, b"small.moved", noreplace=False)
        o.unlink(ROOT_INODE, b"top")
        o.symlink(out, b"link", b"frame.exr")
        o.setattr(new, mode=0o700, mtime_ns=123_456_789)
        inos.update(out=out, new=new)
        assert new > len(w.tree) and out > len(w.tree)
        with pytest.raises(OSError) as e:
            o.create(out, b"frame.exr", 0o644)
        assert e.value.errno == errno.EEXIST
        with pytest.raises(OSError) as e:
            o.rename(out, b"link", out, b"small.moved", noreplace=True)
        assert e.value.errno == errno.EEXIST
        with pytest.raises(OSError) as e:
            o.rmdir(ROOT_INODE, b"out")
        assert e.value.errno == errno.ENOTEMPTY

    w.run(body)

    async def reopened(o: Overlay) -> None:
        assert w.ino(o, "out") == inos["out"]
        assert w.ino(o, "out/frame.exr") == inos["new"]
        assert w.ino(o, "out/small.moved") == inos["small"]
        assert o.lookup(w.ino(o, "d"), b"small.txt") is None
        assert o.lookup(ROOT_INODE, b"top") is None
        assert await read_all(o, inos["new"]) == b"frame"
        assert await read_all(o, inos["small"]) == SMALL
        a = o.attr(inos["new"])
        assert stat.S_IMODE(a.mode) == 0o700 and a.mtime_ns == 123_456_789
        assert o.readlink(w.ino(o, "out/link")) == b"frame.exr"
        names = sorted(n for n, _ in o.entries(ROOT_INODE))
        assert names == [b"d", b"out"]
        assert sorted(n for n, _ in o.entries(w.ino(o, "d"))) == [b"big.bin", b"sub"]
        # Numbers keep growing above everything handed out before.
        later = o.create(ROOT_INODE, b"later", 0o644).ino
        assert later > max(inos.values())
        # The base attributes of an untouched file are the manifest's.
        big = o.attr(w.ino(o, "d/big.bin"))
        assert big.size == len(BIG) and not big.changed

    w.run(reopened)


def test_whiteouts_hide_base_names_until_recreated(tmp_path: Path) -> None:
    w = World(tmp_path)

    async def body(o: Overlay) -> None:
        d = w.ino(o, "d")
        sub = w.ino(o, "d/sub")
        x = w.ino(o, "d/sub/x")
        o.unlink(sub, b"x")
        assert o.entries(sub) == []
        assert not o.exists(x)
        o.rmdir(d, b"sub")
        assert o.lookup(d, b"sub") is None and not o.exists(sub)
        again = o.mkdir(d, b"sub", 0o755).ino
        assert again != sub and o.entries(again) == []
        assert w.stats.counters["fetch.bytes"] == 0  # deleting never fetches

    w.run(body)

    async def reopened(o: Overlay) -> None:
        sub = w.ino(o, "d/sub")
        assert sub > len(w.tree) and o.entries(sub) == []

    w.run(reopened)


def test_unlinked_file_lives_until_last_release(tmp_path: Path) -> None:
    w = World(tmp_path)

    async def body(o: Overlay) -> None:
        ino = o.create(ROOT_INODE, b"tmp", 0o644).ino
        o.opened(ino)
        await o.write(ino, 0, b"abc")
        o.unlink(ROOT_INODE, b"tmp")
        assert o.lookup(ROOT_INODE, b"tmp") is None
        await o.write(ino, 3, b"def")
        assert await read_all(o, ino) == b"abcdef"
        o.released(ino)
        assert not o.exists(ino)
        assert os.listdir(os.path.join(w.dir, "data")) == []

    w.run(body)


def test_a_killed_process_loses_nothing_that_returned(tmp_path: Path) -> None:
    """The overlay's process is SIGKILLed (never closed) after its operations returned."""
    w = World(tmp_path)
    r, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: work, then die without closing anything
        try:
            os.close(r)

            async def main() -> None:
                fetcher = ContentFetcher(BlockCache(w.cache_dir, 1 << 30), w.store, w.stats)
                o = Overlay.open(w.dir, w.tree, fetcher_reader(w.tree, fetcher), w.stats)
                async with trio.open_nursery() as nursery:
                    fetcher.attach(nursery)
                    ino = o.create(ROOT_INODE, b"new", 0o644).ino
                    await o.write(ino, 0, b"n" * 1000)
                    o.flush(ino)
                    os.write(wfd, str(o.attr(ino).mtime_ns).encode())
                    big = w.ino(o, "d/big.bin")
                    await o.write(big, 7, b"seven")
                    o.flush(big)
                    o.rename(w.ino(o, "d"), b"small.txt", ROOT_INODE, b"small", noreplace=False)
                    await o.write(ino, 2000, b"late")  # written, never flushed
                    os.kill(os.getpid(), signal.SIGKILL)

            trio.run(main)
        finally:
            os._exit(1)
    os.close(wfd)
    mtime = int(os.read(r, 100))
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

    async def after(o: Overlay) -> None:
        # A write that returned is in the data file, whose size is taken as the file's.
        assert await read_all(o, w.ino(o, "new")) == b"n" * 1000 + bytes(1000) + b"late"
        assert o.attr(w.ino(o, "new")).mtime_ns == mtime  # committed by flush
        big = w.ino(o, "d/big.bin")
        assert await read_all(o, big) == BIG[:7] + b"seven" + BIG[12:]
        assert await read_all(o, w.ino(o, "small")) == SMALL

    w.run(after)


def test_other_base_is_refused_and_a_dir_is_used_once(tmp_path: Path) -> None:
    w = World(tmp_path)

    async def body(o: Overlay) -> None:
        o.create(ROOT_INODE, b"f", 0o644)
        with pytest.raises(MountError, match="in use"):
            Overlay.open(w.dir, w.tree, fetcher_reader(w.tree, None), w.stats)  # type: ignore[arg-type]

    w.run(body)
    other = World(tmp_path / "other", {"else": b"else"})
    other.dir = w.dir
    with pytest.raises(MountError) as e:
        other.run(lambda o: trio.sleep(0))
    assert w.dir in str(e.value) and "other base manifests" in str(e.value)


def _copy_up_killed(w: World, start: int, after_fetch: Callable[[], None]) -> None:
    """In a child process: write ``b"C"`` at ``start + i * 1000`` of d/big.bin for ``i`` up
    to :data:`MAX_EXTENTS` (the last write finds its block in too many pieces and copies it
    up); ``after_fetch()`` runs once the copy-up's base bytes came back. The child must die
    by SIGKILL: ``after_fetch`` sends it, or makes a later write fail with ``EFBIG``, on
    which the child kills itself."""
    pid = os.fork()
    if pid == 0:
        try:

            async def main() -> None:
                fetcher = ContentFetcher(BlockCache(w.cache_dir, 1 << 30), w.store, w.stats)
                real = fetcher_reader(w.tree, fetcher)

                async def on_fetch(
                    ino: int, off: int, size: int, state: ReadaheadState
                ) -> bytes | memoryview:
                    data = await real(ino, off, size, state)
                    after_fetch()
                    return data

                o = Overlay.open(w.dir, w.tree, on_fetch, w.stats)
                async with trio.open_nursery() as nursery:
                    fetcher.attach(nursery)
                    big = w.ino(o, "d/big.bin")
                    try:
                        for i in range(MAX_EXTENTS + 1):
                            await o.write(big, start + i * 1000, b"C")
                    except OSError as e:
                        if e.errno == errno.EFBIG:  # a gap write stopped at the limit
                            os.kill(os.getpid(), signal.SIGKILL)
                        raise

            trio.run(main)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def test_a_crash_mid_copy_up_exposes_no_half_copied_block(tmp_path: Path) -> None:
    """The process dies while block 0, written in too many pieces, is being copied up (its
    base bytes being fetched). After reopening, every write that returned is there and the
    rest of the block is the base's: nothing half copied shows."""
    w = World(tmp_path)
    expected = bytearray(BIG)
    for i in range(MAX_EXTENTS + 1):  # the last write returned before the copy-up began
        expected[i * 1000] = ord("C")
    _copy_up_killed(w, 0, lambda: os.kill(os.getpid(), signal.SIGKILL))

    async def after(o: Overlay) -> None:
        big = w.ino(o, "d/big.bin")
        assert o.nodes[big].blocks == set()
        assert len(o.nodes[big].extents[0]) == MAX_EXTENTS + 1
        assert await read_all(o, big) == bytes(expected)

    w.run(after)


def test_a_crash_between_the_gap_writes_of_a_copy_up_exposes_no_half_copied_block(
    tmp_path: Path,
) -> None:
    """The process dies in the middle of a copy-up's gap writes: block 2 of d/big.bin,
    written in too many pieces, has its base bytes fetched and its gaps written up to the
    middle of the block only (the data file may not grow past it, ``RLIMIT_FSIZE``: the
    next write fails with ``EFBIG``), then it is killed. The block must not be recorded
    held whole before its gaps are written: after reopening, every write that returned is
    there and the rest of the block, the unwritten half too, is the base's, never zeros."""
    w = World(tmp_path)
    start = 2 * BLOCK_SIZE  # far past the database and its WAL: only the data file is limited
    limit = start + BLOCK_SIZE // 2
    expected = bytearray(BIG)
    for i in range(MAX_EXTENTS + 1):
        expected[start + i * 1000] = ord("C")

    def limit_file_size() -> None:  # from now on no file grows past `limit`
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a core dump
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    _copy_up_killed(w, start, limit_file_size)

    async def after(o: Overlay) -> None:
        big = w.ino(o, "d/big.bin")
        with open(os.path.join(o.data_dir, str(big)), "rb") as f:  # the gaps were cut short
            assert os.pread(f.fileno(), 200, limit - 100) == BIG[limit - 100 : limit] + bytes(100)
        assert o.nodes[big].blocks == set()
        assert len(o.nodes[big].extents[2]) == MAX_EXTENTS + 1
        assert await read_all(o, big) == bytes(expected)

    w.run(after)


def test_a_damaged_database_is_refused_naming_the_dir(tmp_path: Path) -> None:
    w = World(tmp_path)
    os.makedirs(w.dir)
    Path(w.dir, "overlay.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(MountError) as e:
        w.run(lambda o: trio.sleep(0))
    assert w.dir in str(e.value) and "--overlay-dir" in str(e.value)
