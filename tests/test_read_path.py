"""The read path through real mounts: blocks, coalescing, the cache bound, sharing, corruption,
crashes and faults. Objects are served by moto (through a recording relay) or a file:// store."""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import Mounted, S3Relay, force_unmount, pid_alive, run_vfs

from vfs.hashing import hash_bytes
from vfs.manifest import Manifest, ManifestPath, encode_manifest
from vfs.mount.blockfile import HEADER_SIZE
from vfs.mount.blocks import BLOCK_SIZE
from vfs.mount.fetcher import DEFAULT_POLICY
from vfs.mount.service import is_mounted
from vfs.storage import LocalStore, data_key

FAILURE_TTL = DEFAULT_POLICY.failure_ttl

MiB = 1024 * 1024


def write_manifest(path: Path, files: dict[str, bytes]) -> Path:
    entries = [
        ManifestPath(p, hash_bytes(d), len(d), 1_700_000_000_000_000 + i)
        for i, (p, d) in enumerate(sorted(files.items()))
    ]
    path.write_bytes(encode_manifest(Manifest(entries)))
    return path


def put_local(store_dir: Path, files: dict[str, bytes]) -> None:
    store = LocalStore(str(store_dir))
    for data in files.values():
        store.put_bytes(data_key(hash_bytes(data)), data)


def put_s3(s3_client, bucket: str, prefix: str, files: dict[str, bytes]) -> None:  # type: ignore[no-untyped-def]
    for data in files.values():
        s3_client.put_object(Bucket=bucket, Key=f"{prefix}/{data_key(hash_bytes(data))}", Body=data)


def stats(m: Mounted) -> dict[str, int]:
    return dict(json.loads(os.getxattr(m.path, "user.vfs.stats")))


def cache_bytes(cache: Path) -> int:
    total = 0
    for top in ("objects", "b", "tmp"):
        for dirpath, _, files in os.walk(cache / top):
            for f in files:
                with contextlib.suppress(FileNotFoundError):
                    total += os.stat(os.path.join(dirpath, f)).st_size
    return total


def parse_range(header: str | None) -> tuple[int, int]:
    """``bytes=a-b`` as the half-open span ``(a, b + 1)``."""
    assert header and header.startswith("bytes="), header
    a, b = header[len("bytes=") :].split("-")
    return int(a), int(b) + 1


def nblocks(size: int) -> int:
    return -(-size // BLOCK_SIZE)


def wait_for_entries(cache: Path, n: int, timeout: float = 10) -> None:
    """Wait until the cache index holds ``n`` entries (cache writes follow the reads)."""
    deadline = time.monotonic() + timeout
    while True:
        out = json.loads(run_vfs("cache", "stats", "--cache-dir", str(cache), "--json").stdout)
        if out["entries"] >= n or time.monotonic() > deadline:
            assert out["entries"] == n, out
            return
        time.sleep(0.1)


def test_large_file_is_fetched_in_blocks_and_read_exactly(
    tmp_path: Path,
    vfs_mount,  # type: ignore[no-untyped-def]
    local_store: tuple[Path, str],
) -> None:
    big = os.urandom(3 * BLOCK_SIZE + 12345)
    files = {"big.bin": big, "small.txt": b"small"}
    put_local(local_store[0], files)
    m = vfs_mount(tmp_path / "mnt", [write_manifest(tmp_path / "m", files)], local_store[1])
    assert os.getxattr(m.path / "big.bin", "user.vfs.cached") == b"0.0000"
    rng = random.Random(1)
    with open(m.path / "big.bin", "rb") as f:
        for _ in range(50):
            off = rng.randrange(len(big) + 100)
            size = rng.randrange(1, 3 * MiB)
            f.seek(off)
            assert f.read(size) == big[off : off + size]
    assert (m.path / "big.bin").read_bytes() == big
    s = stats(m)
    assert s["fetch.blocks"] == nblocks(len(big))  # every block fetched exactly once
    # cache writes follow the reads (in the background)
    deadline = time.monotonic() + 10
    while os.getxattr(m.path / "big.bin", "user.vfs.cached") != b"1.0000":
        assert time.monotonic() < deadline, os.getxattr(m.path / "big.bin", "user.vfs.cached")
        time.sleep(0.05)
    assert s.get("eio", 0) == 0
    assert "ERROR" not in m.log_text()


def test_64_concurrent_readers_cause_one_get_per_block(
    tmp_path: Path,
    vfs_mount,  # type: ignore[no-untyped-def]
    s3_client,  # type: ignore[no-untyped-def]
    s3_bucket: str,
    s3_relay: S3Relay,
) -> None:
    data = os.urandom(4 * BLOCK_SIZE + 999)
    small = os.urandom(100_000)
    files = {"shared.exr": data, "tex.png": small}
    put_s3(s3_client, s3_bucket, "DeadlineCloud", files)
    manifest = write_manifest(tmp_path / "m", files)
    m = vfs_mount(tmp_path / "mnt", [manifest], f"s3://{s3_bucket}/DeadlineCloud",
                  "--endpoint-url", s3_relay.url)  # fmt: skip
    results: list[bool] = []
    barrier = threading.Barrier(64)

    def reader(name: str, expected: bytes) -> None:
        barrier.wait()
        with open(m.path / name, "rb") as f:
            results.append(f.read() == expected)

    threads = [
        threading.Thread(target=reader, args=("shared.exr", data) if i % 2 else ("tex.png", small))
        for i in range(64)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [True] * 64
    # The ranged GETs (one per block, or one per readahead run of blocks) tile the object:
    # every byte was fetched exactly once, whatever the 64 readers did.
    spans = sorted(parse_range(r.range) for r in s3_relay.gets(hash_bytes(data)))
    assert spans[0][0] == 0 and spans[-1][1] == len(data), spans
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans)), spans
    assert all(start % BLOCK_SIZE == 0 for start, _ in spans)
    assert len(s3_relay.gets(hash_bytes(small))) == 1  # a small object: one whole GET


