"""On-disk cache of whole CAS objects, shared by every mount on the node.

Layout under the cache directory: ``objects/{hash[:2]}/{hash}`` holds verified object
content; ``tmp/`` holds downloads in progress. An object enters ``objects/`` only through
an atomic rename after its xxh128 and its size were checked, so a reader never sees
unverified or partial content, and concurrent mounts sharing the directory at worst
download the same object twice.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import xxhash

from vfs.errors import CorruptObjectError, StoreError
from vfs.storage import ObjectStore, data_key

READ_CHUNK = 4 * 1024 * 1024
"""Bytes read from the store per call while downloading."""


class ObjectCache:
    """Verified whole-object cache in ``root``.

    Thread-safe: :meth:`fetch` runs in worker threads; distinct threads fetching the same
    object each write their own temporary file and the last rename wins (same content).
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.objects_dir = os.path.join(self.root, "objects")
        self.tmp_dir = os.path.join(self.root, "tmp")
        os.makedirs(self.objects_dir, exist_ok=True)
        os.makedirs(self.tmp_dir, exist_ok=True)

    def path_for(self, hash_: str) -> str:
        """Where object ``hash_`` lives once cached."""
        return os.path.join(self.objects_dir, hash_[:2], hash_)

    def lookup(self, hash_: str, size: int) -> str | None:
        """Path of the cached object when present with the expected ``size``, else ``None``."""
        path = self.path_for(hash_)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return path if st.st_size == size else None

    def fetch(self, store: ObjectStore, hash_: str, size: int) -> str:
        """Download object ``hash_`` from ``store``, verify it, and return its cached path.

        Blocking; call from a worker thread. Raises :class:`CorruptObjectError` naming the
        key when the content's size or xxh128 is wrong (nothing is cached then), and the
        store's errors (``ObjectNotFoundError``, ``AccessDeniedError``, ``StoreError``).
        """
        key = data_key(hash_)
        dest = self.path_for(hash_)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix=hash_[:8] + "-")
        try:
            hasher = xxhash.xxh3_128()
            written = 0
            with os.fdopen(fd, "wb") as out, store.open_read(key) as body:
                while True:
                    chunk = body.read(READ_CHUNK)
                    if not chunk:
                        break
                    hasher.update(chunk)
                    out.write(chunk)
                    written += len(chunk)
                    if written > size:
                        break
            if written != size:
                raise CorruptObjectError(
                    f"object {store.describe(key)} has {written}{'+' if written > size else ''}"
                    f" bytes, the manifest says {size}",
                    key=store.describe(key),
                    hint="the store holds wrong data for this hash; re-upload the file",
                )
            actual = hasher.hexdigest()
            if actual != hash_:
                raise CorruptObjectError(
                    f"object {store.describe(key)} hashes to {actual}, not {hash_}",
                    key=store.describe(key),
                    hint="the store holds wrong data for this hash; re-upload the file",
                )
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return dest

    def describe_error(self, error: BaseException) -> str:
        """A one-line description of a fetch failure for logs."""
        if isinstance(error, StoreError):
            return str(error)
        if isinstance(error, OSError):
            return f"cache {self.root}: {error.strerror or error}"
        return f"{type(error).__name__}: {error}"
