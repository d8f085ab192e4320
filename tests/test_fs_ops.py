"""The FUSE operations without the kernel (S3QL's t3_fs_api.py style): ``ReadOnlyOperations``
called directly in a Trio run, over a real tree, block cache and ``file://`` store."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pyfuse3
import pytest
import trio

from vfs.hashing import hash_bytes
from vfs.manifest import Manifest, ManifestPath
from vfs.mount.blockcache import BlockCache
from vfs.mount.blocks import BLOCK_SIZE
from vfs.mount.fetcher import ContentFetcher
from vfs.mount.fs import ReadOnlyOperations
from vfs.mount.stats import MountStats
from vfs.mount.tree import ROOT_INODE, InodeTree
from vfs.storage import LocalStore, data_key


class Ctx:
    uid = gid = pid = umask = 0


def test_open_read_getattr_and_xattrs(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "store"))
    small, big = os.urandom(3000), os.urandom(2 * BLOCK_SIZE + 11)
    for d in (small, big):
        store.put_bytes(data_key(hash_bytes(d)), d)
    tree = InodeTree.from_manifests(
        [Manifest([ManifestPath("d/small", hash_bytes(small), len(small), 5),
                   ManifestPath("d/big", hash_bytes(big), len(big), 6)])],
        ["m.json"],
    )  # fmt: skip
    stats = MountStats()

    async def main() -> None:
        fetcher = ContentFetcher(BlockCache(str(tmp_path / "c"), 1 << 30), store, stats)
        ops = ReadOnlyOperations(tree, fetcher, stats)
        ctx = Ctx()
        async with trio.open_nursery() as nursery:
            fetcher.attach(nursery)
            d = await ops.lookup(ROOT_INODE, b"d", ctx)  # type: ignore[arg-type]
            s_ino = (await ops.lookup(d.st_ino, b"small", ctx)).st_ino  # type: ignore[arg-type]
            b_ino = (await ops.lookup(d.st_ino, b"big", ctx)).st_ino  # type: ignore[arg-type]
            assert (await ops.lookup(d.st_ino, b"nope", ctx)).st_ino == 0  # type: ignore[arg-type]
            attrs = await ops.getattr(b_ino, ctx)  # type: ignore[arg-type]
            assert attrs.st_size == len(big) and attrs.st_mtime_ns == 6000

            small_fi = await ops.open(s_ino, os.O_RDONLY, ctx)  # type: ignore[arg-type]
            assert small_fi.keep_cache  # a small object is checked before it is served
            assert bytes(await ops.read(small_fi.fh, 0, 1 << 20)) == small
            assert await ops.read(small_fi.fh, len(small), 10) == b""

            big_fi = await ops.open(b_ino, os.O_RDONLY, ctx)  # type: ignore[arg-type]
            assert not big_fi.keep_cache  # not verified yet
            got = bytes(await ops.read(big_fi.fh, BLOCK_SIZE - 5, 20))
            assert got == big[BLOCK_SIZE - 5 : BLOCK_SIZE + 15]
            tail = bytes(await ops.read(big_fi.fh, len(big) - 3, 1000))
            assert tail == big[-3:]  # exactly to the end of the file
            assert bytes(await ops.read(big_fi.fh, 0, len(big))) == big
            await fetcher.drain(10)
            with trio.fail_after(10):
                while not fetcher.is_trusted(tree.file_parts(b_ino)):
                    await trio.sleep(0.01)
            again = await ops.open(b_ino, os.O_RDONLY, ctx)  # type: ignore[arg-type]
            assert again.keep_cache  # verified: the kernel may keep its pages

            with pytest.raises(pyfuse3.FUSEError) as e:
                await ops.open(b_ino, os.O_WRONLY, ctx)  # type: ignore[arg-type]
            assert e.value.errno == errno.EROFS
            assert await ops.getxattr(s_ino, b"user.vfs.hash", ctx) == hash_bytes(small).encode()  # type: ignore[arg-type]
            assert await ops.getxattr(s_ino, b"user.vfs.source", ctx) == b"m.json"  # type: ignore[arg-type]
            assert tree.inodes_with_hash(hash_bytes(big)) == [b_ino]
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert stats.counters.get("eio", 0) == 0
