"""Fuzzing ``decode_manifest``: whatever the input, it returns a Manifest or raises ManifestError.

Any other exception (TypeError, KeyError, AttributeError, RecursionError, …) escaping the
decoder is a bug: every consumer relies on ManifestError to report a bad manifest.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfs.errors import ManifestError
from vfs.manifest import (
    Manifest,
    canonical_path_key,
    decode_manifest,
    encode_manifest,
    path_problem,
)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID: dict[str, Any] = {
    "hashAlg": "xxh128",
    "manifestVersion": "2023-03-03",
    "paths": [
        {"hash": "99aa06d3014798d86001c324468d497f", "mtime": 1, "path": "a/b.txt", "size": 0},
        {"hash": "0123456789abcdef0123456789abcdef", "mtime": -7, "path": "c", "size": 12},
    ],
    "totalSize": 12,
}


def check(data: str | bytes) -> None:
    """The decoder's contract, checked on one input."""
    try:
        m = decode_manifest(data, source="fuzz")
    except ManifestError as e:
        msg = str(e)  # the message itself must be printable
        assert msg.startswith("manifest fuzz")
        return
    assert isinstance(m, Manifest)
    assert m.paths
    for p in m.paths:
        assert type(p.path) is str and path_problem(p.path) is None
        assert type(p.size) is int and p.size >= 0
        assert type(p.mtime) is int
        assert len(p.hash) == 32
    # Whatever was accepted can be written again, and reads back the same (in canonical order).
    data = encode_manifest(m)
    again = decode_manifest(data)
    assert encode_manifest(again) == data
    assert again.paths == sorted(m.paths, key=lambda p: canonical_path_key(p.path))
    assert again.total_size == m.total_size


# -- arbitrary bytes and text ---------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    check(data)


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_text(data: str) -> None:
    check(data)


def test_pathological_inputs() -> None:
    for data in [
        b"[" * 100_000,
        b'{"a":' * 50_000,
        b"1e999",
        b"NaN",
        b'"\\ud800"',
        b"\xef\xbb\xbf{}",
        "{}".encode("utf-16"),
        json.dumps(VALID).encode("utf-16-le"),
        json.dumps(VALID).encode("utf-32"),
        json.dumps({**VALID, "totalSize": 10**400}).encode(),
        json.dumps({**VALID, "paths": [[]] * 3}).encode(),
    ]:
        check(data)


# -- arbitrary JSON values ------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["xxh128", "2023-03-03", "a/b", "../x", "99aa06d3014798d86001c324468d497f"]),
)
_keys = st.one_of(
    st.sampled_from(["hashAlg", "manifestVersion", "paths", "totalSize", "path", "hash", "size"]),
    st.sampled_from(["mtime"]),
    st.text(max_size=8),
)
json_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(_keys, children, max_size=6),
    ),
    max_leaves=30,
)


@FUZZ
@given(json_values)
def test_arbitrary_json(value: Any) -> None:
    check(json.dumps(value))


@FUZZ
@given(st.dictionaries(_keys, json_values, max_size=6))
def test_arbitrary_top_level_objects(value: dict[str, Any]) -> None:
    doc = {"manifestVersion": "2023-03-03", "hashAlg": "xxh128", **value}
    check(json.dumps(doc))


@FUZZ
@given(st.lists(json_values, min_size=1, max_size=4))
def test_arbitrary_entries(entries: list[Any]) -> None:
    doc = {**VALID, "paths": entries}
    check(json.dumps(doc))


# -- mutations of a valid manifest ----------------------------------------------------------

_TOP = ["hashAlg", "manifestVersion", "paths", "totalSize"]
_ENTRY = ["hash", "mtime", "path", "size"]


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(
            st.sampled_from(
                [
                    "drop_top",
                    "replace_top",
                    "drop_entry_key",
                    "replace_entry_key",
                    "wrap_entry",
                    "wrap_doc",
                    "add_key",
                    "dup_entry",
                    "entry_scalar",
                ]
            )
        )
        paths = doc.get("paths") if isinstance(doc, dict) else None
        entries = [e for e in paths if isinstance(e, dict)] if isinstance(paths, list) else []
        if kind == "drop_top" and isinstance(doc, dict):
            doc.pop(draw(st.sampled_from(_TOP)), None)
        elif kind == "replace_top" and isinstance(doc, dict):
            doc[draw(st.sampled_from(_TOP))] = draw(json_values)
        elif kind == "drop_entry_key" and entries:
            draw(st.sampled_from(entries)).pop(draw(st.sampled_from(_ENTRY)), None)
        elif kind == "replace_entry_key" and entries:
            draw(st.sampled_from(entries))[draw(st.sampled_from(_ENTRY))] = draw(json_values)
        elif kind == "wrap_entry" and isinstance(paths, list) and paths:
            i = draw(st.integers(min_value=0, max_value=len(paths) - 1))
            paths[i] = draw(st.sampled_from([[paths[i]], {"entry": paths[i]}]))
        elif kind == "wrap_doc":
            doc = draw(st.sampled_from([[doc], {"manifest": doc}, {"paths": doc}]))
        elif kind == "add_key" and isinstance(doc, dict):
            doc[draw(_keys)] = draw(json_values)
        elif kind == "dup_entry" and entries:
            assert isinstance(paths, list)
            paths.append(copy.deepcopy(draw(st.sampled_from(entries))))
        elif kind == "entry_scalar" and isinstance(paths, list) and paths:
            paths[draw(st.integers(min_value=0, max_value=len(paths) - 1))] = draw(_scalars)
    return doc


@FUZZ
@given(mutated())
def test_mutated_manifests(doc: Any) -> None:
    check(json.dumps(doc))


@FUZZ
@given(mutated(), st.integers(min_value=0, max_value=10_000), st.binary(max_size=4))
def test_byte_mutations(doc: Any, position: int, insert: bytes) -> None:
    data = json.dumps(doc).encode()
    i = position % (len(data) + 1)
    check(data[:i] + insert + data[i + len(insert) :])
