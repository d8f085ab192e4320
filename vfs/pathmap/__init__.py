"""Storage profiles, path mapping rules and resolving manifest paths to local paths.

Pure logic on plain data (no I/O): :class:`StorageProfile`,
:func:`generate_path_mapping_rules`, :class:`PathMappingApplier`,
:func:`resolve_manifest_paths`, and :func:`compute_root_path_hash`, the hash that names an
output manifest after its asset root (reference/job-attachments.md §1.4, §6).
"""

from vfs.pathmap.applier import PathMappingApplier, UnmappedPathError, split_source_path
from vfs.pathmap.profiles import (
    FileSystemLocation,
    FileSystemLocationType,
    OsFamily,
    PathMappingRule,
    StorageProfile,
    generate_path_mapping_rules,
    parse_path_mapping_rules,
)
from vfs.pathmap.resolve import (
    ResolvedManifestPath,
    ResolvedManifestPaths,
    UnmappedPath,
    join_source_path,
    resolve_manifest_paths,
)
from vfs.storage.manifests import PathFormat, compute_root_path_hash

__all__ = [
    "FileSystemLocation",
    "FileSystemLocationType",
    "OsFamily",
    "PathFormat",
    "PathMappingApplier",
    "PathMappingRule",
    "ResolvedManifestPath",
    "ResolvedManifestPaths",
    "StorageProfile",
    "UnmappedPath",
    "UnmappedPathError",
    "compute_root_path_hash",
    "generate_path_mapping_rules",
    "join_source_path",
    "parse_path_mapping_rules",
    "resolve_manifest_paths",
    "split_source_path",
]
