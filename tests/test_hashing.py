"""xxh128 hashing against xxhash itself, deadline's hash functions and the xxhsum tool."""

from __future__ import annotations

import io
import itertools
import os
import random
import subprocess
from pathlib import Path

import pytest
import xxhash
from conftest import require_tool
from deadline.job_attachments.asset_manifests.hash_algorithms import (
    HashAlgorithm,
    hash_data,
)
from deadline.job_attachments.asset_manifests.hash_algorithms import (
    hash_file as dl_hash_file,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from vfs.hashing import (
    EMPTY_HASH,
    FILE_BUFFER_SIZE,
    ChunkHasher,
    hash_bytes,
    hash_file,
    hash_stream,
    hash_string,
)

SIZES = {
    "empty": 0,
    "small": 1234,
    "one_buffer": FILE_BUFFER_SIZE,
    "large": 20 * 1024 * 1024 + 3,
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, bytes]]:
    d = tmp_path_factory.mktemp("hashing")
    out = {}
    for name, size in SIZES.items():
        data = random.Random(size).randbytes(size)
        p = d / f"{name}.bin"
        p.write_bytes(data)
        out[name] = (p, data)
    return out


def test_empty_hash_constant() -> None:
    assert EMPTY_HASH == "99aa06d3014798d86001c324468d497f"
    assert hash_bytes(b"") == EMPTY_HASH
    assert hash_data(b"", HashAlgorithm.XXH128) == EMPTY_HASH


@pytest.mark.parametrize("name", list(SIZES))
def test_hash_file_matches_xxhash_and_deadline(
    files: dict[str, tuple[Path, bytes]], name: str
) -> None:
    path, data = files[name]
    assert len(data) == SIZES[name]
    expected = xxhash.xxh3_128(data).hexdigest()
    assert len(expected) == 32 and expected == expected.lower()
    assert hash_file(path) == expected
    assert hash_file(str(path)) == expected
    assert dl_hash_file(str(path), HashAlgorithm.XXH128) == expected
    assert hash_bytes(data) == expected
    assert hash_bytes(bytearray(data)) == expected
    assert hash_bytes(memoryview(data)) == expected
    assert hash_data(data, HashAlgorithm.XXH128) == expected
    assert format(xxhash.xxh3_128_intdigest(data), "032x") == expected


@pytest.mark.parametrize("buffer_size", [1, 7, 8192, 1 << 20])
def test_hash_is_independent_of_buffer_size(
    files: dict[str, tuple[Path, bytes]], buffer_size: int
) -> None:
    name = "small" if buffer_size < 8192 else "large"
    path, data = files[name]
    assert hash_file(path, buffer_size) == xxhash.xxh3_128(data).hexdigest()
    digest, n = hash_stream(io.BytesIO(data), buffer_size)
    assert (digest, n) == (xxhash.xxh3_128(data).hexdigest(), len(data))


def test_matches_xxhsum_h2(files: dict[str, tuple[Path, bytes]]) -> None:
    xxhsum = require_tool("xxhsum", "xxhash")
    names = list(SIZES)
    paths = [str(files[n][0]) for n in names]
    out = subprocess.run([xxhsum, "-H2", *paths], capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert len(lines) == len(names)
    for line, path in zip(lines, paths, strict=True):
        digest, _, shown = line.partition("  ")
        assert shown == path
        assert hash_file(path) == digest.lower()


def test_hash_string_is_utf8_like_deadline() -> None:
    for root in ["/mnt/projects/show", "C:\\Users\\me", "/mnt/caf\u00e9/\U0001f600"]:
        expected = hash_data(root.encode("utf-8"), HashAlgorithm.XXH128)
        assert hash_string(root) == expected
    with pytest.raises(UnicodeEncodeError):
        hash_string(os.fsdecode(b"/bad/\xff"))


def test_hash_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        hash_file(tmp_path / "missing")
    with pytest.raises(IsADirectoryError):
        hash_file(tmp_path)


def test_hash_file_follows_symlinks(files: dict[str, tuple[Path, bytes]], tmp_path: Path) -> None:
    path, data = files["small"]
    link = tmp_path / "link"
    link.symlink_to(path)
    assert hash_file(link) == xxhash.xxh3_128(data).hexdigest()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=5000))
def test_random_data(data: bytes) -> None:
    assert hash_bytes(data) == hash_data(data, HashAlgorithm.XXH128)
    assert hash_stream(io.BytesIO(data), 97)[0] == hash_bytes(data)


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=300),
    chunk_size=st.integers(min_value=1, max_value=64),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=8),
)
def test_chunk_hasher_matches_per_slice_hashes(data: bytes, chunk_size: int,
                                               cuts: list[int]) -> None:  # fmt: skip
    """Fed in any slices, ChunkHasher gives the xxh128 of each ``chunk_size`` piece (the
    last one shorter, none for no bytes), as format 2025-12-04-beta's chunkhashes."""
    hasher = ChunkHasher(chunk_size)
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for lo, hi in itertools.pairwise(bounds):
        hasher.update(data[lo:hi])
    expected = [xxhash.xxh3_128_hexdigest(data[i : i + chunk_size])
                for i in range(0, len(data), chunk_size)]  # fmt: skip
    assert hasher.digests() == expected
    assert hasher.hexdigest() == ",".join(expected)
