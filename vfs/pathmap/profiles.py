"""Storage profiles and the path mapping rules generated from two of them.

Format facts (reference/job-attachments.md §6.1-6.2; deadline ``models.py::StorageProfile``,
``PathMappingRule`` and ``_path_mapping.py::_generate_path_mapping_rules``): a storage
profile has an id, an OS family (``windows``, ``linux``, ``macos``; compared
case-insensitively) and file-system locations ``{name, path, type}`` with type ``SHARED`` or
``LOCAL``. A rule is ``{source_path_format, source_path, destination_path}`` with the
format ``posix`` or ``windows`` (snake_case keys in rules files, camelCase in the service API).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from vfs.errors import VfsError
from vfs.hashing import hash_string
from vfs.storage.manifests import PathFormat


class FileSystemLocationType(StrEnum):
    """Type of a storage profile's file-system location (deadline ``FileSystemLocationType``):
    ``SHARED`` roots are reachable by every host and never uploaded; ``LOCAL`` roots are
    uploaded as job attachments and carry ``fileSystemLocationName``."""

    SHARED = "SHARED"
    LOCAL = "LOCAL"


class OsFamily(StrEnum):
    """A storage profile's ``osFamily`` (deadline ``StorageProfileOperatingSystemFamily``)."""

    WINDOWS = "windows"
    LINUX = "linux"
    MACOS = "macos"

    @classmethod
    def parse(cls, value: str) -> OsFamily:
        """The family named by ``value``, case-insensitively (``WINDOWS`` → ``windows``).

        Raises :class:`VfsError` for any other value."""
        try:
            return cls(value.lower())
        except ValueError:
            raise VfsError(
                f"unknown storage profile osFamily {value!r}", hint="use windows, linux or macos"
            ) from None

    @property
    def path_format(self) -> PathFormat:
        """``windows`` for Windows, ``posix`` for Linux and macOS."""
        return PathFormat.WINDOWS if self is OsFamily.WINDOWS else PathFormat.POSIX


@dataclass(frozen=True, slots=True)
class FileSystemLocation:
    """One file-system location of a storage profile: ``name``, absolute ``path`` in the
    profile's OS format, and ``type``."""

    name: str
    path: str
    type: FileSystemLocationType


@dataclass(frozen=True, slots=True)
class StorageProfile:
    """A storage profile: where the shared and local file-system locations of one kind of
    host are (deadline ``models.py::StorageProfile``)."""

    storage_profile_id: str
    os_family: OsFamily
    file_system_locations: tuple[FileSystemLocation, ...] = field(default_factory=tuple)
    display_name: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StorageProfile:
        """A profile from the service's shape (boto3 ``get_storage_profile``:
        ``storageProfileId``, ``osFamily``, ``fileSystemLocations[{name, path, type}]``,
        ``displayName``). Raises :class:`VfsError` naming a missing or invalid field."""
        try:
            locations = tuple(
                FileSystemLocation(
                    str(loc["name"]), str(loc["path"]), FileSystemLocationType(loc["type"])
                )
                for loc in data.get("fileSystemLocations", [])
            )
            return cls(
                storage_profile_id=str(data["storageProfileId"]),
                os_family=OsFamily.parse(str(data["osFamily"])),
                file_system_locations=locations,
                display_name=str(data.get("displayName", "")),
            )
        except (KeyError, ValueError, TypeError) as e:
            raise VfsError(f"invalid storage profile: {e!r}") from None

    def to_dict(self) -> dict[str, Any]:
        """The service's shape (inverse of :meth:`from_dict`)."""
        return {
            "storageProfileId": self.storage_profile_id,
            "displayName": self.display_name,
            "osFamily": self.os_family.value,
            "fileSystemLocations": [
                {"name": loc.name, "path": loc.path, "type": loc.type.value}
                for loc in self.file_system_locations
            ],
        }


@dataclass(frozen=True, slots=True)
class PathMappingRule:
    """Map paths under ``source_path`` (written in ``source_path_format``) to
    ``destination_path`` (a path of the host that applies the rule)."""

    source_path_format: PathFormat
    source_path: str
    destination_path: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PathMappingRule:
        """A rule from a rules file (snake_case keys) or the service API (camelCase keys).

        Raises :class:`VfsError` naming a missing key or an unknown format."""

        def get(snake: str, camel: str) -> str:
            value = data.get(snake, data.get(camel))
            if not isinstance(value, str):
                raise VfsError(f"path mapping rule {dict(data)!r} has no string {snake!r}")
            return value

        fmt = get("source_path_format", "sourcePathFormat")
        try:
            source_format = PathFormat(fmt.lower())
        except ValueError:
            raise VfsError(
                f"path mapping rule has source_path_format {fmt!r}", hint="use posix or windows"
            ) from None
        return cls(
            source_format,
            get("source_path", "sourcePath"),
            get("destination_path", "destinationPath"),
        )

    def hashed_source_path(self) -> str:
        """xxh128 of ``source_path`` (UTF-8): how deadline recognises the manifest of this
        rule's root by its file name (``models.py::PathMappingRule.get_hashed_source_path``,
        used by ``api/attachment.py::_attachment_download``)."""
        return hash_string(self.source_path)

    def to_dict(self) -> dict[str, str]:
        """The rules-file shape: ``{source_path_format, source_path, destination_path}``."""
        return {
            "source_path_format": self.source_path_format.value,
            "source_path": self.source_path,
            "destination_path": self.destination_path,
        }


def parse_path_mapping_rules(data: Any) -> list[PathMappingRule]:
    """Rules from the JSON of a rules file: a list of rules, or an object with the key
    ``path_mapping_rules`` (deadline ``api/attachment.py::_process_path_mapping``).

    Raises :class:`VfsError` for any other shape."""
    if isinstance(data, Mapping):
        data = data.get("path_mapping_rules")
    if not isinstance(data, list) or not all(isinstance(r, Mapping) for r in data):
        raise VfsError(
            'path mapping rules must be a JSON list of rules or {"path_mapping_rules": [...]}'
        )
    return [PathMappingRule.from_dict(r) for r in data]


def generate_path_mapping_rules(
    source: StorageProfile, destination: StorageProfile
) -> list[PathMappingRule]:
    """The rules mapping paths of ``source``'s hosts to ``destination``'s hosts.

    One rule per file-system location name present in both profiles, whatever its type
    (SHARED or LOCAL), in the source profile's order; none when both are the same profile.
    The format is ``windows`` when the source OS family is Windows, else ``posix``
    (reference §6.2, deadline ``_generate_path_mapping_rules``).
    """
    if source.storage_profile_id == destination.storage_profile_id:
        return []
    fmt = source.os_family.path_format
    # Later duplicates of a name win, as in deadline's name -> location dicts.
    src = {loc.name: loc for loc in source.file_system_locations}
    dst = {loc.name: loc for loc in destination.file_system_locations}
    return [
        PathMappingRule(fmt, loc.path, dst[name].path) for name, loc in src.items() if name in dst
    ]
