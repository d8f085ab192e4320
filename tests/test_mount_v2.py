"""Mounting manifests of format 2025-12-04-beta: chunked files, symlinks, the execute bit,
explicit empty directories, and a diff manifest's delete markers."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from conftest import Mounted

from vfs.hashing import hash_bytes
from vfs.manifest.v2 import (
    ManifestDirectoryPath,
    ManifestFilePath,
    ManifestV2,
    encode_manifest_v2,
)
from vfs.mount.objects import CHUNK_SIZE
from vfs.storage import LocalStore, data_key

MTIME = 1_750_000_000_000_001


def test_v2_features_through_the_mount(
    tmp_path: Path,
    vfs_mount,  # type: ignore[no-untyped-def]
    local_store: tuple[Path, str],
) -> None:
    store = LocalStore(str(local_store[0]))
    piece = os.urandom(1024 * 1024)
    big = b"".join(bytes([i % 251]) + piece[1:] for i in range(257)) + b"tail"
    chunks = [big[i : i + CHUNK_SIZE] for i in range(0, len(big), CHUNK_SIZE)]
    for c in chunks:
        store.put_bytes(data_key(hash_bytes(c)), c)
    script = b"#!/bin/sh\necho ran from the mount\n"
    texts = {"real.txt": b"real content", "bin/run.sh": script, "gone.txt": b"deleted later"}
    for data in texts.values():
        store.put_bytes(data_key(hash_bytes(data)), data)

    base = ManifestV2(
        files=[
            ManifestFilePath.chunked(
                "plates/big.exr", [hash_bytes(c) for c in chunks], len(big), MTIME
            ),
            ManifestFilePath.file("real.txt", hash_bytes(texts["real.txt"]), 12, MTIME + 1),
            ManifestFilePath.file(
                "bin/run.sh", hash_bytes(script), len(script), MTIME + 2, runnable=True
            ),
            ManifestFilePath.file("gone.txt", hash_bytes(texts["gone.txt"]), 13, MTIME + 3),
            ManifestFilePath.symlink("link.txt", "real.txt"),
            ManifestFilePath.symlink("bin/up.txt", "../real.txt"),
        ],
        dirs=[ManifestDirectoryPath("empty/dir")],
    )
    base_bytes = encode_manifest_v2(base)
    diff = ManifestV2(
        files=[ManifestFilePath.deletion("gone.txt")],
        parent_manifest_hash=hash_bytes(base_bytes),
    )
    (tmp_path / "base.manifest").write_bytes(base_bytes)
    (tmp_path / "diff.manifest").write_bytes(encode_manifest_v2(diff))
    m: Mounted = vfs_mount(
        tmp_path / "mnt", [tmp_path / "base.manifest", tmp_path / "diff.manifest"], local_store[1]
    )

    big_path = m.path / "plates/big.exr"
    assert big_path.stat().st_size == len(big)
    assert big_path.stat().st_mtime_ns == MTIME * 1000
    with open(big_path, "rb") as f:
        for off, size in [(0, 4096), (CHUNK_SIZE - 3000, 6000), (len(big) - 10, 100)]:
            f.seek(off)
            assert f.read(size) == big[off : off + size], off
    assert os.getxattr(big_path, "user.vfs.hash").decode() == ",".join(
        hash_bytes(c) for c in chunks
    )

    assert os.readlink(m.path / "link.txt") == "real.txt"
    assert (m.path / "link.txt").read_bytes() == b"real content"
    assert (m.path / "bin/up.txt").read_bytes() == b"real content"
    assert stat.S_ISLNK(os.lstat(m.path / "link.txt").st_mode)

    run = m.path / "bin/run.sh"
    assert stat.S_IMODE(run.stat().st_mode) == 0o755
    assert stat.S_IMODE((m.path / "real.txt").stat().st_mode) == 0o644
    out = subprocess.run([str(run)], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout == "ran from the mount\n"

    assert (m.path / "empty/dir").is_dir()
    assert os.listdir(m.path / "empty/dir") == []
    assert not (m.path / "gone.txt").exists()  # removed by the diff manifest
