"""Mount-wide counters, read with the ``user.vfs.stats`` extended attribute of the root."""

from __future__ import annotations

import json
from collections import Counter


class MountStats:
    """Counters of one mount: FUSE requests by kind and cache/fetch outcomes.

    Keys: ``req.<op>`` per FUSE request kind, ``cache.hits``, ``cache.misses``,
    ``fetch.objects``, ``fetch.bytes``, ``fetch.errors``, ``read.bytes``, ``eio``; on a
    writable mount also ``overlay.write.bytes``, ``overlay.blocks.written`` (base file blocks
    overwritten whole, nothing fetched) and ``overlay.copyup.fetched`` (blocks written in too
    many pieces, copied up: their base bytes fetched into the gaps).
    """

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()

    def add(self, key: str, n: int = 1) -> None:
        """Add ``n`` to counter ``key``."""
        self.counters[key] += n

    def to_json(self) -> bytes:
        """All counters as a JSON object (sorted keys)."""
        return json.dumps(dict(sorted(self.counters.items()))).encode()
