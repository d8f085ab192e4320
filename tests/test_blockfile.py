"""Block files written past the page cache (``O_DIRECT``): what is written reads back exactly
and passes every check, the page cache is not filled, a file system that refuses ``O_DIRECT``
is written the ordinary way, and a full disk loses nothing already cached and leaves no
temporary file."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfs.hashing import hash_bytes
from vfs.mount import blockfile
from vfs.mount.blockcache import BlockCache
from vfs.mount.blockfile import HEADER_SIZE, new_block_buffer
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
