"""Object stores (S3 and local directories), the key layout, URI parsing, manifest storage
and the S3 check cache.

boto3 is imported only when an S3 store is made (:class:`S3Store`, ``open_store("s3://…")``).
"""

from typing import TYPE_CHECKING

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
from vfs.storage.uri import open_store, parse_s3_uri, read_location

if TYPE_CHECKING:
    from vfs.storage.s3 import S3Store


def __getattr__(name: str) -> object:
    """``S3Store`` is imported on first use: importing it imports boto3 (~0.2 s)."""
    if name == "S3Store":
        from vfs.storage.s3 import S3Store

        return S3Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
