"""Uploading the CAS objects of a manifest.

Format facts (reference/job-attachments.md §8.3, deadline ``upload.py``): each file goes to
``{rootPrefix}/Data/{hash}.xxh128``; an object that already exists is not uploaded again
(deadline HEADs it; vfs also compares the size). Unlike deadline, vfs re-hashes every file
before uploading it: a file changed since the manifest was made would otherwise poison the
content-addressed store with content under the wrong hash.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from vfs.errors import UploadError, VfsError
from vfs.hashing import hash_file
from vfs.manifest import Manifest, ManifestPath
from vfs.storage import ObjectStore, data_key


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
) -> UploadSummary:
    """Upload the content of every file of ``manifest``, read from under ``root``.

    Each distinct hash is handled once: skipped when the store has an object of the right
    size, else the local file is hashed, compared with the manifest, and uploaded.
    ``on_object(entry, uploaded)`` is called per distinct object. Raises
    :class:`UploadError` listing the files that failed (missing, changed since the manifest
    was made, unreadable, or refused by the store); the other objects are still uploaded.
    """
    by_hash: dict[str, ManifestPath] = {}
    for entry in manifest.paths:
        by_hash.setdefault(entry.hash, entry)
    summary = UploadSummary(objects=len(by_hash))
    lock = threading.Lock()
    failures: list[str] = []

    def one(entry: ManifestPath) -> None:
        key = data_key(entry.hash, manifest.hash_alg)
        try:
            uploaded = _upload_one(entry, root, store, key)
        except (VfsError, OSError) as e:
            with lock:
                failures.append(str(e))
            return
        with lock:
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
    if failures:
        shown = "\n  ".join(failures[:10])
        more = f"\n  … and {len(failures) - 10} more" if len(failures) > 10 else ""
        raise UploadError(
            f"{len(failures)} of {summary.objects} objects were not uploaded:\n  {shown}{more}"
        )
    return summary


def _upload_one(entry: ManifestPath, root: str, store: ObjectStore, key: str) -> bool:
    """Upload one object unless present; True when uploaded."""
    if store.head(key) == entry.size:
        return False
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
    return True
