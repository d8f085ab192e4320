"""Uploading the CAS objects of a manifest.

Format facts (reference/job-attachments.md §8.3, deadline ``upload.py``): each file goes to
``{rootPrefix}/Data/{hash}.xxh128``; an object that already exists is not uploaded again
(deadline HEADs it; vfs also compares the size). Unlike deadline, vfs re-hashes every file
before uploading it: a file changed since the manifest was made would otherwise poison the
content-addressed store with content under the wrong hash.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from vfs.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    EndpointError,
    StoreError,
    UploadError,
    VfsError,
)
from vfs.hashing import hash_file
from vfs.manifest import Manifest, ManifestPath
from vfs.storage import ObjectStore, data_key
from vfs.storage.check_cache import S3CheckCache, check_cache_key, reset_check_cache_if_stale

log = logging.getLogger(__name__)

FATAL_ERRORS = (BucketNotFoundError, AccessDeniedError, EndpointError)
"""Store errors every other object would meet too: the upload stops at the first."""


@dataclass(slots=True)
class UploadSummary:
    """Outcome of an upload: counts of distinct objects and their bytes."""

    objects: int = 0
    uploaded: int = 0
    uploaded_bytes: int = 0
    skipped: int = 0
    skipped_bytes: int = 0


def upload_manifest_files(
    manifest: Manifest,
    root: str,
    store: ObjectStore,
    *,
    workers: int = 8,
    on_object: Callable[[ManifestPath, bool], None] | None = None,
    check_cache: S3CheckCache | None = None,
) -> UploadSummary:
    """Upload the content of every file of ``manifest``, read from under ``root``.

    Each distinct hash is handled once: skipped when the store has an object of the right
    size, else a local file with that content is hashed, compared with the manifest, and
    uploaded (when several files share the content, the next is tried if one is missing or
    changed).
    ``on_object(entry, uploaded)`` is called per distinct object. With ``check_cache``
    (deadline's S3 check cache, reference §3.3), objects seen in the store within 30 days
    are skipped without a HEAD, after a random sample of them was checked (a stale cache is
    reset), and every object confirmed or uploaded is recorded. Raises
    :class:`UploadError` listing the files that failed (missing, changed since the manifest
    was made, unreadable, or refused by the store); the other objects are still uploaded.
    An error every object would meet (:data:`FATAL_ERRORS`: no such bucket, access denied,
    no or rejected credentials, endpoint unreachable) stops the upload at once instead:
    :class:`UploadError` then names that one cause.
    """
    by_hash: dict[str, list[ManifestPath]] = {}
    for entry in manifest.paths:
        by_hash.setdefault(entry.hash, []).append(entry)
    summary = UploadSummary(objects=len(by_hash))
    keys = {h: data_key(h, manifest.hash_alg) for h in by_hash}
    known: set[str] = set()
    confirmed: list[str] = []
    if check_cache is not None:
        reset_check_cache_if_stale(check_cache, store, keys.values())
        cache_keys = {check_cache_key(store, k): k for k in keys.values()}
        known = {cache_keys[c] for c in check_cache.fresh_keys(cache_keys)}
    lock = threading.Lock()
    failures: list[str] = []
    fatal: list[StoreError] = []

    def one(copies: list[ManifestPath]) -> None:
        if fatal:
            return
        entry = copies[0]
        key = keys[entry.hash]
        try:
            if key in known or store.head(key) == entry.size:
                uploaded = False
            else:
                _upload_any(copies, root, store, key)
                uploaded = True
        except FATAL_ERRORS as e:
            with lock:
                fatal.append(e)
            return
        except (VfsError, OSError) as e:
            with lock:
                failures.append(str(e))
            return
        with lock:
            confirmed.append(key)
            if uploaded:
                summary.uploaded += 1
                summary.uploaded_bytes += entry.size
            else:
                summary.skipped += 1
                summary.skipped_bytes += entry.size
        if on_object is not None:
            on_object(entry, uploaded)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, by_hash.values()))
    if check_cache is not None:
        check_cache.put_many(check_cache_key(store, k) for k in confirmed)
    if fatal:
        first = fatal[0]
        raise UploadError(
            f"upload stopped after {len(confirmed)} of {summary.objects} objects: {first.message}",
            hint=first.hint,
        )
    if failures:
        shown = "\n  ".join(failures[:10])
        more = f"\n  … and {len(failures) - 10} more" if len(failures) > 10 else ""
        raise UploadError(
            f"{len(failures)} of {summary.objects} objects were not uploaded:\n  {shown}{more}"
        )
    return summary


def _upload_any(copies: list[ManifestPath], root: str, store: ObjectStore, key: str) -> None:
    """Upload the object from the first of ``copies`` that still has the content."""
    for entry in copies[:-1]:
        try:
            _upload_one(entry, root, store, key)
            return
        except UploadError as e:
            log.warning("%s; uploading %s from another file with that content", e, key)
    _upload_one(copies[-1], root, store, key)


def _upload_one(entry: ManifestPath, root: str, store: ObjectStore, key: str) -> None:
    """Hash the file of ``entry``, check it against the manifest and upload it."""
    path = os.path.join(root, entry.path)
    try:
        actual = hash_file(path)
    except FileNotFoundError:
        raise UploadError(
            f"{path}: no such file", hint="check --root-dirs, or snapshot the root again"
        ) from None
    except OSError as e:
        raise UploadError(f"{path}: {e.strerror}") from None
    if actual != entry.hash or os.stat(path).st_size != entry.size:
        raise UploadError(
            f"{path} changed since the manifest was made (hash {actual}, manifest {entry.hash})",
            hint="snapshot the root again",
        )
    store.put_file(key, path)
