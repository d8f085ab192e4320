"""``file://`` store: a local directory laid out exactly like the bucket under its root prefix.

This is the embedded default: everything vfs does works against it without AWS.

User metadata (S3 ``x-amz-meta-*``, used on output manifests, reference §4.1) is kept in a
sidecar file ``{root}/.vfs-meta/{key}`` holding a JSON object of the names and values, so
objects stay plain files and metadata works on any filesystem (extended attributes are not
available everywhere, e.g. older tmpfs, and are lost by ``cp``/``rsync`` without flags).
Keys under ``.vfs-meta/`` are reserved and ``list_keys`` never lists them. A put writes the
sidecar before the object (or removes a stale one first), so whoever sees the new object
also sees its metadata. The modification time of an object is its file's mtime.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import BinaryIO

from vfs.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    CorruptObjectError,
    ObjectNotFoundError,
    StoreError,
    TransferCancelledError,
)
from vfs.osutil import current_umask
from vfs.storage.base import RangeStream, Readable, normalize_metadata
from vfs.storage.slices import CancelToken, FileSlice, ShortReadError

BinaryIOWriter = Callable[[BinaryIO], object]

METADATA_DIR = ".vfs-meta"
"""Directory under the store root that holds the user-metadata sidecar of each object."""


class LocalStore:
    """An :class:`~vfs.storage.base.ObjectStore` on a local directory ``root``.

    Objects are created through a temporary file and an atomic rename, so a reader never
    sees a partial object.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.uri = "file://" + self.root
        self._file_mode = 0o666 & ~current_umask()

    def _path(self, key: str) -> str:
        if key.startswith("/") or "/../" in f"/{key}/":
            raise StoreError(f"invalid key {key!r}: it would leave the store root", key=key)
        if key == METADATA_DIR or key.startswith(METADATA_DIR + "/"):
            raise StoreError(f"invalid key {key!r}: {METADATA_DIR}/ is reserved", key=key)
        return os.path.join(self.root, key)

    def _metadata_path(self, key: str) -> str:
        self._path(key)  # validates the key
        return os.path.join(self.root, METADATA_DIR, key)

    def describe(self, key: str) -> str:
        return self._path(key)

    def _error(self, e: OSError, key: str) -> StoreError:
        where = self._path(key)
        if e.errno == errno.ENOENT and not os.path.isdir(self.root):
            return BucketNotFoundError(
                f"object {where}: the store directory {self.root} does not exist",
                key=where,
                hint="check the file:// store URI",
            )
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

    def _open_file(self, key: str) -> io.BufferedReader:
        """The object's file, open for reading; the store's errors naming the key."""
        try:
            return open(self._path(key), "rb")
        except OSError as e:
            raise self._error(e, key) from None

    def open_read(self, key: str) -> AbstractContextManager[Readable]:
        return self._open(key)

    @contextmanager
    def _open(self, key: str) -> Iterator[Readable]:
        with self._open_file(key) as f:
            yield f

    def open_range(
        self, key: str, start: int, length: int, *, size: int | None = None
    ) -> AbstractContextManager[RangeStream]:
        return self._open_range(key, start, length, size)

    @contextmanager
    def _open_range(
        self, key: str, start: int, length: int, size: int | None
    ) -> Iterator[RangeStream]:
        with self._open_file(key) as f:
            actual = os.fstat(f.fileno()).st_size
            where = self._path(key)
            if size is not None and actual != size:
                raise CorruptObjectError(
                    f"object {where} has {actual} bytes, the manifest says {size}", key=where
                )
            if start + length > actual:
                raise CorruptObjectError(
                    f"object {where} has {actual} bytes, shorter than the range "
                    f"{start}-{start + length - 1} asked for",
                    key=where,
                )
            f.seek(start)
            yield _FileRange(f, length)

    def get_bytes(self, key: str) -> bytes:
        with self._open(key) as f:
            return f.read()

    def get_with_metadata(self, key: str) -> tuple[bytes, dict[str, str], float]:
        with self._open_file(key) as f:
            data = f.read()
            mtime = os.fstat(f.fileno()).st_mtime
        try:
            with open(self._metadata_path(key), "rb") as m:
                raw = json.loads(m.read())
        except FileNotFoundError:
            return data, {}, mtime
        except (OSError, ValueError) as e:
            where = self._metadata_path(key)
            raise StoreError(
                f"cannot read the metadata of {self._path(key)}: {e}", key=where
            ) from None
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
        ):
            where = self._metadata_path(key)
            raise StoreError(f"metadata sidecar {where} is not a JSON object of strings", key=where)
        return data, raw, mtime

    def _write_metadata(self, key: str, metadata: Mapping[str, str] | None) -> None:
        meta = normalize_metadata(metadata, self._path(key))
        if not meta:
            try:
                os.unlink(self._metadata_path(key))
            except FileNotFoundError:
                pass
            except OSError as e:
                raise self._error(e, key) from None
            return
        text = json.dumps(meta, sort_keys=True).encode("ascii")
        self._write_file(self._metadata_path(key), key, lambda f: f.write(text))

    def _write(self, key: str, fill: BinaryIOWriter) -> None:
        self._write_file(self._path(key), key, fill)

    def _write_file(self, dest: str, key: str, fill: BinaryIOWriter) -> None:
        try:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".tmp-")
        except OSError as e:
            raise self._error(e, key) from None
        try:
            # mkstemp makes 0600; a store is shared like the bucket it stands for, so the
            # object gets the mode any new file gets here (0666 less the umask).
            os.fchmod(fd, self._file_mode)
            with os.fdopen(fd, "wb") as f:
                fill(f)
            os.replace(tmp, dest)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(e, OSError):
                raise self._error(e, key) from None
            raise

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None:
        self._write_metadata(key, metadata)
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
            self._write_metadata(key, None)
            self._write(key, lambda out: shutil.copyfileobj(src, out, 8 * 1024 * 1024))

    def put_stream(self, key: str, stream: Readable) -> None:
        self._write_metadata(key, None)
        self._write(key, lambda out: shutil.copyfileobj(stream, out, 8 * 1024 * 1024))

    def put_file_range(
        self,
        key: str,
        fd: int,
        offset: int,
        length: int,
        *,
        multipart: bool = False,
        part_size: int = 8 * 1024 * 1024,
        concurrency: int = 10,
        on_bytes: Callable[[int], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        """Create ``key`` from ``length`` bytes of ``fd`` at ``offset``, copied in
        ``part_size`` pieces through a temporary file renamed when complete (``multipart``
        and ``concurrency`` do not apply). Raises :class:`TransferCancelledError` (the
        temporary file removed) when ``cancel`` is cancelled between pieces, and
        :class:`~vfs.storage.slices.SourceChangedError` when the file ends too soon."""
        src = FileSlice(fd, offset, length)
        step = max(part_size, 1024 * 1024)

        def fill(out: BinaryIO) -> None:
            while True:
                if cancel is not None and cancel.cancelled:
                    raise TransferCancelledError(f"upload of {self._path(key)} cancelled")
                data = src.read(step)
                if not data:
                    return
                out.write(data)
                if on_bytes is not None:
                    on_bytes(len(data))

        self._write_metadata(key, None)
        try:
            self._write(key, fill)
        except ShortReadError:
            src.check(self._path(key))
            raise

    def list_keys(self, prefix: str) -> Iterator[tuple[str, int]]:
        # Walk only the deepest directory every match lies in (``Manifests/f/q/`` for
        # ``Manifests/f/q/j``), not the whole store: listing a queue's manifests must not
        # read every ``Data/`` object's directory entry.
        folder = prefix.rpartition("/")[0]
        try:
            top = self._path(folder) if folder else self.root
        except StoreError:  # a reserved or escaping folder holds no key
            return
        for dirpath, dirs, files in os.walk(top):
            if dirpath == self.root and METADATA_DIR in dirs:
                dirs.remove(METADATA_DIR)
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                full = os.path.join(dirpath, name)
                key = os.path.relpath(full, self.root).replace(os.sep, "/")
                if key.startswith(prefix):
                    yield key, os.stat(full).st_size


class _FileRange:
    """At most ``left`` bytes of an open file, from its current offset."""

    def __init__(self, f: io.BufferedReader, left: int) -> None:
        self._f = f
        self._left = left

    def read(self, size: int = -1, /) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if size < 0 else min(size, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def readinto(self, buffer: memoryview, /) -> int:
        """Read up to ``len(buffer)`` bytes (no more than are left) into ``buffer``."""
        if self._left <= 0:
            return 0
        n = self._f.readinto(buffer[: self._left]) or 0
        self._left -= n
        return n

    def abort(self) -> None:
        """Local reads do not stall on a network: nothing to give up."""