def test_cache_bound_holds_under_random_reads(
    tmp_path: Path,
    vfs_mount,  # type: ignore[no-untyped-def]
    local_store: tuple[Path, str],
) -> None:
    rng = random.Random(7)
    files = {
        f"plates/p{i}.exr": rng.randbytes(BLOCK_SIZE + rng.randrange(3 * MiB)) for i in range(6)
    }
    files |= {f"tex/t{i}.png": rng.randbytes(rng.randrange(1, 600_000)) for i in range(25)}
    put_local(local_store[0], files)
    limit = 3 * BLOCK_SIZE
    cache = tmp_path / "cache"
    m = vfs_mount(tmp_path / "mnt", [write_manifest(tmp_path / "m", files)], local_store[1],
                  "--cache-size", str(limit), cache_dir=cache)  # fmt: skip
    names = sorted(files)
    peak = 0
    for _ in range(250):
        name = rng.choice(names)
        data = files[name]
        off = rng.randrange(len(data))
        size = rng.randrange(1, 2 * MiB)
        with open(m.path / name, "rb", buffering=0) as f:
            f.seek(off)
            assert f.read(size) == data[off : off + size]
        peak = max(peak, cache_bytes(cache))
    assert peak <= limit + BLOCK_SIZE, (peak, limit)
    assert stats(m).get("eio", 0) == 0
    out = json.loads(run_vfs("cache", "stats", "--cache-dir", str(cache), "--json").stdout)
    assert out["bytes"] <= limit


