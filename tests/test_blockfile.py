"""Block files written past the page cache (``O_DIRECT``): what is written reads back exactly
and passes every check, the page cache is not filled, a file system that refuses ``O_DIRECT``
is written the ordinary way, and a full disk loses nothing already cached and leaves no
temporary file. Block files read back: into pooled buffers never reused while a view of them
lives; on the event loop only from the page cache; ahead with ``POSIX_FADV_WILLNEED``."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfs.hashing import hash_bytes
from vfs.mount import blockfile
from vfs.mount.blockcache import BlockCache
from vfs.mount.blockfile import (
    HEADER_SIZE,
    POOL,
    BufferPool,
    CorruptEntryError,
    WouldBlock,
    _padded,
    new_block_buffer,
)
from vfs.mount.blocks import BLOCK_SIZE
from vfs.mount.objects import ObjectRef

MiB = 1024 * 1024


def resident_bytes(path: Path) -> int:
    """Bytes of ``path`` in the page cache (util-linux ``fincore``)."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    return int(out.split()[0])


def as_block_buffer(data: bytes) -> memoryview:
    """``data`` in a BlockBuffer, as downloads deliver it."""
    view = new_block_buffer(len(data)).data()
    view[:] = data
    return view


@pytest.mark.skipif(shutil.which("fincore") is None, reason="needs util-linux fincore")
@pytest.mark.parametrize("in_buffer", [True, False], ids=["block-buffer", "bytes"])
def test_block_files_read_back_exactly_and_skip_the_page_cache(
    tmp_path: Path, in_buffer: bool
) -> None:
    cache = BlockCache(str(tmp_path / "c"), 1 << 30, min_free_ratio=0)
    # last block lengths: unaligned (123 bytes, a page and one byte) and aligned
    for extra in (123, 4097, 4096):
        data = os.urandom(2 * BLOCK_SIZE + extra)
        obj = ObjectRef(hash_bytes(data), len(data))
        for i in range(3):
            piece = data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]
            assert cache.store_block(obj, i, as_block_buffer(piece) if in_buffer else piece)
        for i in range(3):
            path = Path(cache.path(cache.block_name(obj.hash, i)))
            length = BLOCK_SIZE if i < 2 else extra
            assert path.stat().st_size == HEADER_SIZE + length
            assert resident_bytes(path) == 0, "the block file went through the page cache"
            got, _ = cache.load_block(obj, i)
            assert bytes(got) == data[i * BLOCK_SIZE : i * BLOCK_SIZE + length]
    assert str(cache.tmp_dir) not in blockfile._direct_refused
    assert os.listdir(cache.tmp_dir) == []


def test_a_file_system_refusing_o_direct_is_written_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux answers ``EINVAL`` where a file system has no direct I/O (on open, or on the
    first write for some FUSE file systems): the block is written the ordinary way, and the
    directory is remembered so that later blocks do not try again."""
    attempts: list[int] = []
    real_open = os.open

    def refusing_open(path: str, flags: int, *args: int) -> int:
        if flags & os.O_DIRECT:
            attempts.append(flags)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(blockfile, "_direct_refused", set())
    monkeypatch.setattr(os, "open", refusing_open)
    cache = BlockCache(str(tmp_path / "c"), 1 << 30, min_free_ratio=0)
    data = os.urandom(2 * BLOCK_SIZE + 5)
    obj = ObjectRef(hash_bytes(data), len(data))
    for i in range(3):
        assert cache.store_block(
            obj, i, as_block_buffer(data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
        )
    monkeypatch.undo()
    assert len(attempts) == 1  # remembered after the first refusal
    for i in range(3):
        got, _ = cache.load_block(obj, i)
        assert bytes(got) == data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]
    assert os.listdir(cache.tmp_dir) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB ext4 file system on a loop device (root only), unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root and mkfs.ext4")
    image, mnt = tmp_path / "disk.img", tmp_path / "disk"
    with open(image, "wb") as f:
        f.truncate(48 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, timeout=60)
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True, timeout=60)
    except subprocess.CalledProcessError:
        pytest.skip("cannot mount a loop device here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=60)


def test_a_full_disk_keeps_what_was_cached_and_leaves_no_temporary_file(
    small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills in the middle of a direct write (the file system's free space is
    reported as plenty, as when another program fills the disk after the cache looked).
    That block is not cached (no error to the reader, no partial file), every block written
    before still loads, and the index counts only what is on disk."""
    real = os.statvfs(small_disk)
    plenty = os.statvfs_result((*real[:4], 1 << 40, *real[5:]))  # f_bavail
    monkeypatch.setattr(os, "statvfs", lambda path: plenty)
    cache = BlockCache(str(small_disk / "c"), 1 << 30, min_free_ratio=0)
    data = os.urandom(16 * BLOCK_SIZE)
    obj = ObjectRef(hash_bytes(data), len(data))
    stored = []
    for i in range(16):
        if not cache.store_block(
            obj, i, as_block_buffer(data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
        ):
            break
        stored.append(i)
    assert 3 <= len(stored) < 16, stored  # the disk filled part way
    assert os.listdir(cache.tmp_dir) == []
    for i in stored:
        got, _ = cache.load_block(obj, i)
        assert bytes(got) == data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]
    assert cache.stats().entries == len(stored)
    assert cache.stats().used == len(stored) * (HEADER_SIZE + BLOCK_SIZE)


