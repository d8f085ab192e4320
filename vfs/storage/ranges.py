"""Ranged reads: checking what a server sent against what was asked, and reading a range whole.

A ranged GET must be answered with status 206 and ``Content-Range: bytes FIRST-LAST/TOTAL``
for exactly the requested bytes (RFC 9110 §14.4). A server or proxy that ignores ``Range``
answers 200 with the whole object; one that clips the range at the object's end sends fewer
bytes. Either way, bytes taken at face value would be served at the wrong offsets, so every
ranged answer is checked before a byte of it is used.
"""

from __future__ import annotations

import re

from vfs.storage.base import ObjectStore

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def content_range_problem(
    status: int, header: str | None, start: int, length: int, size: int | None
) -> tuple[str, bool] | None:
    """What is wrong with the answer to ``Range: bytes=start-(start+length-1)``, or ``None``.

    ``status`` is the HTTP status, ``header`` the ``Content-Range`` header (``None`` when
    absent), ``size`` the object size the manifest gives (bytes; ``None``: not checked).
    Returns ``(problem, is_size_problem)``: the second item is true when the object itself
    has the wrong size (corrupt data in the store) rather than the range being ignored.
    """
    if status != 206 or header is None:
        return (
            f"the server answered a ranged GET with status {status} and "
            f"{'no Content-Range' if header is None else f'Content-Range {header!r}'}: "
            "it ignored the Range header",
            False,
        )
    match = _CONTENT_RANGE.fullmatch(header.strip())
    if match is None:
        return f"malformed Content-Range {header!r}", False
    first, last, total = int(match[1]), int(match[2]), match[3]
    if total != "*" and size is not None and int(total) != size:
        return f"the object has {total} bytes, the manifest says {size}", True
    if first != start:
        return f"asked for bytes from {start}, got Content-Range {header!r}", False
    if last != start + length - 1:
        if total != "*" and last == int(total) - 1 and last < start + length - 1:
            return f"the object ends at byte {total}, before the range asked for", True
        return f"asked for {length} bytes from {start}, got Content-Range {header!r}", False
    return None


def get_range(store: ObjectStore, key: str, start: int, length: int) -> bytes:
    """Bytes ``[start, start + length)`` of object ``key``, read whole (one ranged GET).

    Raises what :meth:`ObjectStore.open_range` raises; ``length`` must be positive.
    """
    with store.open_range(key, start, length) as stream:
        parts = []
        while length > 0:
            chunk = stream.read(length)
            if not chunk:
                break
            parts.append(chunk)
            length -= len(chunk)
        return b"".join(parts)
