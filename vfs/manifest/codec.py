"""Canonical JSON codec of manifest format 2023-03-03.

Format facts (reference/job-attachments.md §1.2–1.3, deadline ``_canonical_json.py`` and
``decode.py``):

* entries are sorted by the UTF-16 code units of their path
  (``path.encode("utf-16_be", "surrogatepass")``), so astral characters sort before
  U+E000–U+FFFF;
* the text is ``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=True)``:
  keys sorted, no whitespace, no trailing newline, every non-ASCII character and 0x7F
  escaped as lowercase ``\\uXXXX`` (lone surrogates individually);
* decoding requires ``hashAlg``, ``manifestVersion``, ``paths`` (at least one entry) and
  ``totalSize``; each entry requires ``path``, ``hash``, ``size`` and ``mtime``; unknown keys are
  ignored and dropped on re-encode.

vfs validates more strictly than deadline (which accepts any alphanumeric hash and any path):
hashes must be 32 lowercase hex digits, sizes non-negative, integers not booleans, and paths
must stay inside the asset root (:func:`vfs.manifest.paths.path_problem`).
"""

from __future__ import annotations

import json
import re
from json.encoder import encode_basestring_ascii
from typing import Any

from vfs.errors import ManifestError
from vfs.manifest.model import (
    HASH_ALG_XXH128,
    MANIFEST_VERSION_V1,
    MANIFEST_VERSION_V2,
    Manifest,
    ManifestPath,
)
from vfs.manifest.paths import path_problem

_HASH_RE = re.compile(r"[0-9a-f]{32}")
_TOP_KEYS = ("hashAlg", "manifestVersion", "paths", "totalSize")
KNOWN_VERSIONS = (MANIFEST_VERSION_V1,)


def canonical_path_key(path: str) -> bytes:
    """Sort key of a manifest path: its UTF-16 big-endian code units (RFC 8785 order)."""
    return path.encode("utf-16_be", "surrogatepass")


def _json_string(value: str) -> str:
    return encode_basestring_ascii(value)


def encode_manifest(manifest: Manifest) -> bytes:
    """Encode ``manifest`` to its canonical bytes, identical to deadline's ``encode()``.

    The entries are written in canonical order whatever their order in memory (the list
    itself is not reordered). Raises :class:`ManifestError` for an empty manifest, which the
    format cannot express (deadline writes none either).
    """
    if not manifest.paths:
        raise ManifestError(
            "a manifest needs at least one file; an empty one cannot be written",
            hint="skip writing the manifest when there are no files",
        )
    ordered = sorted(manifest.paths, key=lambda p: canonical_path_key(p.path))
    body = ",".join(
        [
            f'{{"hash":{_json_string(p.hash)},"mtime":{int(p.mtime)},'
            f'"path":{_json_string(p.path)},"size":{int(p.size)}}}'
            for p in ordered
        ]
    )
    text = (
        f'{{"hashAlg":{_json_string(manifest.hash_alg)},'
        f'"manifestVersion":{_json_string(manifest.manifest_version)},'
        f'"paths":[{body}],"totalSize":{int(manifest.effective_total_size())}}}'
    )
    return text.encode("ascii")


def _is_int(value: object) -> bool:
    return type(value) is int


def decode_manifest(data: str | bytes, *, source: str | None = None) -> Manifest:
    """Decode and validate a manifest of format 2023-03-03.

    ``data`` is the JSON text (bytes are decoded as UTF-8); ``source`` names the manifest in
    error messages (a file path or URI). Raises :class:`ManifestError` naming the source, the
    entry and the problem for invalid JSON, an unknown version or hash algorithm, a missing
    or mistyped key, a malformed hash, a negative size, or a path that is empty, absolute,
    has an empty, ``.`` or ``..`` component, or contains NUL.

    A manifest of format 2025-12-04-beta is refused with a hint: callers that can handle both
    formats use :func:`vfs.manifest.decode_any_manifest`.
    """
    return decode_manifest_doc(load_manifest_json(data, source=source), source=source)