def test_a_pooled_buffer_is_never_reused_while_a_view_of_it_lives() -> None:
    """Buffers dropped from memory come back for reuse only once nothing uses them: a reader
    still holding a slice of a block keeps its bytes."""
    pool = BufferPool(_padded(BLOCK_SIZE), keep=4)
    first = pool.take(BLOCK_SIZE).data()
    first[:] = b"a" * BLOCK_SIZE
    reader = first[100:200]  # a reply still being built from the block
    pool.retire(first)
    del first
    second = pool.take(BLOCK_SIZE).data()
    second[:] = b"b" * BLOCK_SIZE
    assert bytes(reader) == b"a" * 100
    assert second.obj is not reader.obj
    owner = reader.obj
    pool.retire(second)
    del second, reader
    third = pool.take(BLOCK_SIZE)  # now free: the first retired one comes back
    assert third is owner
    pool.retire(memoryview(b"not a block buffer"))  # ignored
    short = pool.take(123)
    assert short.length == 123 and len(short) == _padded(123)
    # the process's pool keeps at most 64 MiB of block data (README, Fetching)
    assert POOL.keep * (POOL.size - HEADER_SIZE) <= 64 * MiB
    held = [new_block_buffer(BLOCK_SIZE).data() for _ in range(POOL.keep + 5)]
    for view in held:
        POOL.retire(view)
    assert len(POOL._retired) == POOL.keep


@pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="needs preadv2(RWF_NOWAIT)")
def test_a_nowait_load_reads_only_from_the_page_cache_and_tells_nothing(tmp_path: Path) -> None:
    """The event loop loads a block itself only when its file is in the page cache; a file
    that is not (or is damaged) is left to the blocking load, which tells and removes it."""
    cache = BlockCache(str(tmp_path / "c"), 1 << 30, min_free_ratio=0)
    data = os.urandom(2 * BLOCK_SIZE)
    obj = ObjectRef(hash_bytes(data), len(data))
    for i in range(2):
        assert cache.store_block(obj, i, data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
    path = Path(cache.path(cache.block_name(obj.hash, 0)))
    with pytest.raises(WouldBlock):  # written with O_DIRECT: not in the page cache
        cache.load_block(obj, 0, nowait=True)
    path.read_bytes()  # now it is
    got, _ = cache.load_block(obj, 0, nowait=True)
    assert bytes(got) == data[:BLOCK_SIZE]

    raw = bytearray(path.read_bytes())
    raw[HEADER_SIZE + 5] ^= 1
    path.write_bytes(bytes(raw))  # damaged, and in the page cache
    with pytest.raises(WouldBlock):
        cache.load_block(obj, 0, nowait=True)
    assert path.exists()  # the event loop removes nothing
    with pytest.raises(CorruptEntryError):
        cache.load_block(obj, 0)
    assert not path.exists()
    with pytest.raises(FileNotFoundError):  # a miss costs no thread either
        cache.load_block(obj, 0, nowait=True)
    p1 = Path(cache.path(cache.block_name(obj.hash, 1)))
    p1.write_bytes(p1.read_bytes() + b"x")  # extended by one byte
    with pytest.raises(WouldBlock):
        cache.load_block(obj, 1, nowait=True)
    with pytest.raises(CorruptEntryError, match="bytes, expected"):
        cache.load_block(obj, 1)


@pytest.mark.skipif(shutil.which("fincore") is None, reason="needs util-linux fincore")
def test_advised_block_files_are_read_into_the_page_cache(tmp_path: Path) -> None:
    cache = BlockCache(str(tmp_path / "c"), 1 << 30, min_free_ratio=0)
    data = os.urandom(3 * BLOCK_SIZE)
    obj = ObjectRef(hash_bytes(data), len(data))
    for i in range(3):
        assert cache.store_block(obj, i, data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
    paths = [Path(cache.path(cache.block_name(obj.hash, i))) for i in range(3)]
    assert [resident_bytes(p) for p in paths] == [0, 0, 0]  # written with O_DIRECT
    cache.advise_blocks(obj.hash, [0, 2, 7])  # 7 has no file: ignored
    deadline = time.monotonic() + 10
    while resident_bytes(paths[0]) == 0 or resident_bytes(paths[2]) == 0:
        assert time.monotonic() < deadline, "the kernel did not read the advised files"
        time.sleep(0.05)
    assert resident_bytes(paths[1]) == 0
