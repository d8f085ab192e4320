"""Manifest data model, format 2023-03-03.

Format facts (reference/job-attachments.md §1.1, deadline ``v2023_03_03/asset_manifest.py``):
a manifest lists regular files of one asset root; each entry has ``path`` (relative to the
root, ``/``-separated), ``hash`` (xxh128, 32 lowercase hex digits), ``size`` (bytes) and
``mtime`` (microseconds since the epoch, ``st_mtime_ns // 1000``). ``totalSize`` is the sum of
the sizes as the writer computed it; it is kept verbatim when a manifest is decoded so that
re-encoding reproduces the original bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MANIFEST_VERSION_V1 = "2023-03-03"
"""``manifestVersion`` of the format deadline 0.60 reads and writes."""

MANIFEST_VERSION_V2 = "2025-12-04-beta"
"""``manifestVersion`` of the experimental format 2025-12-04-beta (:mod:`vfs.manifest.v2`).

Source: reference/job-attachments.md §2 (rusty-attachments ``crates/model/src/v2025_12_04.rs``).
deadline 0.60 rejects it ("Unknown manifest version"), so it is never the default.
"""

HASH_ALG_XXH128 = "xxh128"
"""The only ``hashAlg`` of formats 2023-03-03 and 2025-12-04-beta."""


@dataclass(slots=True)
class ManifestPath:
    """One file of a manifest.

    ``path``: relative, ``/``-separated, no empty, ``.`` or ``..`` component.
    ``hash``: xxh128 of the content, 32 lowercase hex digits.
    ``size``: bytes. ``mtime``: microseconds since the epoch (may be negative).
    """

    path: str
    hash: str
    size: int
    mtime: int


@dataclass(slots=True)
class Manifest:
    """A manifest of format 2023-03-03: the files of one asset root.

    ``total_size`` is ``None`` for a manifest built in memory (the sum of the sizes is used
    when encoding) and the decoded ``totalSize`` for a manifest read from JSON.
    """

    paths: list[ManifestPath]
    hash_alg: str = HASH_ALG_XXH128
    manifest_version: str = MANIFEST_VERSION_V1
    total_size: int | None = field(default=None)

    def computed_total_size(self) -> int:
        """Sum of the sizes of all entries, in bytes."""
        return sum(p.size for p in self.paths)

    def effective_total_size(self) -> int:
        """``totalSize`` as it is encoded: the decoded value, else the computed sum."""
        return self.computed_total_size() if self.total_size is None else self.total_size