def load_manifest_json(data: str | bytes, *, source: str | None = None) -> dict[str, Any]:
    """Parse manifest JSON text into its top-level object (no validation of the content).

    Raises :class:`ManifestError` for invalid JSON or UTF-8, or a top level that is not an
    object.
    """
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError
        raise ManifestError(f"not valid JSON: {e}", source=source) from None
    if not isinstance(doc, dict):
        raise ManifestError("the top level is not a JSON object", source=source)
    return doc


def decode_manifest_doc(doc: dict[str, Any], *, source: str | None = None) -> Manifest:
    """Validate an already parsed top-level object as a manifest of format 2023-03-03.

    Same rules and errors as :func:`decode_manifest`.
    """
    version = doc.get("manifestVersion")
    if version == MANIFEST_VERSION_V2:
        raise ManifestError(
            f"manifest version {version!r} is not readable here (supported: "
            f"{', '.join(KNOWN_VERSIONS)})",
            source=source,
            hint="read it with decode_any_manifest(), or convert it to 2023-03-03 with to_v1()",
        )
    if version not in KNOWN_VERSIONS:
        raise ManifestError(
            f"unknown manifest version {version!r} (supported: {', '.join(KNOWN_VERSIONS)})",
            source=source,
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
    if not _is_int(total_size):
        raise ManifestError("totalSize is not an integer", source=source)
    raw_paths = doc["paths"]
    if not isinstance(raw_paths, list):
        raise ManifestError("paths is not a list", source=source)
    if not raw_paths:
        raise ManifestError("paths is empty; a manifest lists at least one file", source=source)
    return Manifest(
        paths=_decode_entries(raw_paths, source),
        hash_alg=hash_alg,
        manifest_version=version,
        total_size=total_size,
    )


def _decode_entries(raw_paths: list[Any], source: str | None) -> list[ManifestPath]:
    out: list[ManifestPath] = []
    append = out.append
    hash_ok = _HASH_RE.fullmatch
    for index, entry in enumerate(raw_paths):
        try:
            path = entry["path"]
            hash_ = entry["hash"]
            size = entry["size"]
            mtime = entry["mtime"]
        except (TypeError, KeyError, IndexError):
            raise _entry_error(entry, index, source) from None
        if (
            type(path) is not str
            or type(hash_) is not str
            or type(size) is not int
            or type(mtime) is not int
            or size < 0
            or hash_ok(hash_) is None
            or path_problem(path) is not None
        ):
            raise _entry_error(entry, index, source)
        append(ManifestPath(path, hash_, size, mtime))
    return out


def _entry_error(entry: object, index: int, source: str | None) -> ManifestError:
    """Explain, precisely, what is wrong with one entry (off the fast path)."""
    name = f"#{index}"
    if not isinstance(entry, dict):
        return ManifestError("the entry is not a JSON object", source=source, entry=name)
    path = entry.get("path")
    if isinstance(path, str):
        name = f"#{index} {path!r}"
    for key in ("path", "hash", "size", "mtime"):
        if key not in entry:
            return ManifestError(f"required key {key!r} is missing", source=source, entry=name)
    if type(path) is not str:
        return ManifestError("path is not a string", source=source, entry=name)
    if type(entry["hash"]) is not str or _HASH_RE.fullmatch(entry["hash"]) is None:
        return ManifestError(
            f"hash {entry['hash']!r} is not an xxh128 digest (32 lowercase hex digits)",
            source=source,
            entry=name,
        )
    for key in ("size", "mtime"):
        if type(entry[key]) is not int:
            return ManifestError(f"{key} is not an integer", source=source, entry=name)
    if entry["size"] < 0:
        return ManifestError("size is negative", source=source, entry=name)
    problem = path_problem(path)
    return ManifestError(problem or "invalid entry", source=source, entry=name)
