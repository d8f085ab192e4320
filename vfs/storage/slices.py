"""Uploading byte ranges of local files: :class:`FileSlice`, :class:`CancelToken` and the
:class:`RangeUploadStore` protocol the stores implement.

A v2 manifest (2025-12-04-beta, reference/job-attachments.md §2) stores each 256 MiB chunk
of a large file as its own CAS object, so an upload sends ranges of a file, not only whole
files.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

from vfs.errors import StoreError


class SourceChangedError(StoreError):
    """The local file an object was being created from ended before the range it should
    hold: it changed after it was hashed. Concerns that object only (not fatal)."""


class ShortReadError(ValueError):
    """Raised by :meth:`FileSlice.read` when the file ends inside the slice (a ValueError,
    not an OSError, so HTTP libraries do not take it for a broken connection)."""


class FileSlice:
    """A read-only, seekable file object over ``length`` bytes of the open descriptor ``fd``
    from ``offset`` (bytes). Reads use ``os.pread``, so several slices may share one
    descriptor; the descriptor is not closed by the slice. Positions are relative to the
    slice's start; reading past its end returns ``b""``. When the file ends before the
    slice does (it shrank since it was hashed), ``read`` raises :class:`ShortReadError` and
    sets :attr:`shrunk`: sending fewer bytes than announced would leave an HTTP request
    waiting for the rest, and fewer bytes in a part would store a wrong object."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self._fd = fd
        self._offset = offset
        self._length = length
        self._pos = 0
        self.shrunk = False

    def __len__(self) -> int:
        return self._length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int | None = -1, /) -> bytes:
        left = self._length - self._pos
        n = left if size is None or size < 0 else min(size, left)
        if n <= 0:
            return b""
        parts = []
        while n > 0:
            data = os.pread(self._fd, n, self._offset + self._pos)
            if not data:
                self.shrunk = True
                raise ShortReadError(
                    f"the file ends at {self._offset + self._pos} bytes, inside the range "
                    f"{self._offset}+{self._length} being read"
                )
            parts.append(data)
            self._pos += len(data)
            n -= len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def check(self, where: str) -> None:
        """Raise :class:`SourceChangedError` naming ``where`` if a read found the file
        shorter than the slice."""
        if self.shrunk:
            raise SourceChangedError(
                f"{where}: the local file shrank while it was being sent (it changed after "
                f"it was hashed); nothing was stored",
                key=where,
                hint="upload again once the file no longer changes",
            )

    def close(self) -> None:
        """Nothing to release (the descriptor belongs to the caller)."""


class CancelToken:
    """Cancellation shared by the workers of one transfer: :meth:`cancel` sets
    :attr:`event` and calls every function registered with :meth:`on_cancel` (each once),
    so that blocked calls (an s3transfer upload) stop at once. Thread-safe."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._lock = threading.Lock()
        self._hooks: dict[int, Callable[[], object]] = {}
        self._next = 0

    @property
    def cancelled(self) -> bool:
        return self.event.is_set()

    def cancel(self) -> None:
        with self._lock:
            self.event.set()
            hooks = list(self._hooks.values())
            self._hooks.clear()
        for hook in hooks:
            hook()

    @contextmanager
    def on_cancel(self, hook: Callable[[], object]) -> Iterator[None]:
        """Call ``hook`` if the token is cancelled while the ``with`` block runs (at once if
        it already is)."""
        with self._lock:
            if not self.event.is_set():
                n = self._next
                self._next += 1
                self._hooks[n] = hook
                registered = True
            else:
                registered = False
        if not registered:
            hook()
        try:
            yield
        finally:
            if registered:
                with self._lock:
                    self._hooks.pop(n, None)


@runtime_checkable
class RangeUploadStore(Protocol):
    """A store that can create an object from a byte range of an open local file."""

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
        """Create or replace ``key`` with ``length`` bytes of ``fd`` from ``offset``.

        ``multipart``: send it as a multipart upload of ``part_size``-byte parts,
        ``concurrency`` at a time (S3; other stores ignore these). ``on_bytes(n)`` is
        called as bytes are sent (``n`` may be negative when a retried request takes
        bytes back). When ``cancel`` is cancelled the upload stops promptly, an unfinished
        multipart upload is aborted, and :class:`~vfs.errors.TransferCancelledError` is
        raised; no partial object is ever created. Raises :class:`~vfs.errors.StoreError`
        (and subclasses) when the store refuses.
        """
        ...
