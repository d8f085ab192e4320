"""``vfs commit --manifest-version 2025-12-04-beta`` of files larger than one 256 MiB chunk:
the diff records ``chunkhashes`` (xxh128 of each 256 MiB piece, the last one shorter;
reference/job-attachments.md §2), each chunk is its own CAS object ``Data/{chunkhash}.xxh128``
and only the chunks the store lacks are uploaded; the commit log makes a second commit find
nothing; format 2023-03-03 keeps one whole-file hash and object."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from test_commit import PREFIX, Local, Mount, commit, put_base

from vfs.hashing import hash_bytes
from vfs.manifest import (
    FILE_CHUNK_SIZE_BYTES,
    MANIFEST_VERSION_V1,
    MANIFEST_VERSION_V2,
    ManifestFilePath,
    ManifestV2,
    decode_manifest,
    decode_manifest_v2,
    encode_manifest_v2,
)
from vfs.storage import LocalStore, data_key
from vfs.transfer import DownloadOrchestrator

CHUNK = FILE_CHUNK_SIZE_BYTES
MIB = 1024 * 1024
SIZE = 300 * MIB + 12_345  # two chunks, the second 44 MiB and a bit
MTIME = 1_750_000_000_000_001


def content(seed: bytes) -> bytes:
    """``SIZE`` bytes: one random MiB repeated, each copy made distinct by its number."""
    piece = os.urandom(MIB)
    return b"".join(i.to_bytes(4, "little") + seed + piece[4 + len(seed) :]
                    for i in range(SIZE // MIB + 1))[:SIZE]  # fmt: skip


def chunk_hashes(data: bytes) -> list[str]:
    """The expected ``chunkhashes``, hashed here slice by slice."""
    return [hash_bytes(data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]


def write(path: Path, data: bytes) -> None:
    """Write ``data`` sequentially in 8 MiB pieces (the mount records its hash)."""
    with open(path, "wb") as f:
        for i in range(0, len(data), 8 * MIB):
            f.write(data[i : i + 8 * MIB])


def entries(manifest: Path) -> dict[str, ManifestFilePath]:
    return {f.path: f for f in decode_manifest_v2(manifest.read_bytes()).files}


V2 = ("--manifest-version", MANIFEST_VERSION_V2)


@pytest.fixture()
def local(tmp_path: Path, vfs_mount: Mount, local_store: tuple[Path, str]) -> Local:
    return Local(tmp_path, vfs_mount, local_store)


def test_new_big_output_is_chunked(tmp_path: Path, local: Local) -> None:
    m = local.mount()
    big = content(b"new")
    (m.path / "out").mkdir(exist_ok=True)
    write(m.path / "out" / "render.exr", big)
    got = commit(str(m.path), "--output", str(tmp_path / "o1"), *V2)
    assert got["files"] == 1 and got["bytes"] == SIZE
    assert got["uploaded"] == 2 and got["uploaded_bytes"] == SIZE
    # The whole-file hash the mount recorded does not give the chunk hashes: read once.
    assert got["hashed"] == 1 and got["hash_reused"] == 0
    entry = entries(tmp_path / "o1")["out/render.exr"]
    assert entry.hash is None and entry.size == SIZE
    assert list(entry.chunkhashes or ()) == chunk_hashes(big)
    for i, h in enumerate(entry.chunkhashes or ()):  # each chunk its own object, byte-exact
        assert (local.store_dir / data_key(h)).read_bytes() == big[i * CHUNK : (i + 1) * CHUNK]
    # Our downloader puts the chunks back together.
    dest = tmp_path / "dest"
    orch = DownloadOrchestrator(LocalStore(str(local.store_dir)), verify_hash=True)
    orch.download_manifest(ManifestV2(files=[entry]), str(dest))
    assert (dest / "out" / "render.exr").read_bytes() == big
    # The commit log holds the chunk list: nothing new the second time, and the chunk list
    # of the recorded whole-file hash is known: not read again.
    again = commit(str(m.path), "--output", str(tmp_path / "o2"), *V2)
    assert again["files"] == 0 and again["uploaded"] == 0 and again["manifest_hash"] is None
    assert again["hashed"] == 0 and again["hash_reused"] == 1
    assert not (tmp_path / "o2").exists()
    # A later change to the second chunk: found, and only that chunk goes up.
    with open(m.path / "out" / "render.exr", "r+b") as f:
        f.seek(CHUNK + 5 * MIB)
        f.write(b"\xff" * 4096)
    changed = bytearray(big)
    changed[CHUNK + 5 * MIB : CHUNK + 5 * MIB + 4096] = b"\xff" * 4096
    third = commit(str(m.path), "--output", str(tmp_path / "o3"), *V2)
    assert third["files"] == 1 and third["uploaded"] == 1 and third["skipped"] == 1
    assert third["hashed"] == 1
    assert list(entries(tmp_path / "o3")["out/render.exr"].chunkhashes or ()) == chunk_hashes(
        bytes(changed)
    )


@pytest.fixture()
def chunked_base(local: Local) -> tuple[Local, bytes]:
    """``local`` over a v2 base manifest holding a chunked ``plates/big.exr``, whose chunk
    objects are in the store, and ``tools/small.txt``."""
    big = content(b"base")
    store = LocalStore(str(local.store_dir))
    hashes = chunk_hashes(big)
    for i, h in enumerate(hashes):
        store.put_bytes(data_key(h), big[i * CHUNK : (i + 1) * CHUNK])
    small = b"small\n"
    store.put_bytes(data_key(hash_bytes(small)), small)
    base = ManifestV2(files=[
        ManifestFilePath.chunked("plates/big.exr", hashes, SIZE, MTIME),
        ManifestFilePath.file("tools/small.txt", hash_bytes(small), len(small), MTIME),
    ])  # fmt: skip
    local.manifest.write_bytes(encode_manifest_v2(base))
    return local, big


def test_patched_chunked_base_file(tmp_path: Path, chunked_base: tuple[Local, bytes]) -> None:
    local, big = chunked_base
    m = local.mount()
    at = CHUNK + 7 * MIB + 5  # 4 KiB into the second chunk; the rest stays in the base
    patch = os.urandom(4096)
    with open(m.path / "plates" / "big.exr", "r+b") as f:
        f.seek(at)
        f.write(patch)
    now = bytearray(big)
    now[at : at + 4096] = patch
    expected = chunk_hashes(bytes(now))
    assert expected[0] == chunk_hashes(big)[0] and expected[1] != chunk_hashes(big)[1]
    got = commit(str(m.path), "--output", str(tmp_path / "v2"), *V2)
    # Only the changed chunk is uploaded: the first one's object is the base's.
    assert got["files"] == 1 and got["uploaded"] == 1 and got["skipped"] == 1
    assert got["uploaded_bytes"] == SIZE - CHUNK
    diff = decode_manifest_v2((tmp_path / "v2").read_bytes())
    assert diff.parent_manifest_hash == hash_bytes(local.manifest.read_bytes())
    entry = {f.path: f for f in diff.files}["plates/big.exr"]
    assert entry.hash is None and list(entry.chunkhashes or ()) == expected
    assert (local.store_dir / data_key(expected[1])).read_bytes() == bytes(now[CHUNK:])
    # Format 2023-03-03: the same file with one whole-file hash and one object.
    v1 = commit(str(m.path), "--output", str(tmp_path / "v1"),
                "--manifest-version", MANIFEST_VERSION_V1)  # fmt: skip
    assert v1["files"] == 1 and v1["uploaded"] == 1 and v1["uploaded_bytes"] == SIZE
    (path,) = decode_manifest((tmp_path / "v1").read_bytes()).paths
    assert (path.path, path.hash, path.size) == ("plates/big.exr", hash_bytes(bytes(now)), SIZE)
    assert (local.store_dir / data_key(path.hash)).read_bytes() == bytes(now)


def test_mode_change_and_rename_of_chunked_base_files(
    tmp_path: Path, chunked_base: tuple[Local, bytes]
) -> None:
    """A chmod only: the entry keeps the base's chunk list (known, not read) and the
    execute bit; then renamed: an output at its new path with the same chunk list, not
    read; nothing is uploaded."""
    local, big = chunked_base
    m = local.mount()
    os.chmod(m.path / "plates" / "big.exr", 0o755)
    got = commit(str(m.path), "--output", str(tmp_path / "o1"), *V2)
    assert got["files"] == 0 and got["mode_changes"] == 1 and got["hashed"] == 0
    entry = entries(tmp_path / "o1")["plates/big.exr"]
    assert entry.runnable and entry.hash is None
    assert list(entry.chunkhashes or ()) == chunk_hashes(big)
    os.rename(m.path / "plates" / "big.exr", m.path / "plates" / "moved.exr")
    moved = commit(str(m.path), "--output", str(tmp_path / "o3"), *V2)
    assert moved["files"] == 1 and moved["deleted"] == 1 and moved["hashed"] == 0
    assert moved["uploaded"] == 0 and moved["skipped"] == 2
    entry = entries(tmp_path / "o3")["plates/moved.exr"]
    assert list(entry.chunkhashes or ()) == chunk_hashes(big) and entry.size == SIZE
    again = commit(str(m.path), "--output", str(tmp_path / "o2"), *V2)
    assert again["manifest_hash"] is None


def test_chunks_go_to_s3_as_their_own_objects(
    tmp_path: Path, s3_endpoint: str, s3_client: Any, s3_bucket: str, vfs_mount: Mount
) -> None:
    """Over S3 (moto): each chunk is sent from its byte range (a multipart upload of 8 MiB
    parts for the 256 MiB chunk) and lands as its own object, byte-exact."""
    base = put_base(s3_client, s3_bucket, tmp_path)
    overlay = str(tmp_path / "overlay")
    m = vfs_mount(tmp_path / "mnt", [base], f"s3://{s3_bucket}/{PREFIX}", "--writable",
                  "--overlay-dir", overlay, "--endpoint-url", s3_endpoint)  # fmt: skip
    big = content(b"s3")
    write(m.path / "out.exr", big)
    out = tmp_path / "o1"
    got = commit(str(m.path), "--output", str(out), "--endpoint-url", s3_endpoint, *V2)
    assert got["files"] == 1 and got["uploaded"] == 2 and got["uploaded_bytes"] == SIZE
    expected = chunk_hashes(big)
    assert list(entries(out)["out.exr"].chunkhashes or ()) == expected
    for i, h in enumerate(expected):
        obj = s3_client.get_object(Bucket=s3_bucket, Key=f"{PREFIX}/{data_key(h)}")
        assert hash_bytes(obj["Body"].read()) == h == hash_bytes(big[i * CHUNK : (i + 1) * CHUNK])
    again = commit(str(m.path), "--output", str(tmp_path / "o2"), "--endpoint-url", s3_endpoint,
                   *V2)  # fmt: skip
    assert again["manifest_hash"] is None and again["uploaded"] == 0
