"""What a file's content is made of: CAS objects, addressed by hash."""

from __future__ import annotations

from dataclasses import dataclass

CHUNK_SIZE = 256 * 1024 * 1024
"""Bytes per chunk object of a v2 chunked file: every chunk but the last has this size
(reference/job-attachments.md §2, rusty-attachments ``FILE_CHUNK_SIZE_BYTES``)."""


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """A CAS object: its xxh128 ``hash`` (32 hex digits) and ``size`` in bytes."""

    hash: str
    size: int
