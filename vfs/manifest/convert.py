"""Both manifest formats side by side: version detection, encoding, hashing, conversion.

Format 2023-03-03 (v1, :class:`~vfs.manifest.model.Manifest`) is what deadline reads and
stays the default; format 2025-12-04-beta (v2, :class:`~vfs.manifest.v2.ManifestV2`) is
opt-in. The version is told by the ``manifestVersion`` key (reference/job-attachments.md
§1.3, §2).
"""

from __future__ import annotations

from dataclasses import dataclass

import xxhash

from vfs.errors import ManifestError
from vfs.manifest.codec import (
    _decode_canonical,
    canonical_path_key,
    decode_manifest_doc,
    encode_manifest,
    gc_paused,
    load_manifest_json,
)
from vfs.manifest.model import MANIFEST_VERSION_V1, MANIFEST_VERSION_V2, Manifest, ManifestPath
from vfs.manifest.v2 import (
    ManifestFilePath,
    ManifestV2,
    canonical_dirs,
    decode_manifest_v2_doc,
    encode_manifest_v2,
    validate_manifest_v2,
)

AnyManifest = Manifest | ManifestV2
"""A manifest of either format."""


def decode_any_manifest(data: str | bytes, *, source: str | None = None) -> AnyManifest:
    """Decode a manifest of either format, chosen by its ``manifestVersion``.

    Returns a v1 :class:`Manifest` for ``"2023-03-03"`` and a :class:`ManifestV2` for
    ``"2025-12-04-beta"``, validated like :func:`~vfs.manifest.decode_manifest` and
    :func:`~vfs.manifest.v2.decode_manifest_v2`. Raises :class:`ManifestError` (naming
    ``source``) for invalid JSON, any other version (the later drafts' ``specificationVersion``
    documents included) or an invalid manifest.
    """
    with gc_paused():
        manifest = _decode_canonical(data)  # the common case, without a dict per entry
    if manifest is not None:
        return manifest
    doc = load_manifest_json(data, source=source)
    version = doc.get("manifestVersion")
    if version == MANIFEST_VERSION_V1:
        return decode_manifest_doc(doc, source=source)
    if version == MANIFEST_VERSION_V2:
        return decode_manifest_v2_doc(doc, source=source)
    if version is None and "specificationVersion" in doc:
        raise ManifestError(
            f"specificationVersion {doc['specificationVersion']!r} is a later draft format "
            f"that vfs does not read (supported: {MANIFEST_VERSION_V1}, {MANIFEST_VERSION_V2})",
            source=source,
        )
    raise ManifestError(
        f"unknown manifest version {version!r} "
        f"(supported: {MANIFEST_VERSION_V1}, {MANIFEST_VERSION_V2})",
        source=source,
    )


def encode_any_manifest(manifest: AnyManifest) -> bytes:
    """Canonical bytes of a manifest of either format (see the two encoders).

    Raises :class:`ManifestError` for an empty v1 manifest or an invalid v2 manifest.
    """
    if isinstance(manifest, ManifestV2):
        return encode_manifest_v2(manifest)
    return encode_manifest(manifest)


def manifest_hash(manifest: AnyManifest) -> str:
    """The manifest hash: xxh128 (32 lowercase hex digits) of the canonical bytes.

    This is deadline's ``inputManifestHash``/``outputManifestHash`` for v1 (reference §1.4)
    and the ``parentManifestHash`` a v2 diff names its parent by (reference §2).
    """
    return xxhash.xxh3_128_hexdigest(encode_any_manifest(manifest))


@dataclass(frozen=True, slots=True)
class DroppedEntry:
    """Something a conversion to v1 could not keep.

    ``path``: the entry's path (``""`` for the manifest-level ``parentManifestHash``).
    ``kind``: ``"directory"``, ``"symlink"``, ``"chunked file"``, ``"runnable"`` (the file
    is kept, its execute bit is not), ``"delete marker"`` or ``"parentManifestHash"``.
    ``reason``: one sentence for the user.
    """

    path: str
    kind: str
    reason: str


def to_v1(manifest: ManifestV2) -> tuple[Manifest, list[DroppedEntry]]:
    """Convert a v2 manifest to format 2023-03-03, reporting what v1 cannot express.

    Returns ``(v1 manifest, dropped)``. Regular files with a whole-file ``hash`` become v1
    entries (same path, hash, size in bytes, mtime in microseconds). Dropped and reported,
    sorted by path: symlinks, chunked files (v1 needs a whole-file hash, which cannot be
    computed without the data), the execute bit of runnable files, directories that no kept
    file implies (empty ones, or ones holding only dropped entries), delete markers and
    ``parentManifestHash`` of a diff manifest (the result then lists only the diff's new and
    changed files). The v1 manifest may be empty, which v1 cannot encode; the caller decides.
    Raises :class:`ManifestError` if ``manifest`` is invalid.
    """
    validate_manifest_v2(manifest)
    dropped: list[DroppedEntry] = []
    paths: list[ManifestPath] = []
    seen: set[str] = set()
    for f in manifest.files:
        if f.path in seen:
            continue
        seen.add(f.path)
        if f.deleted:
            dropped.append(
                DroppedEntry(f.path, "delete marker", "v1 manifests cannot delete files")
            )
        elif f.symlink_target is not None:
            dropped.append(
                DroppedEntry(
                    f.path,
                    "symlink",
                    f"v1 manifests list regular files only (target {f.symlink_target!r})",
                )
            )
        elif f.hash is None:
            dropped.append(
                DroppedEntry(
                    f.path,
                    "chunked file",
                    f"v1 needs a whole-file hash; this {f.size}-byte file has only chunk hashes",
                )
            )
        else:
            assert f.size is not None and f.mtime is not None
            paths.append(ManifestPath(f.path, f.hash, f.size, f.mtime))
            if f.runnable:
                dropped.append(DroppedEntry(f.path, "runnable", "v1 manifests have no execute bit"))
    implied: set[str] = set()
    for p in paths:
        cut = p.path.rfind("/")
        while cut > 0 and p.path[:cut] not in implied:
            implied.add(p.path[:cut])
            cut = p.path.rfind("/", 0, cut)
    for d in canonical_dirs(manifest):
        if d.deleted:
            dropped.append(
                DroppedEntry(d.path, "delete marker", "v1 manifests cannot delete directories")
            )
        elif d.path not in implied:
            dropped.append(
                DroppedEntry(
                    d.path, "directory", "v1 manifests list files only; it would hold no file"
                )
            )
    dropped.sort(key=lambda e: (canonical_path_key(e.path), e.kind))
    if manifest.parent_manifest_hash is not None:
        dropped.insert(
            0,
            DroppedEntry(
                "",
                "parentManifestHash",
                "v1 has no diff manifests; the result lists only the new and changed files",
            ),
        )
    return Manifest(paths=paths), dropped


def to_v2(manifest: Manifest) -> ManifestV2:
    """Convert a v1 manifest to a v2 snapshot, losslessly.

    Every entry becomes a regular file with its whole-file hash (even above 256 MiB: chunk
    hashes need the data); directories are implied by the paths. A path listed twice keeps
    its last entry (deadline's merge rule, reference §7.3).
    """
    files: dict[str, ManifestFilePath] = {}
    for p in manifest.paths:
        files[p.path] = ManifestFilePath.file(p.path, p.hash, p.size, p.mtime)
    return ManifestV2(files=list(files.values()), hash_alg=manifest.hash_alg)
