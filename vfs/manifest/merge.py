"""Merging several manifests of one asset root.

Format fact (reference §7.3, deadline ``download.py::merge_asset_manifests``): later
manifests overwrite earlier entries with the same path (exact string match); the result keeps
first-insertion order and recomputes ``totalSize``; all inputs must share ``hashAlg``.
"""

from __future__ import annotations

from collections.abc import Sequence

from vfs.errors import ManifestError
from vfs.manifest.model import Manifest, ManifestPath


def merge_with_sources(manifests: Sequence[Manifest]) -> dict[str, tuple[ManifestPath, int]]:
    """Merge ``manifests`` (last one wins per path), keeping where each entry came from.

    Returns ``{path: (entry, index of the manifest it came from)}`` in first-insertion order.
    Raises :class:`ManifestError` when the manifests use different hash algorithms.
    """
    algs = {m.hash_alg for m in manifests}
    if len(algs) > 1:
        raise ManifestError(f"cannot merge manifests with different hashAlg: {sorted(algs)}")
    merged: dict[str, tuple[ManifestPath, int]] = {}
    for index, manifest in enumerate(manifests):
        for entry in manifest.paths:
            merged[entry.path] = (entry, index)
    return merged


def merge_manifests(manifests: Sequence[Manifest]) -> Manifest | None:
    """Merge ``manifests`` oldest first: the last one wins per path.

    Returns ``None`` for no manifests and the manifest itself for one, like deadline.
    """
    if not manifests:
        return None
    if len(manifests) == 1:
        return manifests[0]
    merged = merge_with_sources(manifests)
    return Manifest(
        paths=[entry for entry, _ in merged.values()],
        hash_alg=manifests[0].hash_alg,
        manifest_version=manifests[0].manifest_version,
    )
