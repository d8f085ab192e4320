"""Manifest format 2025-12-04-beta ("v2"): data model, validation and canonical codec.

EXPERIMENTAL, like its sources. deadline 0.60 cannot read it (reference/job-attachments.md
§2), so v1 (2023-03-03) stays the default wherever the official tools must read the result.

Format facts and their sources (reference §2 = the common shape of the public drafts;
"rusty" = godobyte/rusty-attachments ``crates/model/src/v2025_12_04.rs`` and ``encode.rs`` at
a92c5ed; "AWS draft" = the Python prototype in mwiebe/deadline-cloud
``asset_manifests/v2025_12_04/encode.py`` / ``decode.py`` / ``_manifest.py``):

* Top level (rusty ``AssetManifest``): ``dirs``, ``files``, ``hashAlg`` (``"xxh128"``),
  ``manifestVersion`` (``"2025-12-04-beta"``), ``totalSize``, and ``parentManifestHash``
  only in diff manifests. A manifest with ``parentManifestHash`` is a diff, one without is a
  snapshot; a snapshot with delete markers is invalid (rusty ``SnapshotWithDeletion``).
* ``dirs``: ``{"name": ..., "delete": true?}``, sorted by plain string (code point) order and
  de-duplicated; a directory's position in this list is its number N (rusty ``encode.rs``).
* ``files``: sorted like v1 by UTF-16 code units of the full path (rusty ``encode.rs``, AWS
  draft ``_sort_and_dedupe_files``). Each non-deleted entry has exactly one of ``hash``,
  ``chunkhashes`` (one xxh128 per 256 MiB = 268,435,456-byte chunk, only when
  ``size > chunk``, ``len == ceil(size / chunk)``; rusty ``hash.rs`` ``FILE_CHUNK_SIZE_BYTES``
  and ``validate_chunkhashes``) or ``symlink: {"name": target}``; ``size`` (bytes) and
  ``mtime`` (microseconds since the epoch) on every non-symlink entry; ``runnable: true``
  only when the execute bit is set (omitted otherwise). A delete marker is
  ``{"name": ..., "delete": true}`` and nothing else (rusty ``validate_deleted``).
* ``totalSize`` = sum of ``size`` over non-deleted, non-symlink files (rusty
  ``AssetManifest::diff``/``snapshot``).
* Text: the v1 rules (reference §1.2): keys sorted, compact separators, ``ensure_ascii``
  escaping (the very function v1 uses), no trailing newline.

Decisions where the drafts are silent or disagree (vfs's own rules, documented here):

* ``$N/`` compression. A *file name* or *directory name* whose parent directory is
  ``dirs[N]`` is written ``"$N/<basename>"`` (all drafts). Because every ancestor directory
  of every file and directory is added to ``dirs`` implicitly (reference §2 and the AWS draft
  ``_collect_all_directories``; rusty a92c5ed does not, which leaves names with ``/`` that
  the AWS draft decoder rejects), every encoded name containing ``/`` is ``$N/<basename>``,
  so decoding is unambiguous. Implicit ancestors are plain directories, except that one lying
  under an explicitly deleted directory is written as deleted too (otherwise a present
  directory would sit inside a deleted one).
  A *symlink target* is compressed the same, purely textual way (rusty, AWS draft and
  reference §2 all do): if the text before its last ``/`` equals a listed directory, it is
  written as ``$N/...``, and decoders expand it back. The target keeps its meaning
  (relative to the link's directory); the substitution is textual only. A target that
  itself starts with ``$<digits>/`` and cannot be compressed would be misread, so encoding
  refuses it. Unlike the AWS draft, the ancestors of symlink *targets* are **not** added to
  ``dirs``: a target is relative to the link's directory and may contain ``..``, so its text
  names no manifest directory (the draft would list ``..`` as a directory), and resolving it
  would invent directories that the snapshot does not have.
  Decoding expands ``$N/`` only for ``$`` + ASCII digits + ``/``; for a directory N must
  name an earlier entry, for a file any entry. Names with ``/`` written without ``$N/``
  (rusty a92c5ed does this) are accepted literally.
* ``hash`` entries may have any size: writers should chunk files above 256 MiB, but a v1
  manifest converted to v2 keeps its whole-file hashes (chunk hashes need the data).
* Validation is stricter than the drafts, like vfs's v1 codec: hashes (and chunk hashes and
  ``parentManifestHash``) are 32 lowercase hex digits; integers are not booleans; sizes are
  non-negative; ``totalSize`` must equal the sum above; names obey the v1 path rules
  (:func:`vfs.manifest.paths.path_problem`); a symlink carries no ``size``/``mtime``/
  ``runnable``; its target is non-empty, relative (no leading ``/`` or ``\\``, no ``C:``
  drive; rusty ``validate_symlink_target``) and, resolved lexically against the link's
  directory (``/`` and ``\\`` both count as separators), never climbs above the root; a path
  is never both a file and a directory; no present entry lies inside a deleted directory;
  the same path listed twice must be listed identically (the copy is dropped on encode, as
  the AWS draft does). Unknown keys are ignored and dropped on re-encode, as in v1. An empty
  manifest (no files, no dirs) is valid, unlike v1: a diff without changes is legitimate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vfs.errors import ManifestError
from vfs.manifest.codec import (
    _HASH_RE,
    _json_string,
    canonical_sorted,
    gc_paused,
    load_manifest_json,
)
from vfs.manifest.model import HASH_ALG_XXH128, MANIFEST_VERSION_V2
from vfs.manifest.paths import path_problem

FILE_CHUNK_SIZE_BYTES = 268_435_456
"""Chunk size of format 2025-12-04-beta: 256 MiB (rusty ``hash.rs`` ``FILE_CHUNK_SIZE_BYTES``)."""

_REF_RE = re.compile(r"\$([0-9]+)/")
_DRIVE_RE = re.compile(r"[A-Za-z]:")
_SEP_RE = re.compile(r"[/\\]")
_TOP_KEYS = ("dirs", "files", "hashAlg", "manifestVersion", "totalSize")
_SNAPSHOT_DELETE = (
    "a delete marker in a snapshot manifest (only diff manifests, which have "
    "parentManifestHash, may delete)"
)


def chunk_count(size: int) -> int:
    """Number of 256 MiB chunks of a file of ``size`` bytes: ``ceil(size / chunk)``."""
    return -(-size // FILE_CHUNK_SIZE_BYTES)


@dataclass(slots=True)
class ManifestDirectoryPath:
    """One directory of a v2 manifest (JSON ``{"name": path, "delete": true?}``).

    ``path``: relative, ``/``-separated, fully expanded (no ``$N/``). ``deleted``: a delete
    marker, allowed in diff manifests only.
    """

    path: str
    deleted: bool = False


@dataclass(slots=True)
class ManifestFilePath:
    """One file, symlink or delete marker of a v2 manifest.

    ``path``: relative, ``/``-separated, fully expanded. Exactly one of ``hash`` (xxh128 of
    the whole content), ``chunkhashes`` (xxh128 of each 256 MiB chunk, in order) or
    ``symlink_target`` (link text, relative to the link's directory) is set unless
    ``deleted``. ``size`` (bytes) and ``mtime`` (microseconds since the epoch) are set for
    regular files and ``None`` for symlinks and delete markers. ``runnable``: the POSIX
    execute bit, regular files only.
    """

    path: str
    hash: str | None = None
    size: int | None = None
    mtime: int | None = None
    runnable: bool = False
    chunkhashes: tuple[str, ...] | None = None
    symlink_target: str | None = None
    deleted: bool = False

    @classmethod
    def file(
        cls, path: str, hash: str, size: int, mtime: int, *, runnable: bool = False
    ) -> ManifestFilePath:
        """A regular file hashed as a whole (``size`` bytes, ``mtime`` in microseconds)."""
        return cls(path, hash=hash, size=size, mtime=mtime, runnable=runnable)

    @classmethod
    def chunked(
        cls,
        path: str,
        chunkhashes: tuple[str, ...] | list[str],
        size: int,
        mtime: int,
        *,
        runnable: bool = False,
    ) -> ManifestFilePath:
        """A regular file of more than 256 MiB, hashed per chunk."""
        return cls(path, chunkhashes=tuple(chunkhashes), size=size, mtime=mtime, runnable=runnable)

    @classmethod
    def symlink(cls, path: str, target: str) -> ManifestFilePath:
        """A symbolic link whose text is ``target`` (relative to the link's directory)."""
        return cls(path, symlink_target=target)

    @classmethod
    def deletion(cls, path: str) -> ManifestFilePath:
        """A delete marker (diff manifests only)."""
        return cls(path, deleted=True)

    @property
    def is_symlink(self) -> bool:
        """True for a symbolic link entry."""
        return self.symlink_target is not None

    @property
    def is_chunked(self) -> bool:
        """True for a regular file described by chunk hashes."""
        return self.chunkhashes is not None

    @property
    def content_size(self) -> int:
        """Bytes this entry adds to ``totalSize``: 0 for symlinks and delete markers."""
        if self.deleted or self.symlink_target is not None or self.size is None:
            return 0
        return self.size


@dataclass(slots=True)
class ManifestV2:
    """A manifest of format 2025-12-04-beta: a snapshot, or a diff against a parent.

    ``dirs`` lists directories as given (empty directories, delete markers, or any others);
    the encoder adds every missing ancestor. ``parent_manifest_hash`` (xxh128 of the parent
    manifest's canonical bytes) makes it a diff manifest. ``totalSize`` is always computed
    (:meth:`computed_total_size`); the decoder checks the stored value against it.
    """

    files: list[ManifestFilePath] = field(default_factory=list)
    dirs: list[ManifestDirectoryPath] = field(default_factory=list)
    parent_manifest_hash: str | None = None
    hash_alg: str = HASH_ALG_XXH128
    manifest_version: str = MANIFEST_VERSION_V2

    @property
    def is_diff(self) -> bool:
        """True for a diff manifest (it has ``parentManifestHash``)."""
        return self.parent_manifest_hash is not None

    def computed_total_size(self) -> int:
        """Sum of the sizes of non-deleted, non-symlink files, in bytes (each path once)."""
        files: Iterable[ManifestFilePath] = self.files
        if len({f.path for f in self.files}) != len(self.files):
            files = {f.path: f for f in reversed(self.files)}.values()  # first entry per path
        return sum(
            [
                f.size
                for f in files
                if f.size is not None and f.symlink_target is None and not f.deleted
            ]
        )

    def effective_total_size(self) -> int:
        """``totalSize`` as encoded (same as :meth:`computed_total_size`; mirrors v1's API)."""
        return self.computed_total_size()


# -- validation ----------------------------------------------------------------------------


def symlink_target_problem(link_path: str, target: str) -> str | None:
    """Why ``target`` is not a safe symlink text for a link at ``link_path``, or ``None``.

    Refused: an empty target, NUL, absolute targets (leading ``/`` or ``\\``, a ``C:``
    drive prefix) and targets that, resolved lexically against the link's directory
    (``/`` and ``\\`` both separate components, ``.`` and empty components are skipped),
    climb above the asset root. Chains through other symlinks are not followed.
    """
    if not target:
        return "the symlink target is empty"
    if "\x00" in target:
        return "the symlink target contains a NUL character"
    if target[0] in "/\\" or _DRIVE_RE.match(target):
        return f"the symlink target {target!r} is absolute; targets must be relative"
    depth = link_path.count("/")  # components of the link's directory
    for part in _SEP_RE.split(target):
        if part == "..":
            depth -= 1
            if depth < 0:
                return f"the symlink target {target!r} escapes the asset root"
        elif part and part != ".":
            depth += 1
    return None


def _is_hash(value: object) -> bool:
    return type(value) is str and _HASH_RE.fullmatch(value) is not None


def _file_problem(f: ManifestFilePath, is_diff: bool) -> str | None:
    """What is wrong with one file entry, or ``None`` (path safety included)."""
    if (  # fast path: a valid regular file hashed as a whole (the common case)
        f.chunkhashes is None
        and f.symlink_target is None
        and not f.deleted
        and type(f.hash) is str
        and type(f.size) is int
        and type(f.mtime) is int
        and type(f.runnable) is bool
        and f.size >= 0
        and _HASH_RE.fullmatch(f.hash) is not None
        and type(f.path) is str
        and path_problem(f.path) is None
    ):
        return None
    problem = path_problem(f.path) if type(f.path) is str else "the path is not a string"
    if problem is not None:
        return problem
    if f.deleted:
        if not is_diff:
            return _SNAPSHOT_DELETE
        extra = [
            name
            for name, value in (
                ("hash", f.hash),
                ("chunkhashes", f.chunkhashes),
                ("symlink", f.symlink_target),
                ("size", f.size),
                ("mtime", f.mtime),
            )
            if value is not None
        ]
        if f.runnable:
            extra.append("runnable")
        if extra:
            return f"a delete marker carries no other field (found {', '.join(extra)})"
        return None
    content = [
        name
        for name, value in (
            ("hash", f.hash),
            ("chunkhashes", f.chunkhashes),
            ("symlink", f.symlink_target),
        )
        if value is not None
    ]
    if len(content) != 1:
        found = ", ".join(content) if content else "none"
        return f"exactly one of hash, chunkhashes or symlink is required (found {found})"
    if f.symlink_target is not None:
        if f.size is not None or f.mtime is not None:
            return "a symlink has no size or mtime"
        if f.runnable:
            return "runnable applies to regular files only, not to a symlink"
        if type(f.symlink_target) is not str:
            return "the symlink target is not a string"
        return symlink_target_problem(f.path, f.symlink_target)
    if type(f.size) is not int:
        return "size is missing or not an integer"
    if type(f.mtime) is not int:
        return "mtime is missing or not an integer"
    if f.size < 0:
        return "size is negative"
    if type(f.runnable) is not bool:
        return "runnable is not a boolean"
    if f.hash is not None:
        if not _is_hash(f.hash):
            return f"hash {f.hash!r} is not an xxh128 digest (32 lowercase hex digits)"
        return None
    chunks = f.chunkhashes
    assert chunks is not None
    if f.size <= FILE_CHUNK_SIZE_BYTES:
        return (
            f"chunkhashes are only used for files larger than {FILE_CHUNK_SIZE_BYTES} bytes "
            f"(size is {f.size}); use hash"
        )
    expected = chunk_count(f.size)
    if len(chunks) != expected:
        return f"a file of {f.size} bytes has {expected} chunks, but {len(chunks)} chunkhashes"
    for i, h in enumerate(chunks):
        if not _is_hash(h):
            return f"chunkhashes[{i}] {h!r} is not an xxh128 digest (32 lowercase hex digits)"
    return None


def _ancestors(path: str, into: set[str]) -> None:
    """Add every proper ancestor directory of ``path`` to ``into``."""
    cut = path.rfind("/")
    while cut > 0:
        parent = path[:cut]
        if parent in into:
            return
        into.add(parent)
        cut = parent.rfind("/")


def validate_manifest_v2(manifest: ManifestV2, *, source: str | None = None) -> None:
    """Check ``manifest`` against the 2025-12-04-beta rules (see the module docstring).

    Raises :class:`ManifestError` naming ``source``, the entry (``file 'a/b'`` or
    ``dir 'a'``) and the problem.
    """
    if manifest.hash_alg != HASH_ALG_XXH128:
        raise ManifestError(
            f"unsupported hashAlg {manifest.hash_alg!r} (supported: {HASH_ALG_XXH128})",
            source=source,
        )
    if manifest.manifest_version != MANIFEST_VERSION_V2:
        raise ManifestError(
            f"manifestVersion {manifest.manifest_version!r} is not {MANIFEST_VERSION_V2!r}",
            source=source,
        )
    parent = manifest.parent_manifest_hash
    if parent is not None and not _is_hash(parent):
        raise ManifestError(
            f"parentManifestHash {parent!r} is not an xxh128 digest (32 lowercase hex digits)",
            source=source,
        )
    is_diff = parent is not None

    dir_state: dict[str, bool] = {}
    for d in manifest.dirs:
        name = f"dir {d.path!r}"
        problem = path_problem(d.path) if type(d.path) is str else "the path is not a string"
        if problem is not None:
            raise ManifestError(problem, source=source, entry=name)
        if d.deleted and not is_diff:
            raise ManifestError(_SNAPSHOT_DELETE, source=source, entry=name)
        seen = dir_state.setdefault(d.path, d.deleted)
        if seen != d.deleted:
            raise ManifestError(
                "the directory is listed twice, once deleted and once not",
                source=source,
                entry=name,
            )

    check = _file_problem
    for f in manifest.files:
        problem = check(f, is_diff)
        if problem is not None:
            raise ManifestError(problem, source=source, entry=f"file {f.path!r}")
    entries: Iterable[ManifestFilePath] = manifest.files
    if len({f.path for f in manifest.files}) != len(manifest.files):
        by_path: dict[str, ManifestFilePath] = {}
        for f in manifest.files:
            seen_file = by_path.setdefault(f.path, f)
            if seen_file is not f and seen_file != f:
                raise ManifestError(
                    "the path is listed twice with different content",
                    source=source,
                    entry=f"file {f.path!r}",
                )
        entries = by_path.values()

    # The tree: what is present must form a tree, and stay out of deleted directories.
    present_files = {f.path for f in entries if not f.deleted}
    present_dirs = [p for p, deleted in dir_state.items() if not deleted]
    parents = {p.rpartition("/")[0] for p in present_files}
    parents.discard("")
    tree_dirs = parents.union(present_dirs)
    for p in [*parents, *present_dirs]:  # each distinct directory once, not each file
        _ancestors(p, tree_dirs)
    clash = present_files & tree_dirs
    if clash:
        raise ManifestError(
            "the path is a file and also a directory (of another entry or in dirs)",
            source=source,
            entry=f"file {min(clash)!r}",
        )
    deleted_dirs = {p for p, deleted in dir_state.items() if deleted}
    if deleted_dirs and not deleted_dirs.isdisjoint(tree_dirs):
        for kind, paths in (("file", sorted(present_files)), ("dir", present_dirs)):
            for p in paths:
                ancestors: set[str] = set()
                _ancestors(p, ancestors)
                inside = ancestors & deleted_dirs
                if inside:
                    raise ManifestError(
                        f"a present entry inside the deleted directory {min(inside)!r}",
                        source=source,
                        entry=f"{kind} {p!r}",
                    )


def canonical_dirs(manifest: ManifestV2) -> list[ManifestDirectoryPath]:
    """Every directory the encoded manifest lists, in encoded order.

    The explicit ``dirs`` (de-duplicated) plus every ancestor of every file and directory,
    sorted by plain string order; an implicit ancestor inside an explicitly deleted directory
    is itself deleted. Index ``N`` of the result is the ``N`` of ``$N/``. Assumes a manifest
    that passes :func:`validate_manifest_v2`.
    """
    explicit: dict[str, bool] = {}
    for d in manifest.dirs:
        explicit.setdefault(d.path, d.deleted)
    implicit: set[str] = set()
    for f in manifest.files:
        _ancestors(f.path, implicit)
    for p in explicit:
        _ancestors(p, implicit)
    implicit.difference_update(explicit)
    deleted = {p for p, flag in explicit.items() if flag}
    state = dict(explicit)
    for p in implicit:
        if deleted:
            ancestors: set[str] = set()
            _ancestors(p, ancestors)
            state[p] = not ancestors.isdisjoint(deleted)
        else:
            state[p] = False
    return [ManifestDirectoryPath(p, state[p]) for p in sorted(state)]


# -- encoding ------------------------------------------------------------------------------


def _compress(path: str, index: dict[str, int]) -> str:
    """``$N/<basename>`` when the text before the last ``/`` is ``dirs[N]``, else ``path``."""
    cut = path.rfind("/")
    if cut > 0:
        n = index.get(path[:cut])
        if n is not None:
            return f"${n}/{path[cut + 1 :]}"
    return path


def encode_manifest_v2(manifest: ManifestV2) -> bytes:
    """Encode ``manifest`` to its canonical bytes (format 2025-12-04-beta).

    Validates first (:func:`validate_manifest_v2`); adds implicit ancestor directories, sorts
    ``dirs`` by code point and ``files`` by UTF-16 code units, drops identical duplicate
    files, applies ``$N/`` compression and writes keys sorted, without whitespace, ASCII only
    (v1's escaping), with no trailing newline. The list order in memory is irrelevant.
    Raises :class:`ManifestError` for an invalid manifest or a symlink target that starts
    with ``$<digits>/`` and cannot be compressed (it would be misread).
    """
    validate_manifest_v2(manifest)
    dirs = canonical_dirs(manifest)
    index = {d.path: i for i, d in enumerate(dirs)}
    dir_parts = [
        ('{"delete":true,"name":' if d.deleted else '{"name":')
        + _json_string(_compress(d.path, index))
        + "}"
        for d in dirs
    ]
    unique: dict[str, ManifestFilePath] = {}
    for f in manifest.files:
        unique.setdefault(f.path, f)
    ordered = canonical_sorted(unique.values())
    file_parts = [_encode_file(f, index) for f in ordered]
    parent = manifest.parent_manifest_hash
    text = (
        f'{{"dirs":[{",".join(dir_parts)}],"files":[{",".join(file_parts)}],'
        f'"hashAlg":{_json_string(manifest.hash_alg)},'
        f'"manifestVersion":{_json_string(manifest.manifest_version)},'
        + (f'"parentManifestHash":{_json_string(parent)},' if parent is not None else "")
        + f'"totalSize":{manifest.computed_total_size()}}}'
    )
    return text.encode("ascii")


def _encode_file(f: ManifestFilePath, index: dict[str, int]) -> str:
    # Keys in sorted order: chunkhashes, delete, hash, mtime, name, runnable, size, symlink.
    name = _json_string(_compress(f.path, index))
    if f.deleted:
        return f'{{"delete":true,"name":{name}}}'
    if f.symlink_target is not None:
        text = f.symlink_target
        cut = text.rfind("/")
        compressible = cut > 0 and text[:cut] in index
        if not compressible and _REF_RE.match(text):
            raise ManifestError(
                f"the symlink target {text!r} starts with '$<digits>/' and would be read "
                "as a directory reference",
                entry=f"file {f.path!r}",
            )
        target = _compress(text, index)
        return f'{{"name":{name},"symlink":{{"name":{_json_string(target)}}}}}'
    parts = []
    if f.chunkhashes is not None:
        parts.append('"chunkhashes":[' + ",".join(f'"{h}"' for h in f.chunkhashes) + "]")
    if f.hash is not None:
        parts.append(f'"hash":"{f.hash}"')
    parts.append(f'"mtime":{f.mtime}')
    parts.append(f'"name":{name}')
    if f.runnable:
        parts.append('"runnable":true')
    parts.append(f'"size":{f.size}')
    return "{" + ",".join(parts) + "}"


# -- decoding ------------------------------------------------------------------------------


def decode_manifest_v2(data: str | bytes, *, source: str | None = None) -> ManifestV2:
    """Decode and validate a manifest of format 2025-12-04-beta.

    ``data`` is the JSON text (bytes are decoded as UTF-8); ``source`` names the manifest in
    error messages. ``$N/`` references are expanded. Raises :class:`ManifestError` naming the
    source, the entry (``files #i 'name'`` / ``dirs #i 'name'`` for shape errors, ``file 'a/b'``
    / ``dir 'a'`` for rule violations) and the problem, for anything that breaks the rules in
    the module docstring (including a ``totalSize`` that differs from the sum of sizes).
    """
    with gc_paused():
        return decode_manifest_v2_doc(load_manifest_json(data, source=source), source=source)


def _expand(name: str, expanded: list[str], limit: int) -> str | None:
    """Expand a leading ``$N/``; ``None`` when N is not below ``limit``."""
    if name[:1] != "$":
        return name
    head, sep, rest = name.partition("/")
    digits = head[1:]
    if not sep or not digits.isascii() or not digits.isdigit():
        return name
    if len(digits) > 12 or int(digits) >= limit:
        return None
    return f"{expanded[int(digits)]}/{rest}"


def decode_manifest_v2_doc(doc: dict[str, Any], *, source: str | None = None) -> ManifestV2:
    """Validate an already parsed top-level object as a 2025-12-04-beta manifest.

    Same rules and errors as :func:`decode_manifest_v2`.
    """
    with gc_paused():
        return _decode_manifest_v2_doc(doc, source)


def _decode_manifest_v2_doc(doc: dict[str, Any], source: str | None) -> ManifestV2:
    version = doc.get("manifestVersion")
    if version != MANIFEST_VERSION_V2:
        raise ManifestError(
            f"manifestVersion {version!r} is not {MANIFEST_VERSION_V2!r}", source=source
        )
    for key in _TOP_KEYS:
        if key not in doc:
            raise ManifestError(f"required key {key!r} is missing", source=source)
    hash_alg = doc["hashAlg"]
    if hash_alg != HASH_ALG_XXH128:
        raise ManifestError(
            f"unsupported hashAlg {hash_alg!r} (supported: {HASH_ALG_XXH128})", source=source
        )
    total_size = doc["totalSize"]
    if type(total_size) is not int or total_size < 0:
        raise ManifestError("totalSize is not a non-negative integer", source=source)
    parent = doc.get("parentManifestHash")
    if parent is not None and type(parent) is not str:
        raise ManifestError("parentManifestHash is not a string", source=source)
    raw_dirs = doc["dirs"]
    raw_files = doc["files"]
    if not isinstance(raw_dirs, list):
        raise ManifestError("dirs is not a list", source=source)
    if not isinstance(raw_files, list):
        raise ManifestError("files is not a list", source=source)

    expanded: list[str] = []
    dirs: list[ManifestDirectoryPath] = []
    for i, raw in enumerate(raw_dirs):
        d = _decode_dir(raw, i, expanded, source)
        expanded.append(d.path)
        dirs.append(d)
    files = _decode_files(raw_files, expanded, source)

    manifest = ManifestV2(files=files, dirs=dirs, parent_manifest_hash=parent)
    validate_manifest_v2(manifest, source=source)
    computed = manifest.computed_total_size()
    if total_size != computed:
        raise ManifestError(
            f"totalSize {total_size} differs from the sum of the file sizes, {computed}",
            source=source,
        )
    return manifest


def _decode_dir(
    raw: object, i: int, expanded: list[str], source: str | None
) -> ManifestDirectoryPath:
    where = f"dirs #{i}"
    if not isinstance(raw, dict):
        raise ManifestError("the entry is not a JSON object", source=source, entry=where)
    name = raw.get("name")
    if type(name) is not str:
        raise ManifestError("name is missing or not a string", source=source, entry=where)
    path = _expand(name, expanded, i)
    if path is None:
        raise ManifestError(
            f"name {name!r} refers to a directory that is not listed before it",
            source=source,
            entry=f"{where} {name!r}",
        )
    deleted = raw.get("delete", False)
    if type(deleted) is not bool:
        raise ManifestError("delete is not a boolean", source=source, entry=f"{where} {path!r}")
    return ManifestDirectoryPath(path, deleted)


def _decode_files(
    raw_files: list[Any], expanded: list[str], source: str | None
) -> list[ManifestFilePath]:
    files: list[ManifestFilePath] = []
    append = files.append
    prefixes: dict[str, str | None] = {}  # "$N" -> dirs[N] (None: not a valid reference)
    n_dirs = len(expanded)
    for i, raw in enumerate(raw_files):
        if type(raw) is dict:  # fast path: a regular file hashed as a whole
            name = raw.get("name")
            hash_ = raw.get("hash")
            size = raw.get("size")
            mtime = raw.get("mtime")
            runnable = raw.get("runnable", False)
            if (
                type(name) is str
                and type(hash_) is str
                and type(size) is int
                and type(mtime) is int
                and type(runnable) is bool
                and "chunkhashes" not in raw
                and "symlink" not in raw
                and "delete" not in raw
            ):
                path: str | None = name
                if name[:1] == "$":
                    cut = name.find("/")
                    if cut > 0:
                        head = name[:cut]
                        if head not in prefixes:
                            ref = _expand(head + "/", expanded, n_dirs)
                            prefixes[head] = None if ref is None else ref[:-1]
                        prefix = prefixes[head]
                        path = None if prefix is None else prefix + name[cut:]
                if path is not None:
                    append(ManifestFilePath(path, hash_, size, mtime, runnable))
                    continue
        append(_decode_file_slow(raw, i, expanded, source))
    return files


def _decode_file_slow(
    raw: object, i: int, expanded: list[str], source: str | None
) -> ManifestFilePath:
    """Decode any file entry, or explain exactly what is wrong with it."""
    where = f"files #{i}"
    if not isinstance(raw, dict):
        raise ManifestError("the entry is not a JSON object", source=source, entry=where)
    name = raw.get("name")
    if type(name) is not str:
        raise ManifestError("name is missing or not a string", source=source, entry=where)
    path = _expand(name, expanded, len(expanded))
    if path is None:
        raise ManifestError(
            f"name {name!r} refers to a directory that is not listed",
            source=source,
            entry=f"{where} {name!r}",
        )
    where = f"{where} {path!r}"

    def fail(problem: str) -> ManifestError:
        return ManifestError(problem, source=source, entry=where)

    hash_ = raw.get("hash")
    if "hash" in raw and type(hash_) is not str:
        raise fail("hash is not a string")
    chunkhashes: tuple[str, ...] | None = None
    if "chunkhashes" in raw:
        raw_chunks = raw["chunkhashes"]
        if not isinstance(raw_chunks, list) or any(type(h) is not str for h in raw_chunks):
            raise fail("chunkhashes is not a list of strings")
        chunkhashes = tuple(raw_chunks)
    target: str | None = None
    if "symlink" in raw:
        link = raw["symlink"]
        if not isinstance(link, dict) or type(link.get("name")) is not str:
            raise fail('symlink is not an object {"name": target}')
        target = _expand(link["name"], expanded, len(expanded))
        if target is None:
            raise fail(f"symlink target {link['name']!r} refers to a directory that is not listed")
    values: dict[str, int | None] = {}
    for key in ("size", "mtime"):
        value = raw.get(key)
        if key in raw and type(value) is not int:
            raise fail(f"{key} is not an integer")
        values[key] = value
    flags: dict[str, bool] = {}
    for key in ("runnable", "delete"):
        flag = raw.get(key, False)
        if type(flag) is not bool:
            raise fail(f"{key} is not a boolean")
        flags[key] = flag
    return ManifestFilePath(
        path,
        hash=hash_,
        size=values["size"],
        mtime=values["mtime"],
        runnable=flags["runnable"],
        chunkhashes=chunkhashes,
        symlink_target=target,
        deleted=flags["delete"],
    )
