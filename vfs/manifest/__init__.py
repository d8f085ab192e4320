"""Manifests: the data model, the canonical codec, path validation and merging.

This package imports nothing of vfs but :mod:`vfs.errors`.
"""

from vfs.manifest.codec import canonical_path_key, decode_manifest, encode_manifest
from vfs.manifest.merge import merge_manifests, merge_with_sources
from vfs.manifest.model import (
    HASH_ALG_XXH128,
    MANIFEST_VERSION_V1,
    Manifest,
    ManifestPath,
)
from vfs.manifest.paths import path_problem

__all__ = [
    "HASH_ALG_XXH128",
    "MANIFEST_VERSION_V1",
    "Manifest",
    "ManifestPath",
    "canonical_path_key",
    "decode_manifest",
    "encode_manifest",
    "merge_manifests",
    "merge_with_sources",
    "path_problem",
]
