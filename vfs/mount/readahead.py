"""The readahead policy of one file handle: which blocks to fetch ahead of a reader.

Pure logic, no I/O (mountpoint-s3's prefetcher is the model): a read that continues where the
handle's previous reads ended, give or take the reordering of concurrent kernel requests,
counts as sequential and doubles the window (1, 2, 4 … :data:`READAHEAD_MAX_BLOCKS` blocks);
any other read resets it to nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from vfs.mount.blocks import BLOCK_SIZE

READAHEAD_MAX_BLOCKS = 32
"""Largest readahead window, in blocks (128 MiB)."""

RUN_BLOCKS = 8
"""Blocks fetched by one readahead GET (one ranged GET of up to 32 MiB, streamed)."""

BACKWARD_TOLERANCE = 2 * 1024 * 1024
"""A read starting up to this many bytes before the end of the previous ones still counts
as sequential: the kernel sends readahead requests concurrently, so they arrive reordered."""

FORWARD_TOLERANCE = 8 * 1024 * 1024
"""A read starting up to this many bytes after the end of the previous ones (a small skip)
still counts as sequential."""


@dataclass(slots=True)
class ReadaheadState:
    """Per handle: the end of the reads so far (bytes) and the window (blocks)."""

    next_offset: int = 0
    window: int = 0


def plan_readahead(state: ReadaheadState, off: int, end: int, file_size: int) -> range:
    """Record a read of bytes ``[off, end)`` of a file of ``file_size`` bytes and return the
    byte range to fetch ahead of it (possibly empty): the ``window`` blocks' worth of bytes
    after ``end``. Updates ``state``."""
    sequential = state.next_offset > 0 and (
        state.next_offset - BACKWARD_TOLERANCE <= off <= state.next_offset + FORWARD_TOLERANCE
    )
    if sequential:
        state.window = min(max(1, state.window * 2), READAHEAD_MAX_BLOCKS)
        state.next_offset = max(state.next_offset, end)
    else:
        state.window = 0
        state.next_offset = end
    return range(end, min(file_size, end + state.window * BLOCK_SIZE))
