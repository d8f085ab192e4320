"""Mount-wide counters, read with the ``user.vfs.stats`` extended attribute of the root."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable


class MountStats:
    """Counters of one mount: FUSE requests by kind and cache/fetch outcomes.

    Keys: ``req.<op>`` per FUSE request kind, ``cache.hits``, ``cache.misses``,
    ``cache.inline`` (blocks loaded on the event loop, their files in the page cache),
    ``fetch.objects``, ``fetch.bytes``, ``fetch.errors``, ``read.bytes``, ``eio``; on a
    writable mount also ``overlay.write.bytes``, ``overlay.blocks.written`` (base file blocks
    overwritten whole, nothing fetched), ``overlay.copyup.fetched`` (blocks written in too
    many pieces, copied up: their base bytes fetched into the gaps), ``overlay.copyup.files``
    (base files given a data file by their first write or truncate), ``overlay.hash.recorded``
    (files whose hash was kept while they were written sequentially) and the overlay's state
    (:meth:`gauge`, see :meth:`vfs.mount.overlay.Overlay.counters`); with write-behind,
    ``writebehind.*`` (:mod:`vfs.mount.writebehind`). Byte counts are in bytes.
    """

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self._gauges: dict[str, Callable[[], int]] = {}
        self._groups: list[Callable[[], dict[str, int]]] = []

    def add(self, key: str, n: int = 1) -> None:
        """Add ``n`` to counter ``key``."""
        self.counters[key] += n

    def gauge(self, key: str, read: Callable[[], int]) -> None:
        """Report ``read()`` as ``key`` (a value taken when the stats are read)."""
        self._gauges[key] = read

    def gauges(self, read: Callable[[], dict[str, int]]) -> None:
        """Report the values ``read()`` returns (taken when the stats are read)."""
        self._groups.append(read)

    def snapshot(self) -> dict[str, int]:
        """Counters and gauges now."""
        out = dict(self.counters)
        for key, read in self._gauges.items():
            out[key] = read()
        for group in self._groups:
            out.update(group())
        return out

    def to_json(self) -> bytes:
        """All counters and gauges as a JSON object (sorted keys)."""
        return json.dumps(dict(sorted(self.snapshot().items()))).encode()
