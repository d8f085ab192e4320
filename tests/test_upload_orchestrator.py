""":class:`UploadOrchestrator` against the moto S3 server with real files: the small/large
split and multipart uploads, v2 chunks from byte ranges, cancellation, and deadline's
``download_files_from_manifests`` reading what we upload."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import S3Relay
from test_compat_deadline import ROOT_PREFIX, oracle
from test_upload import make_root

from vfs.hashing import hash_bytes
from vfs.manifest import (
    FILE_CHUNK_SIZE_BYTES,
    ManifestFilePath,
    ManifestV2,
    encode_manifest,
)
from vfs.storage import LocalStore, S3Options, S3Store, data_key
from vfs.storage.slices import SourceChangedError
from vfs.transfer import (
    DownloadOrchestrator,
    TransferProgress,
    UploadOrchestrator,
)
from vfs.transfer.upload import SMALL_FILE_THRESHOLD

MiB = 1024 * 1024
MTIME_US = 1_700_000_000_123_456


def s3_store(endpoint: str, bucket: str, prefix: str = "jobs/root") -> S3Store:
    return S3Store(bucket, prefix, S3Options(endpoint_url=endpoint))


def etag(s3_client: Any, bucket: str, key: str) -> str:
    return str(s3_client.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')


def body(s3_client: Any, bucket: str, key: str) -> bytes:
    data: bytes = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def test_official_threshold_is_160_mib() -> None:
    """deadline: ``S3_MULTIPART_UPLOAD_CHUNK_SIZE`` (8 MiB) × multiplier 20 (reference §8.3)."""
    assert 160 * MiB == SMALL_FILE_THRESHOLD


def test_large_files_go_multipart_small_ones_in_one_put(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, s3_client: Any
) -> None:
    root = tmp_path / "root"
    files = {
        "big.bin": random.Random(1).randbytes(12 * MiB + 123),  # > threshold: 3 parts of 5 MiB
        "mid.bin": random.Random(2).randbytes(9 * MiB),  # <= threshold: one PUT, streamed
        "small.bin": random.Random(3).randbytes(MiB),  # one PUT from memory
        "tiny.txt": b"small",
    }
    m = make_root(root, files)
    store = s3_store(s3_endpoint, s3_bucket)
    orch = UploadOrchestrator(store, small_file_threshold=10 * MiB, part_size=5 * MiB)
    stats = orch.upload_manifest(m, str(root))
    assert (stats.files_total, stats.files_transferred, stats.files_skipped) == (4, 4, 0)
    assert stats.bytes_transferred == sum(len(d) for d in files.values())
    for rel, data in files.items():
        key = f"jobs/root/{data_key(hash_bytes(data))}"
        assert body(s3_client, s3_bucket, key) == data, rel
    tags = {rel: etag(s3_client, s3_bucket, f"jobs/root/{data_key(hash_bytes(d))}")
            for rel, d in files.items()}  # fmt: skip
    assert tags["big.bin"].endswith("-3"), tags  # S3's multipart ETag: "{md5 of md5s}-{parts}"
    assert not any("-" in tags[rel] for rel in ("mid.bin", "small.bin", "tiny.txt")), tags
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []

    again = orch.upload_manifest(m, str(root))
    assert (again.files_transferred, again.files_skipped) == (0, 4)
    assert again.bytes_skipped == stats.bytes_transferred


def test_v2_chunks_uploaded_as_separate_objects_from_byte_ranges(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, s3_client: Any
) -> None:
    """Each chunk of a chunked v2 file is the object ``Data/{chunkhash}.xxh128`` holding
    bytes ``[i * chunk, (i + 1) * chunk)`` (reference §2); a repeated chunk is sent once.
    The format's chunk is 256 MiB; the test uses 6 MiB chunks (and 5 MiB parts, so the
    chunks above the 5 MiB threshold go multipart from a non-zero offset)."""
    chunk = 6 * MiB
    a = random.Random(3).randbytes(chunk)
    b = random.Random(4).randbytes(chunk)
    tail = random.Random(5).randbytes(MiB + 7)
    data = a + b + a + tail
    root = tmp_path / "root"
    root.mkdir()
    (root / "huge.bin").write_bytes(data)
    (root / "plain.txt").write_bytes(b"plain")
    parts = [a, b, a, tail]
    m = ManifestV2(
        files=[
            ManifestFilePath.chunked(
                "huge.bin", [hash_bytes(p) for p in parts], len(data), MTIME_US
            ),
            ManifestFilePath.file("plain.txt", hash_bytes(b"plain"), 5, MTIME_US),
            ManifestFilePath.symlink("link", "plain.txt"),
        ]
    )
    store = s3_store(s3_endpoint, s3_bucket)
    orch = UploadOrchestrator(
        store, chunk_size=chunk, small_file_threshold=5 * MiB, part_size=5 * MiB
    )
    stats = orch.upload_manifest(m, str(root))
    assert stats.files_total == stats.files_transferred == 4  # a, b, tail, plain
    assert stats.bytes_transferred == 2 * chunk + len(tail) + 5
    listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="jobs/root/")["Contents"]
    want = {f"jobs/root/{data_key(hash_bytes(p))}": p for p in (a, b, tail, b"plain")}
    assert sorted(o["Key"] for o in listed) == sorted(want)
    for key, content in want.items():
        assert body(s3_client, s3_bucket, key) == content
    assert etag(s3_client, s3_bucket, f"jobs/root/{data_key(hash_bytes(b))}").endswith("-2")

    # What was uploaded downloads back to the same file.
    dest = tmp_path / "dest"
    DownloadOrchestrator(store, verify_hash=True).download_manifest(
        ManifestV2(files=[m.files[1]]), str(dest)
    )
    assert (dest / "plain.txt").read_bytes() == b"plain"


def test_a_changed_chunk_is_refused_the_others_uploaded(tmp_path: Path) -> None:
    chunk = 5 * MiB
    parts = [random.Random(i).randbytes(chunk) for i in range(2)] + [b"end"]
    root = tmp_path / "root"
    root.mkdir()
    data = bytearray(b"".join(parts))
    m = ManifestV2(
        files=[
            ManifestFilePath.chunked("f.bin", [hash_bytes(p) for p in parts], len(data), MTIME_US)
        ]
    )
    data[chunk + 10] ^= 0xFF  # the second chunk changed after the manifest was made
    (root / "f.bin").write_bytes(data)
    store = LocalStore(str(tmp_path / "store"))
    from vfs.transfer import UploadIncompleteError

    with pytest.raises(UploadIncompleteError) as info:
        UploadOrchestrator(store, chunk_size=chunk).upload_manifest(m, str(root))
    assert f"bytes {chunk}+{chunk}" in str(info.value) and "changed since" in str(info.value)
    assert info.value.statistics.files_transferred == 2
    stored = {k for k, _ in store.list_keys("Data/")}
    assert stored == {data_key(hash_bytes(parts[0])), data_key(hash_bytes(parts[2]))}


def test_cancelling_callback_stops_small_uploads_promptly(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, s3_client: Any
) -> None:
    root = tmp_path / "root"
    files = {f"f{i:03d}.bin": random.Random(i).randbytes(4096) for i in range(300)}
    m = make_root(root, files)
    store = s3_store(s3_endpoint, s3_bucket)
    reports: list[TransferProgress] = []

    def progress(p: TransferProgress) -> bool:
        reports.append(p)
        return p.files_done < 10

    orch = UploadOrchestrator(store, workers=4, progress_interval=0.01)
    stats = orch.upload_manifest(m, str(root), progress=progress)
    assert stats.cancelled
    assert stats.errors == []
    listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="jobs/root/").get("Contents", [])
    # Only what was in flight when the callback said stop (at most one per worker) follows.
    assert 10 <= len(listed) == stats.files_transferred <= 10 + 4
    assert len(stats.paths) == stats.files_transferred


def test_cancelling_aborts_an_inflight_multipart_upload(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, s3_client: Any
) -> None:
    root = tmp_path / "root"
    files = {"big.bin": random.Random(9).randbytes(60 * MiB), "later.bin": b"x" * 9 * MiB}
    m = make_root(root, files)
    store = s3_store(s3_endpoint, s3_bucket)
    orch = UploadOrchestrator(
        store, small_file_threshold=1, part_size=5 * MiB, part_workers=1, progress_interval=0.01
    )
    seen: list[int] = []

    def progress(p: TransferProgress) -> bool:
        seen.append(p.bytes_done)
        return p.bytes_done == 0  # stop once the first part is sent

    t0 = time.monotonic()
    stats = orch.upload_manifest(m, str(root), progress=progress)
    elapsed = time.monotonic() - t0
    assert stats.cancelled and stats.files_transferred == 0
    assert stats.bytes_transferred > 0 or seen[-1] > 0
    assert s3_client.list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert elapsed < 20, elapsed


def test_what_we_upload_deadline_downloads_byte_exact(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    """Multipart and single-PUT objects we upload are read by deadline's
    ``download_files_from_manifests`` into the same bytes."""
    root = tmp_path / "root"
    files = {
        "scene/shot.ma": random.Random(7).randbytes(11 * MiB + 3),  # multipart below
        "scene/tex/wood.png": random.Random(8).randbytes(70_000),
        "caf\u00e9 space/n\u00e4me.txt": b"unicode name",
        "empty.dat": b"",
        "dup.txt": b"unicode name",
    }
    m = make_root(root, files)
    store = s3_store(s3_endpoint, s3_bucket, ROOT_PREFIX)
    orch = UploadOrchestrator(store, small_file_threshold=8 * MiB, part_size=5 * MiB)
    stats = orch.upload_manifest(m, str(root))
    assert stats.files_transferred == len(files) - 1
    mfile = tmp_path / "input.manifest"
    mfile.write_bytes(encode_manifest(m))
    theirs = tmp_path / "theirs"
    oracle(
        *("download", "--bucket", s3_bucket, "--root-prefix", ROOT_PREFIX),
        *("--endpoint", s3_endpoint, "--dest", str(theirs), str(mfile)),
        home=tmp_path / "home",
        env={"AWS_ENDPOINT_URL": s3_endpoint},
    )
    got = {
        p.relative_to(theirs).as_posix(): p.read_bytes() for p in theirs.rglob("*") if p.is_file()
    }
    assert got == files


def test_listing_replaces_heads_on_s3(
    tmp_path: Path, s3_bucket: str, s3_client: Any, s3_relay: S3Relay
) -> None:
    """From 100 objects on, one LIST request answers for 1,000 keys: no HEAD is sent, the
    objects listed with the right size are skipped, one of a wrong size is replaced."""
    root = tmp_path / "root"
    files = {f"f{i:03d}.bin": random.Random(i).randbytes(100 + i) for i in range(150)}
    m = make_root(root, files)
    present = list(files.values())[:20]
    for data in present:
        s3_client.put_object(Bucket=s3_bucket, Key=f"ja/{data_key(hash_bytes(data))}", Body=data)
    wrong = files["f140.bin"]
    s3_client.put_object(Bucket=s3_bucket, Key=f"ja/{data_key(hash_bytes(wrong))}", Body=b"x")
    s3_relay.seen.clear()
    stats = UploadOrchestrator(s3_store(s3_relay.url, s3_bucket, "ja")).upload_manifest(
        m, str(root)
    )
    assert (stats.files_skipped, stats.files_transferred) == (20, 130)
    methods = [r.method for r in s3_relay.seen]
    assert methods.count("HEAD") == 0
    assert methods.count("PUT") == 130
    lists = [r for r in s3_relay.seen if r.method == "GET" and "list-type=2" in r.path]
    assert len(lists) == 1 and "prefix=ja%2FData%2F" in lists[0].path
    got = s3_client.get_object(Bucket=s3_bucket, Key=f"ja/{data_key(hash_bytes(wrong))}")
    assert got["Body"].read() == wrong


def test_a_listing_stopped_by_its_budget_settles_only_keys_up_to_the_last_listed(
    tmp_path: Path, s3_bucket: str, s3_client: Any, s3_relay: S3Relay
) -> None:
    """Beyond its budget the listing stops; the keys after the last one listed (S3 lists
    in ascending order) are asked for with HEAD, so none is skipped or uploaded wrongly."""
    root = tmp_path / "root"
    files = {f"f{i:03d}.bin": random.Random(2000 + i).randbytes(64) for i in range(150)}
    m = make_root(root, files)
    keys = [data_key(hash_bytes(d)) for d in files.values()]
    for key, data in list(zip(keys, files.values(), strict=True))[::2]:
        s3_client.put_object(Bucket=s3_bucket, Key=f"ja/{key}", Body=data)
    last = sorted(keys[::2])[44]  # a budget of 150 × 0.0003 × 1000 = 45 keys
    s3_relay.seen.clear()
    orch = UploadOrchestrator(s3_store(s3_relay.url, s3_bucket, "ja"), list_budget=0.0003)
    stats = orch.upload_manifest(m, str(root))
    assert (stats.files_skipped, stats.files_transferred) == (75, 75)
    heads = [r.path for r in s3_relay.seen if r.method == "HEAD" and "/ja/" in r.path]
    assert len(heads) == sum(1 for k in keys if k > last)
    assert all(p.split("/ja/")[1] > last for p in heads)
    for key, data in zip(keys, files.values(), strict=True):
        assert s3_client.get_object(Bucket=s3_bucket, Key=f"ja/{key}")["Body"].read() == data


def test_an_unordered_listing_settles_only_what_it_found(tmp_path: Path) -> None:
    """A local directory lists in no particular order: a listing stopped early there
    settles only the keys it found; every other one is looked up."""
    store = LocalStore(str(tmp_path / "store"))
    rng = random.Random(5)
    for _ in range(1200):  # other objects of the CAS, spread over the key space
        store.put_bytes(data_key(f"{rng.getrandbits(128):032x}"), b"other")
    root = tmp_path / "root"
    files = {f"f{i:03d}.bin": random.Random(1000 + i).randbytes(64) for i in range(150)}
    m = make_root(root, files)
    present = list(files.values())[::2]
    for data in present:
        store.put_bytes(data_key(hash_bytes(data)), data)
    orch = UploadOrchestrator(store, list_existing=True, list_budget=0.001)  # 1,000 keys
    stats = orch.upload_manifest(m, str(root))
    assert (stats.files_skipped, stats.files_transferred) == (75, 75)
    for data in files.values():
        assert store.get_bytes(data_key(hash_bytes(data))) == data


@pytest.mark.parametrize("multipart", [False, True])
def test_a_file_shorter_than_its_range_fails_at_once_and_stores_nothing(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, s3_client: Any, multipart: bool
) -> None:
    """A file that shrank after it was hashed: the store refuses the range at once, naming
    the change, instead of announcing more bytes than it sends (the request would wait for
    them until the read timeout) or storing a short object."""
    path = tmp_path / "f.bin"
    path.write_bytes(random.Random(1).randbytes(7 * MiB))
    options = S3Options(endpoint_url=s3_endpoint, read_timeout=5, max_attempts=1)
    s3 = S3Store(s3_bucket, "r", options)
    local = LocalStore(str(tmp_path / "store"))
    fd = os.open(path, os.O_RDONLY)
    try:
        for store in (s3, local):
            t0 = time.monotonic()
            with pytest.raises(SourceChangedError) as info:
                store.put_file_range(
                    "Data/x.xxh128", fd, 0, 12 * MiB, multipart=multipart, part_size=5 * MiB
                )
            assert time.monotonic() - t0 < 15
            assert "shrank while it was being sent" in str(info.value)
    finally:
        os.close(fd)
    assert s3_client.list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert list(local.list_keys("")) == []


@pytest.mark.slow
def test_v2_chunks_of_the_real_256_mib_size(tmp_path: Path) -> None:
    """A file of 256 MiB + 1 KiB: two objects, the first exactly 268,435,456 bytes."""
    size = FILE_CHUNK_SIZE_BYTES + 1024
    root = tmp_path / "root"
    root.mkdir()
    with open(root / "huge.bin", "wb") as f:
        f.write(os.urandom(size))
    data = (root / "huge.bin").read_bytes()
    parts = [data[:FILE_CHUNK_SIZE_BYTES], data[FILE_CHUNK_SIZE_BYTES:]]
    hashes = [hash_bytes(p) for p in parts]
    del data, parts
    m = ManifestV2(files=[ManifestFilePath.chunked("huge.bin", hashes, size, MTIME_US)])
    store = LocalStore(str(tmp_path / "store"))
    stats = UploadOrchestrator(store).upload_manifest(m, str(root))
    assert stats.files_transferred == 2
    assert dict(store.list_keys("Data/")) == {
        data_key(hashes[0]): FILE_CHUNK_SIZE_BYTES,
        data_key(hashes[1]): 1024,
    }
