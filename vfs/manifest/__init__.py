"""Manifests: the data models of both formats, canonical codecs, path validation and operations.

Format 2023-03-03 (v1: :class:`Manifest`, :func:`decode_manifest`, :func:`encode_manifest`) is
what deadline reads and the default everywhere. Format 2025-12-04-beta (v2:
:class:`ManifestV2`, :mod:`vfs.manifest.v2`) is opt-in; :func:`decode_any_manifest` reads
either, :func:`to_v1` / :func:`to_v2` convert. :mod:`vfs.manifest.ops` merges, diffs, filters
and re-roots manifests.

This package imports nothing of vfs but :mod:`vfs.errors`.
"""

from vfs.manifest.codec import canonical_path_key, decode_manifest, encode_manifest
from vfs.manifest.convert import (
    AnyManifest,
    DroppedEntry,
    decode_any_manifest,
    encode_any_manifest,
    manifest_hash,
    to_v1,
    to_v2,
)
from vfs.manifest.globs import glob_matches
from vfs.manifest.merge import MergedEntry, MergedLayers, merge_layers
from vfs.manifest.model import (
    HASH_ALG_XXH128,
    MANIFEST_VERSION_V1,
    MANIFEST_VERSION_V2,
    Manifest,
    ManifestPath,
)
from vfs.manifest.ops import (
    ManifestDiff,
    apply_diff,
    create_diff_manifest,
    diff_manifests,
    filter_manifest,
    merge_manifests_chronologically,
    subtree,
)
from vfs.manifest.paths import path_problem
from vfs.manifest.v2 import (
    FILE_CHUNK_SIZE_BYTES,
    ManifestDirectoryPath,
    ManifestFilePath,
    ManifestV2,
    canonical_dirs,
    chunk_count,
    decode_manifest_v2,
    encode_manifest_v2,
    symlink_target_problem,
    validate_manifest_v2,
)

__all__ = [
    "FILE_CHUNK_SIZE_BYTES",
    "HASH_ALG_XXH128",
    "MANIFEST_VERSION_V1",
    "MANIFEST_VERSION_V2",
    "AnyManifest",
    "DroppedEntry",
    "Manifest",
    "ManifestDiff",
    "ManifestDirectoryPath",
    "ManifestFilePath",
    "ManifestPath",
    "ManifestV2",
    "MergedEntry",
    "MergedLayers",
    "apply_diff",
    "canonical_dirs",
    "canonical_path_key",
    "chunk_count",
    "create_diff_manifest",
    "decode_any_manifest",
    "decode_manifest",
    "decode_manifest_v2",
    "diff_manifests",
    "encode_any_manifest",
    "encode_manifest",
    "encode_manifest_v2",
    "filter_manifest",
    "glob_matches",
    "manifest_hash",
    "merge_layers",
    "merge_manifests_chronologically",
    "path_problem",
    "subtree",
    "symlink_target_problem",
    "to_v1",
    "to_v2",
    "validate_manifest_v2",
]
