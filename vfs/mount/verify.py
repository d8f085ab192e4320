"""Whole-object verification of large objects: what is known good, known bad, and how to hash.

A large object (more than one block) is fetched and served block by block, so its xxh128 can
only be checked once every block has been seen. What this module keeps per object:

* **verified**: the object hashed right; the checksum of each of its blocks is kept (and
  shared with every process through the cache index), so a block loaded from disk or fetched
  again later must have the same checksum, and no process hashes the object again.
* **bad**: the object hashed wrong; its blocks were dropped and every read of it fails until
  a refetch from the store hashes right.

Which guarantee a reader gets is the mount's ``--verify`` mode (README, "Integrity"):
``block`` serves blocks of a large object before its whole hash is known (each block is
checked against the checksum taken on arrival, and against the verified checksums once
known); ``strict`` serves no byte of an object before its whole hash was checked.
"""

from __future__ import annotations

import xxhash

from vfs.mount.blockfile import block_checksum
from vfs.mount.objects import ObjectRef

VERIFY_MODES = ("block", "strict")
"""Values of ``--verify``."""


class ObjectHasher:
    """The xxh128 of an object fed block by block, in order, and each block's checksum."""

    def __init__(self) -> None:
        self._hasher = xxhash.xxh3_128()
        self.sums: list[int] = []

    def add(self, data: bytes | memoryview, checksum: int | None = None) -> int:
        """Feed the next block (its checksum, when already taken, is not taken again);
        returns its checksum."""
        self._hasher.update(data)
        if checksum is None:
            checksum = block_checksum(data)
        self.sums.append(checksum)
        return checksum

    @property
    def blocks(self) -> int:
        """How many blocks were fed."""
        return len(self.sums)

    def hexdigest(self) -> str:
        """The xxh128 (hex) of the blocks fed so far."""
        return self._hasher.hexdigest()


class VerifyState:
    """Per process: the block checksums of verified objects and the set of bad ones
    (hash -> checksums; hashes). Plain data, used from the event loop only."""

    def __init__(self) -> None:
        self.sums: dict[str, tuple[int, ...]] = {}
        self.bad: set[str] = set()

    def trusted(self, obj: ObjectRef) -> bool:
        """True when every byte of ``obj`` served from now on is known right."""
        return obj.hash in self.sums and obj.hash not in self.bad

    def expected_sum(self, obj: ObjectRef, index: int) -> int | None:
        """The checksum block ``index`` must have, or ``None`` when not yet known."""
        sums = self.sums.get(obj.hash)
        return sums[index] if sums is not None and obj.hash not in self.bad else None

    def mark_verified(self, obj: ObjectRef, sums: tuple[int, ...]) -> None:
        """Record ``obj`` as verified with these block checksums."""
        self.sums[obj.hash] = sums
        self.bad.discard(obj.hash)

    def mark_bad(self, obj: ObjectRef) -> None:
        """Record ``obj`` as failing its hash (forgetting any verified checksums)."""
        self.sums.pop(obj.hash, None)
        self.bad.add(obj.hash)
