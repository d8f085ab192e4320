"""``file://`` store: a local directory laid out exactly like the bucket under its root prefix.

This is the embedded default: everything vfs does works against it without AWS.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import BinaryIO

from vfs.errors import AccessDeniedError, ObjectNotFoundError, StoreError
from vfs.storage.base import Readable

BinaryIOWriter = Callable[[BinaryIO], object]


class LocalStore:
    """An :class:`~vfs.storage.base.ObjectStore` on a local directory ``root``.

    Objects are created through a temporary file and an atomic rename, so a reader never
    sees a partial object.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.uri = "file://" + self.root

    def _path(self, key: str) -> str:
        if key.startswith("/") or "/../" in f"/{key}/":
            raise StoreError(f"invalid key {key!r}: it would leave the store root", key=key)
        return os.path.join(self.root, key)

    def describe(self, key: str) -> str:
        return self._path(key)

    def _error(self, e: OSError, key: str) -> StoreError:
        where = self._path(key)
        if e.errno == errno.ENOENT:
            return ObjectNotFoundError(
                f"object {where} does not exist",
                key=where,
                hint="check the store URI and that the files were uploaded to it",
            )
        if e.errno in (errno.EACCES, errno.EPERM):
            return AccessDeniedError(
                f"permission denied on {where}", key=where, hint="check the file permissions"
            )
        if e.errno == errno.ENOSPC:
            return StoreError(f"no space left writing {where}", key=where, hint="free disk space")
        return StoreError(f"cannot access {where}: {e.strerror}", key=where)

    def head(self, key: str) -> int | None:
        try:
            st = os.stat(self._path(key))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._error(e, key) from None
        return st.st_size

    def open_read(self, key: str) -> AbstractContextManager[Readable]:
        return self._open(key)

    @contextmanager
    def _open(self, key: str) -> Iterator[Readable]:
        try:
            f: BinaryIO = open(self._path(key), "rb")  # noqa: SIM115 (closed below)
        except OSError as e:
            raise self._error(e, key) from None
        with f:
            yield f

    def get_bytes(self, key: str) -> bytes:
        with self._open(key) as f:
            return f.read()

    def _write(self, key: str, fill: BinaryIOWriter) -> None:
        dest = self._path(key)
        try:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".tmp-")
        except OSError as e:
            raise self._error(e, key) from None
        try:
            with os.fdopen(fd, "wb") as f:
                fill(f)
            os.replace(tmp, dest)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(e, OSError):
                raise self._error(e, key) from None
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda f: f.write(data))

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        # Open the source first: an error reading it is about that file, not the object.
        try:
            src = open(path, "rb")  # noqa: SIM115 (closed below)
        except OSError as e:
            where = self._path(key)
            raise StoreError(
                f"cannot store {os.fsdecode(path)} as {where}: {e.strerror}", key=where
            ) from None
        with src:
            self._write(key, lambda out: shutil.copyfileobj(src, out, 8 * 1024 * 1024))

    def list_keys(self, prefix: str) -> Iterator[tuple[str, int]]:
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                full = os.path.join(dirpath, name)
                key = os.path.relpath(full, self.root).replace(os.sep, "/")
                if key.startswith(prefix):
                    yield key, os.stat(full).st_size