def test_concurrent_mounts_share_one_cache(
    tmp_path: Path,
    vfs_mount,  # type: ignore[no-untyped-def]
    local_store: tuple[Path, str],
) -> None:
    rng = random.Random(3)
    files = {f"f{i}.bin": rng.randbytes(rng.randrange(1, 2 * BLOCK_SIZE)) for i in range(12)}
    put_local(local_store[0], files)
    manifest = write_manifest(tmp_path / "m", files)
    cache = tmp_path / "shared-cache"
    mounts = [
        vfs_mount(tmp_path / f"mnt{i}", [manifest], local_store[1], cache_dir=cache)
        for i in range(2)
    ]
    errors: list[str] = []

    def read_all(m: Mounted, order: list[str]) -> None:
        for name in order:
            if (m.path / name).read_bytes() != files[name]:
                errors.append(f"{m.path}/{name}")

    orders = [sorted(files), sorted(files, reverse=True)]
    threads = [
        threading.Thread(target=read_all, args=(m, o)) for m, o in zip(mounts, orders, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    wait_for_entries(cache, sum(nblocks(len(d)) for d in files.values()))
    third = vfs_mount(tmp_path / "mnt3", [manifest], local_store[1], cache_dir=cache)
    read_all(third, sorted(files))
    assert errors == []
    s = stats(third)
    assert s.get("fetch.objects", 0) == s.get("fetch.blocks", 0) == 0  # all from the cache


def test_corrupt_cache_entries_are_fetched_again(
    tmp_path: Path,
    vfs_mount,  # type: ignore[no-untyped-def]
    local_store: tuple[Path, str],
) -> None:
    files = {
        "small.bin": os.urandom(300_000),
        "big-flip.bin": os.urandom(2 * BLOCK_SIZE + 7),
        "big-trunc.bin": os.urandom(2 * BLOCK_SIZE + 9),
    }
    put_local(local_store[0], files)
    manifest = write_manifest(tmp_path / "m", files)
    cache = tmp_path / "cache"
    first = vfs_mount(tmp_path / "a", [manifest], local_store[1], cache_dir=cache)
    for name, data in files.items():
        assert (first.path / name).read_bytes() == data
    wait_for_entries(cache, sum(nblocks(len(d)) for d in files.values()))
    run_vfs("unmount", str(first.path))

    def flip(path: Path, at: int) -> None:
        raw = bytearray(path.read_bytes())
        raw[at] ^= 0x40
        path.write_bytes(bytes(raw))

    h = {n: hash_bytes(d) for n, d in files.items()}
    flip(cache / "objects" / h["small.bin"][:2] / h["small.bin"], 1000)
    flip(cache / "b" / h["big-flip.bin"][:2] / h["big-flip.bin"] / "1", HEADER_SIZE + 5)
    trunc = cache / "b" / h["big-trunc.bin"][:2] / h["big-trunc.bin"] / "0"
    trunc.write_bytes(trunc.read_bytes()[:-1])

    second = vfs_mount(tmp_path / "b", [manifest], local_store[1], cache_dir=cache)
    second.expect_log(r"WARNING vfs\.mount\.fetcher: cache entry .* is corrupt")
    for name, data in files.items():
        assert (second.path / name).read_bytes() == data, name
    s = stats(second)
    assert s["cache.corrupt"] == 3  # each damaged entry is caught on load, never served
    assert s.get("verify.failed", 0) == 0
    assert s.get("eio", 0) == 0
    log = second.log_text()
    assert "is corrupt" in log and data_key(h["big-flip.bin"]) in log


def test_kill_9_then_remount_reuses_the_cache(
    tmp_path: Path,
    vfs_mount,  # type: ignore[no-untyped-def]
    local_store: tuple[Path, str],
) -> None:
    files = {"a.bin": os.urandom(500_000), "b.bin": os.urandom(BLOCK_SIZE + 5)}
    put_local(local_store[0], files)
    manifest = write_manifest(tmp_path / "m", files)
    cache = tmp_path / "cache"
    first = vfs_mount(tmp_path / "a", [manifest], local_store[1], cache_dir=cache)
    for name, data in files.items():
        assert (first.path / name).read_bytes() == data
    wait_for_entries(cache, 1 + nblocks(BLOCK_SIZE + 5))  # cache writes follow the reads
    os.kill(first.pid, signal.SIGKILL)
    for _ in range(100):
        if not pid_alive(first.pid):
            break
        time.sleep(0.05)
    force_unmount(str(first.path))
    assert not is_mounted(str(first.path))
    second = vfs_mount(tmp_path / "b", [manifest], local_store[1], cache_dir=cache)
    for name, data in files.items():
        assert (second.path / name).read_bytes() == data
    s = stats(second)
    assert s.get("fetch.objects", 0) == s.get("fetch.blocks", 0) == 0
    assert s["cache.hits"] >= 2


def test_backend_down_serves_cached_data_and_fails_uncached_reads_in_time(
    tmp_path: Path,
    vfs_mount,  # type: ignore[no-untyped-def]
    s3_client,  # type: ignore[no-untyped-def]
    s3_bucket: str,
    s3_relay: S3Relay,
) -> None:
    files = {"cached.bin": os.urandom(200_000), "uncached.bin": os.urandom(200_000)}
    put_s3(s3_client, s3_bucket, "p", files)
    manifest = write_manifest(tmp_path / "m", files)
    store = f"s3://{s3_bucket}/p"
    cache = tmp_path / "cache"
    args = ("--endpoint-url", s3_relay.url, "--fetch-timeout", "4")
    first = vfs_mount(tmp_path / "a", [manifest], store, *args, cache_dir=cache)
    assert (first.path / "cached.bin").read_bytes() == files["cached.bin"]
    s3_relay.down = True
    # A second mount has nothing in the page cache: its reads reach the daemon.
    second = vfs_mount(tmp_path / "b", [manifest], store, *args, cache_dir=cache)
    second.expect_log(r"WARNING vfs\.mount\.fetcher: fetch of .* failed .*ServiceUnavailable")
    second.expect_log(r"ERROR vfs\.mount\.fs: read of uncached\.bin failed: ")  # 503 or timeout
    second.expect_log(r"WARNING vfs\.mount\.service: the store did not answer a first HEAD")
    assert (second.path / "cached.bin").read_bytes() == files["cached.bin"]
    start = time.monotonic()
    with pytest.raises(OSError) as e:
        (second.path / "uncached.bin").read_bytes()
    elapsed = time.monotonic() - start
    assert e.value.errno == errno.EIO
    assert elapsed < 15, elapsed
    assert data_key(hash_bytes(files["uncached.bin"])) in second.log_text()
    s3_relay.down = False  # the mount recovers with the backend (after the failure TTL)
    time.sleep(FAILURE_TTL + 0.2)
    assert (second.path / "uncached.bin").read_bytes() == files["uncached.bin"]


def test_injected_503s_are_retried_without_errors(
    tmp_path: Path,
    vfs_mount,  # type: ignore[no-untyped-def]
    s3_client,  # type: ignore[no-untyped-def]
    s3_bucket: str,
    s3_relay: S3Relay,
) -> None:
    rng = random.Random(11)
    files = {f"f{i}": rng.randbytes(rng.randrange(1, BLOCK_SIZE * 2)) for i in range(10)}
    put_s3(s3_client, s3_bucket, "p", files)
    s3_relay.fail_ratio = 0.1
    m = vfs_mount(tmp_path / "mnt", [write_manifest(tmp_path / "m", files)], f"s3://{s3_bucket}/p",
                  "--endpoint-url", s3_relay.url)  # fmt: skip
    # Retries are logged; nothing else may be, but for the start-up check's one HEAD, which
    # a 503 may hit too (it tells and mounts anyway: reads retry).
    m.expect_log(r"WARNING vfs\.mount\.fetcher: fetch of .* failed \(attempt \d+\): .*Service")
    m.expect_log(r"WARNING vfs\.mount\.service: the store did not answer a first HEAD .*503")
    for name, data in files.items():
        assert (m.path / name).read_bytes() == data
    assert stats(m).get("eio", 0) == 0


def test_stats_and_cache_commands(
    tmp_path: Path,
    vfs_mount,  # type: ignore[no-untyped-def]
    local_store: tuple[Path, str],
) -> None:
    files = {"a/x.bin": os.urandom(50_000), "b/y.bin": os.urandom(BLOCK_SIZE + 1)}
    put_local(local_store[0], files)
    manifest = write_manifest(tmp_path / "m", files)
    cache = tmp_path / "cache"
    out = run_vfs("cache", "warm", "--manifest", str(manifest), "--store", local_store[1],
                  "--cache-dir", str(cache), "--json").stdout  # fmt: skip
    warmed = json.loads(out)
    assert warmed["objects"] == 2 and warmed["fetched_bytes"] == sum(map(len, files.values()))
    m = vfs_mount(tmp_path / "mnt", [manifest], local_store[1], cache_dir=cache)
    for name, data in files.items():
        assert (m.path / name).read_bytes() == data
    counters = json.loads(run_vfs("stats", str(m.path), "--json").stdout)
    assert counters.get("fetch.objects", 0) == counters.get("fetch.blocks", 0) == 0
    assert counters["req.read"] > 0 and counters["cache.hits"] > 0
    assert "cache.hit_ratio" in run_vfs("stats", str(m.path)).stdout
    bad = run_vfs("stats", str(tmp_path), check=False)
    assert bad.returncode != 0 and "not a vfs mount" in bad.stderr
    run_vfs("unmount", str(m.path))
    stats_out = json.loads(run_vfs("cache", "stats", "--cache-dir", str(cache), "--json").stdout)
    assert stats_out["entries"] == 1 + nblocks(BLOCK_SIZE + 1)
    pruned = json.loads(
        run_vfs("cache", "prune", "--all", "--cache-dir", str(cache), "--json").stdout
    )
    assert pruned["entries"] == 0 and pruned["bytes"] == 0
