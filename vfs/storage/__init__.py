"""Object stores (S3 and local directories), the key layout, and URI parsing."""

from vfs.storage.base import ObjectStore, Readable
from vfs.storage.layout import DATA_FOLDER, MANIFEST_FOLDER, data_key, join_key
from vfs.storage.local import LocalStore
from vfs.storage.s3 import S3Options, S3Store
from vfs.storage.uri import open_store, parse_s3_uri, read_location

__all__ = [
    "DATA_FOLDER",
    "MANIFEST_FOLDER",
    "LocalStore",
    "ObjectStore",
    "Readable",
    "S3Options",
    "S3Store",
    "data_key",
    "join_key",
    "open_store",
    "parse_s3_uri",
    "read_location",
]
