"""The S3 check cache: 30-day expiry on an injected clock, deadline's key format, integrity
sampling against the moto S3 server, and corruption recovery."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import pytest

from vfs.storage import (
    LocalStore,
    S3CheckCache,
    S3Options,
    S3Store,
    check_cache_key,
    data_key,
    reset_check_cache_if_stale,
    verify_check_cache_integrity,
)

DAY = 86400.0
T0 = 1_700_000_000.0
ROOT_PREFIX = "DeadlineCloud"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_entries_expire_after_30_days(tmp_path: Path) -> None:
    clock = Clock(T0)
    with S3CheckCache(tmp_path, clock=clock) as cache:
        cache.put("bucket/Data/a.xxh128")
        assert cache.contains("bucket/Data/a.xxh128")
        assert cache.last_seen("bucket/Data/a.xxh128") == T0
        assert not cache.contains("bucket/Data/b.xxh128")
        clock.now = T0 + 30 * DAY - 1  # 29 days 23:59:59 old: still counts
        assert cache.contains("bucket/Data/a.xxh128")
        clock.now = T0 + 30 * DAY  # 30 whole days: deadline's `.days < 30` fails
        assert not cache.contains("bucket/Data/a.xxh128")
        assert cache.fresh_keys(["bucket/Data/a.xxh128"]) == set()
        cache.put("bucket/Data/a.xxh128")  # seen again: fresh again
        assert cache.contains("bucket/Data/a.xxh128")
        clock.now = T0 - DAY  # the clock went back: deadline still accepts the entry
        assert cache.contains("bucket/Data/a.xxh128")
        assert len(cache) == 1


def test_expiry_is_configurable_and_batches_work(tmp_path: Path) -> None:
    clock = Clock(T0)
    with S3CheckCache(tmp_path, clock=clock, expiry_days=1) as cache:
        keys = [f"b/Data/{i:032x}.xxh128" for i in range(1100)]
        cache.put_many(keys[:600])
        clock.now = T0 + 0.5 * DAY
        cache.put_many(keys[600:])
        assert cache.fresh_keys([*keys, "b/other"]) == set(keys)
        clock.now = T0 + 1.2 * DAY
        assert cache.fresh_keys(keys) == set(keys[600:])
        cache.remove(keys[700])
        assert not cache.contains(keys[700])
        cache.reset()
        assert len(cache) == 0
        assert Path(cache.path).name == "vfs_s3_check_cache.db"


def test_key_format_matches_deadline(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    """``{bucket}/{rootPrefix}/Data/{hash}.xxh128``, as deadline's ``verify_hash_cache_integrity``
    builds it from ``JobAttachmentS3Settings.full_cas_prefix()``."""
    from deadline.job_attachments._utils import _join_s3_paths
    from deadline.job_attachments.models import JobAttachmentS3Settings

    h = "0123456789abcdef0123456789abcdef"
    store = S3Store(s3_bucket, ROOT_PREFIX, S3Options(endpoint_url=s3_endpoint))
    settings = JobAttachmentS3Settings(s3_bucket, ROOT_PREFIX)
    expected = f"{s3_bucket}/{_join_s3_paths(settings.full_cas_prefix(), f'{h}.xxh128')}"
    assert check_cache_key(store, data_key(h)) == expected
    local = LocalStore(str(tmp_path))
    assert check_cache_key(local, data_key(h)) == str(tmp_path / "Data" / f"{h}.xxh128")


def count_heads(store: S3Store) -> list[str]:
    """Record the key of every HEAD the store's client sends (observing only)."""
    heads: list[str] = []

    def before_call(params: dict[str, Any], **_: Any) -> None:
        heads.append(params["Key"])

    store.client.meta.events.register("provide-client-params.s3.HeadObject", before_call)
    return heads


@pytest.fixture()
def s3_store(s3_endpoint: str, s3_bucket: str) -> S3Store:
    return S3Store(s3_bucket, ROOT_PREFIX, S3Options(endpoint_url=s3_endpoint))


def test_integrity_sampling_against_s3(s3_store: S3Store, s3_client: Any, tmp_path: Path) -> None:
    hashes = [f"{i:032x}" for i in range(60)]
    keys = [data_key(h) for h in hashes]
    for k in keys[:50]:
        s3_store.put_bytes(k, b"x")
    with S3CheckCache(tmp_path) as cache:
        # Nothing cached: nothing to check, nothing HEADed.
        heads = count_heads(s3_store)
        assert verify_check_cache_integrity(cache, s3_store, keys)
        assert heads == []
        # 50 cached keys that exist: exactly 30 are sampled, all present.
        cache.put_many(check_cache_key(s3_store, k) for k in keys[:50])
        assert verify_check_cache_integrity(cache, s3_store, keys, rng=random.Random(1))
        assert len(heads) == 30 and len(set(heads)) == 30
        assert set(heads) <= {s3_store.full_key(k) for k in keys[:50]}
        # Uncached keys are never sampled, even when they are missing from S3.
        assert all(s3_store.full_key(k) not in heads for k in keys[50:])


def test_missing_object_resets_the_cache(
    s3_store: S3Store, s3_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = [data_key(f"{i:032x}") for i in range(20)]
    for k in keys:
        s3_store.put_bytes(k, b"x")
    with S3CheckCache(tmp_path) as cache:
        cache.put_many(check_cache_key(s3_store, k) for k in keys)
        assert reset_check_cache_if_stale(cache, s3_store, keys)
        assert len(cache) == 20
        # Someone deletes an object behind the cache's back (a lifecycle rule, a cleanup).
        s3_client.delete_object(Bucket=s3_store.bucket, Key=s3_store.full_key(keys[7]))
        assert not verify_check_cache_integrity(cache, s3_store, keys)  # 20 < 30: all sampled
        with caplog.at_level(logging.WARNING, logger="vfs.storage.check_cache"):
            assert not reset_check_cache_if_stale(cache, s3_store, keys)
        assert len(cache) == 0
        assert any("resetting" in r.message for r in caplog.records)


def test_store_error_during_sampling_resets(tmp_path: Path) -> None:
    """A HEAD that fails (not a clean 'missing') also fails the check, as in deadline."""
    store = LocalStore(str(tmp_path / "store"))
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "Data").write_bytes(b"a file where the Data folder should be")
    key = data_key("f" * 32)
    with S3CheckCache(tmp_path / "cache") as cache:
        cache.put(check_cache_key(store, key))
        assert not reset_check_cache_if_stale(cache, store, [key])
        assert len(cache) == 0


def test_corrupt_database_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / S3CheckCache.FILE_NAME).write_bytes(b"\x00garbage" * 1000)
    with S3CheckCache(tmp_path) as cache:
        cache.put("b/k")
        assert cache.contains("b/k")
    assert len(list(tmp_path.glob(S3CheckCache.FILE_NAME + ".corrupt-*Z"))) == 1
