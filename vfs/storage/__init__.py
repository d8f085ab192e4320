"""Object stores (S3 and local directories), the key layout, URI parsing, manifest storage
and the S3 check cache.

Names are imported from their submodule on first use: boto3 only when an S3 store is made
(:class:`S3Store`, ``open_store("s3://…")``).
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vfs.storage.base import ObjectStore, Readable, normalize_metadata
    from vfs.storage.check_cache import (
        S3CheckCache,
        check_cache_key,
        reset_check_cache_if_stale,
        verify_check_cache_integrity,
    )
    from vfs.storage.layout import DATA_FOLDER, MANIFEST_FOLDER, data_key, join_key
    from vfs.storage.local import LocalStore
    from vfs.storage.manifests import (
        Attachments,
        DownloadedManifest,
        FileSystem,
        ManifestProperties,
        PathFormat,
        asset_root_from_metadata,
        compute_root_path_hash,
        discover_output_manifest_keys,
        download_manifest,
        find_session_action_manifest_keys,
        format_session_action_time,
        input_manifest_name,
        input_manifest_path,
        input_manifest_prefix,
        manifest_key,
        manifest_metadata,
        manifest_path_of_key,
        new_manifest_guid,
        output_manifest_name,
        output_manifest_path,
        output_manifest_prefix,
        select_output_manifest_keys,
        session_action_id_from_key,
        session_action_manifest_prefix,
        upload_manifest,
    )
    from vfs.storage.options import S3Options
    from vfs.storage.s3 import S3Store
    from vfs.storage.uri import open_store, parse_s3_uri, read_location

_EXPORTS: dict[str, str] = {
    "Attachments": "manifests",
    "DATA_FOLDER": "layout",
    "DownloadedManifest": "manifests",
    "FileSystem": "manifests",
    "LocalStore": "local",
    "MANIFEST_FOLDER": "layout",
    "ManifestProperties": "manifests",
    "ObjectStore": "base",
    "PathFormat": "manifests",
    "Readable": "base",
    "S3CheckCache": "check_cache",
    "S3Options": "options",
    "S3Store": "s3",
    "asset_root_from_metadata": "manifests",
    "check_cache_key": "check_cache",
    "compute_root_path_hash": "manifests",
    "data_key": "layout",
    "discover_output_manifest_keys": "manifests",
    "download_manifest": "manifests",
    "find_session_action_manifest_keys": "manifests",
    "format_session_action_time": "manifests",
    "input_manifest_name": "manifests",
    "input_manifest_path": "manifests",
    "input_manifest_prefix": "manifests",
    "join_key": "layout",
    "manifest_key": "manifests",
    "manifest_metadata": "manifests",
    "manifest_path_of_key": "manifests",
    "new_manifest_guid": "manifests",
    "normalize_metadata": "base",
    "open_store": "uri",
    "output_manifest_name": "manifests",
    "output_manifest_path": "manifests",
    "output_manifest_prefix": "manifests",
    "parse_s3_uri": "uri",
    "read_location": "uri",
    "reset_check_cache_if_stale": "check_cache",
    "select_output_manifest_keys": "manifests",
    "session_action_id_from_key": "manifests",
    "session_action_manifest_prefix": "manifests",
    "upload_manifest": "manifests",
    "verify_check_cache_integrity": "check_cache",
}
"""Name -> the submodule defining it."""


def __getattr__(name: str) -> object:
    """Import the submodule defining ``name`` on first use (PEP 562): ``from vfs.storage
    import S3Options`` loads neither boto3 (``S3Store``, ~0.2 s) nor the manifest codec,
    SQLite and the local store (~0.05 s) that other names need."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"vfs.storage.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DATA_FOLDER",
    "MANIFEST_FOLDER",
    "Attachments",
    "DownloadedManifest",
    "FileSystem",
    "LocalStore",
    "ManifestProperties",
    "ObjectStore",
    "PathFormat",
    "Readable",
    "S3CheckCache",
    "S3Options",
    "S3Store",
    "asset_root_from_metadata",
    "check_cache_key",
    "compute_root_path_hash",
    "data_key",
    "discover_output_manifest_keys",
    "download_manifest",
    "find_session_action_manifest_keys",
    "format_session_action_time",
    "input_manifest_name",
    "input_manifest_path",
    "input_manifest_prefix",
    "join_key",
    "manifest_key",
    "manifest_metadata",
    "manifest_path_of_key",
    "new_manifest_guid",
    "normalize_metadata",
    "open_store",
    "output_manifest_name",
    "output_manifest_path",
    "output_manifest_prefix",
    "parse_s3_uri",
    "read_location",
    "reset_check_cache_if_stale",
    "select_output_manifest_keys",
    "session_action_id_from_key",
    "session_action_manifest_prefix",
    "upload_manifest",
    "verify_check_cache_integrity",
]
