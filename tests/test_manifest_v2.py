"""Manifest format 2025-12-04-beta: golden bytes, validation, version detection, conversion.

The golden manifests below were written by hand from the format rules in
``vfs/manifest/v2.py`` (reference/job-attachments.md §2), not produced by the encoder.
"""

from __future__ import annotations

import copy
import json
import os
import re
from typing import Any

import pytest
from deadline.job_attachments.asset_manifests.decode import decode_manifest as dl_decode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfs.errors import ManifestError
from vfs.manifest import (
    FILE_CHUNK_SIZE_BYTES,
    DroppedEntry,
    Manifest,
    ManifestDirectoryPath,
    ManifestFilePath,
    ManifestPath,
    ManifestV2,
    canonical_dirs,
    canonical_path_key,
    chunk_count,
    decode_any_manifest,
    decode_manifest,
    decode_manifest_v2,
    encode_any_manifest,
    encode_manifest,
    encode_manifest_v2,
    symlink_target_problem,
    to_v1,
    to_v2,
    validate_manifest_v2,
)

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def h(n: int) -> str:
    return f"{n:032x}"


CHUNK = FILE_CHUNK_SIZE_BYTES
BIG = 2 * CHUNK + 5  # three chunks

# -- golden manifests (hand-written) -------------------------------------------------------

GOLDEN_SNAPSHOT = (
    b'{"dirs":['
    b'{"name":"empty"},'
    b'{"name":"scenes"},'
    b'{"name":"$1/shot 1"},'
    b'{"name":"\\uff41dir"},'
    b'{"name":"\\ud83d\\ude00dir"}'
    b'],"files":['
    b'{"hash":"00000000000000000000000000000008","mtime":3,"name":"Z\\u007f.txt","size":0},'
    b'{"chunkhashes":["00000000000000000000000000000003","00000000000000000000000000000004",'
    b'"00000000000000000000000000000005"],"mtime":0,"name":"big.bin","size":536870917},'
    b'{"name":"current","symlink":{"name":"$2/caf\\u00e9.exr"}},'
    b'{"hash":"00000000000000000000000000000002","mtime":5,"name":"$1/run.sh",'
    b'"runnable":true,"size":20},'
    b'{"hash":"00000000000000000000000000000001","mtime":1700000000000001,'
    b'"name":"$2/caf\\u00e9.exr","size":100},'
    b'{"hash":"00000000000000000000000000000006","mtime":-1,"name":"\\ud83d\\ude00.txt","size":1},'
    b'{"hash":"00000000000000000000000000000007","mtime":2,"name":"\\uff41.txt","size":2}'
    b'],"hashAlg":"xxh128","manifestVersion":"2025-12-04-beta","totalSize":536871040}'
)

SNAPSHOT_FILES = [
    ManifestFilePath.file("scenes/shot 1/café.exr", h(1), 100, 1_700_000_000_000_001),
    ManifestFilePath.file("scenes/run.sh", h(2), 20, 5, runnable=True),
    ManifestFilePath.symlink("current", "scenes/shot 1/café.exr"),
    ManifestFilePath.chunked("big.bin", [h(3), h(4), h(5)], BIG, 0),
    ManifestFilePath.file("\U0001f600.txt", h(6), 1, -1),
    ManifestFilePath.file("\uff41.txt", h(7), 2, 2),
    ManifestFilePath.file("Z\x7f.txt", h(8), 0, 3),
]
SNAPSHOT_DIRS = [
    ManifestDirectoryPath("\U0001f600dir"),
    ManifestDirectoryPath("empty"),
    ManifestDirectoryPath("\uff41dir"),
]

PARENT = "f" * 32
GOLDEN_DIFF = (
    b'{"dirs":[{"name":"keep"},{"name":"new"},{"delete":true,"name":"old"},'
    b'{"delete":true,"name":"$2/sub"}],'
    b'"files":[{"delete":true,"name":"gone.txt"},'
    b'{"hash":"00000000000000000000000000000009","mtime":4,"name":"$0/a.txt","size":3},'
    b'{"delete":true,"name":"$3/x"}],'
    b'"hashAlg":"xxh128","manifestVersion":"2025-12-04-beta",'
    b'"parentManifestHash":"ffffffffffffffffffffffffffffffff","totalSize":3}'
)


def golden_snapshot() -> ManifestV2:
    return ManifestV2(files=list(SNAPSHOT_FILES), dirs=list(SNAPSHOT_DIRS))


def golden_diff() -> ManifestV2:
    return ManifestV2(
        files=[
            ManifestFilePath.deletion("old/sub/x"),
            ManifestFilePath.file("keep/a.txt", h(9), 3, 4),
            ManifestFilePath.deletion("gone.txt"),
        ],
        dirs=[ManifestDirectoryPath("old", deleted=True), ManifestDirectoryPath("new")],
        parent_manifest_hash=PARENT,
    )


def test_golden_snapshot_encodes_byte_exact() -> None:
    m = golden_snapshot()
    assert encode_manifest_v2(m) == GOLDEN_SNAPSHOT
    assert not GOLDEN_SNAPSHOT.endswith(b"\n")
    # Same canonical JSON rules as v1: what json.dumps would write for the same document.
    doc = json.loads(GOLDEN_SNAPSHOT)
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert canonical.encode("ascii") == GOLDEN_SNAPSHOT
    # The list order in memory does not matter.
    m.files.reverse()
    m.dirs.reverse()
    assert encode_manifest_v2(m) == GOLDEN_SNAPSHOT
    assert m.computed_total_size() == 536_871_040


def test_golden_snapshot_decodes_expanded() -> None:
    m = decode_manifest_v2(GOLDEN_SNAPSHOT, source="golden")
    assert not m.is_diff
    by_path = {f.path: f for f in m.files}
    assert by_path["current"].symlink_target == "scenes/shot 1/café.exr"
    assert by_path["scenes/run.sh"].runnable
    assert by_path["big.bin"].chunkhashes == (h(3), h(4), h(5))
    assert by_path["big.bin"].size == BIG and chunk_count(BIG) == 3
    assert [d.path for d in m.dirs] == [
        "empty",
        "scenes",
        "scenes/shot 1",
        "\uff41dir",
        "\U0001f600dir",
    ]
    assert m.files == sorted(SNAPSHOT_FILES, key=lambda f: canonical_path_key(f.path))
    assert encode_manifest_v2(m) == GOLDEN_SNAPSHOT
    assert encode_manifest_v2(decode_manifest_v2(GOLDEN_SNAPSHOT.decode("ascii"))) == (
        GOLDEN_SNAPSHOT
    )


def test_dirs_sort_by_code_point_files_by_utf16() -> None:
    # U+FF41 < U+1F600 by code point (dirs), but U+D83D (the emoji's first UTF-16 unit)
    # < U+FF41 (files): the two lists use different orders on purpose.
    m = decode_manifest_v2(GOLDEN_SNAPSHOT)
    assert m.dirs[-2].path < m.dirs[-1].path
    names = [f.path for f in m.files]
    assert names.index("\U0001f600.txt") < names.index("\uff41.txt")


def test_golden_diff() -> None:
    m = golden_diff()
    assert encode_manifest_v2(m) == GOLDEN_DIFF
    back = decode_manifest_v2(GOLDEN_DIFF)
    assert back.is_diff and back.parent_manifest_hash == PARENT
    assert {(d.path, d.deleted) for d in back.dirs} == {
        ("keep", False),
        ("new", False),
        ("old", True),
        ("old/sub", True),  # implicit ancestor inside a deleted directory: deleted too
    }
    assert [(f.path, f.deleted) for f in back.files] == [
        ("gone.txt", True),
        ("keep/a.txt", False),
        ("old/sub/x", True),
    ]
    assert back.computed_total_size() == 3
    assert encode_manifest_v2(back) == GOLDEN_DIFF


def test_empty_manifest_is_valid_in_v2() -> None:
    data = encode_manifest_v2(ManifestV2())
    assert data == (
        b'{"dirs":[],"files":[],"hashAlg":"xxh128","manifestVersion":"2025-12-04-beta",'
        b'"totalSize":0}'
    )
    assert decode_manifest_v2(data) == ManifestV2()


def test_symlink_target_compression_is_textual() -> None:
    # The link is in "a"; its target "b/t" means "a/b/t", but "b" is a root directory, so
    # the text is compressed against dirs[1] = "b" all the same, and expands back.
    m = ManifestV2(
        files=[
            ManifestFilePath.file("a/b/t", h(1), 1, 1),
            ManifestFilePath.file("b/t", h(2), 1, 1),
            ManifestFilePath.symlink("a/l", "b/t"),
            ManifestFilePath.symlink("a/up", "../b/t"),
        ]
    )
    data = encode_manifest_v2(m)
    assert b'{"name":"$0/l","symlink":{"name":"$2/t"}}' in data
    assert b'{"name":"$0/up","symlink":{"name":"../b/t"}}' in data
    assert [d.path for d in canonical_dirs(m)] == ["a", "a/b", "b"]  # no ".." directory
    back = decode_manifest_v2(data)
    assert {f.path: f.symlink_target for f in back.files if f.is_symlink} == {
        "a/l": "b/t",
        "a/up": "../b/t",
    }


def test_dollar_names_round_trip_and_ambiguous_targets_are_refused() -> None:
    m = ManifestV2(
        files=[
            ManifestFilePath.file("$0", h(1), 1, 1),
            ManifestFilePath.file("$1/$0", h(2), 1, 1),
            ManifestFilePath.symlink("$1/ok", "$0"),
            ManifestFilePath.symlink("link", "$1/$0"),  # "$1" is a directory: compressible
        ]
    )
    back = decode_manifest_v2(encode_manifest_v2(m))
    assert sorted((f.path, f.symlink_target) for f in back.files) == sorted(
        (f.path, f.symlink_target) for f in m.files
    )
    # "$0" is itself dirs[0]: the target compresses to the same text, and reads back right.
    same = ManifestV2(
        files=[ManifestFilePath.file("$0/x", h(1), 1, 1), ManifestFilePath.symlink("l", "$0/x")]
    )
    data = encode_manifest_v2(same)
    assert b'"symlink":{"name":"$0/x"}' in data
    assert decode_manifest_v2(data).files[1].symlink_target == "$0/x"
    bad = ManifestV2(files=[ManifestFilePath.symlink("link", "$7/x")])
    with pytest.raises(ManifestError, match=r"directory reference") as info:
        encode_manifest_v2(bad)
    assert info.value.entry == "file 'link'"


def test_rusty_a92c5ed_style_input_is_accepted() -> None:
    # Names with "/" not compressed, ancestors not listed (rusty a92c5ed's encoder).
    doc = {
        "hashAlg": "xxh128",
        "manifestVersion": "2025-12-04-beta",
        "dirs": [{"name": "subdir/nested"}],
        "files": [{"name": "subdir/test.txt", "hash": h(1), "size": 100, "mtime": 1}],
        "totalSize": 100,
    }
    m = decode_manifest_v2(json.dumps(doc))
    assert m.files[0].path == "subdir/test.txt"
    assert encode_manifest_v2(m) == (
        b'{"dirs":[{"name":"subdir"},{"name":"$0/nested"}],"files":[{"hash":"'
        + h(1).encode()
        + b'","mtime":1,"name":"$0/test.txt","size":100}],"hashAlg":"xxh128",'
        b'"manifestVersion":"2025-12-04-beta","totalSize":100}'
    )


def test_unknown_keys_are_ignored_and_false_flags_dropped() -> None:
    doc = json.loads(GOLDEN_SNAPSHOT)
    doc["extra"] = 1
    doc["files"][0]["runnable"] = False
    doc["files"][0]["color"] = "red"
    doc["dirs"][0]["delete"] = False
    assert encode_manifest_v2(decode_manifest_v2(json.dumps(doc))) == GOLDEN_SNAPSHOT


# -- validation errors ---------------------------------------------------------------------

SRC = "s3://bucket/Manifests/x_output"


def base_doc() -> dict[str, Any]:
    return {
        "dirs": [{"name": "d"}],
        "files": [
            {"hash": h(1), "mtime": 1, "name": "$0/f", "size": 2},
            {"name": "$0/l", "symlink": {"name": "f"}},
        ],
        "hashAlg": "xxh128",
        "manifestVersion": "2025-12-04-beta",
        "totalSize": 2,
    }


def file_doc(**fields: Any) -> dict[str, Any]:
    doc = base_doc()
    doc["files"] = [fields]
    size = fields.get("size", 0)
    plain = type(size) is int and "symlink" not in fields and not fields.get("delete")
    doc["totalSize"] = max(size, 0) if plain else 0
    return doc


def test_base_doc_is_valid() -> None:
    m = decode_manifest_v2(json.dumps(base_doc()), source=SRC)
    assert [f.path for f in m.files] == ["d/f", "d/l"]


CASES: list[tuple[str, dict[str, Any], str, str | None]] = [
    # (id, document, words in the message, entry)
    ("bad-hash", file_doc(name="f", hash="ABC", size=1, mtime=1), "xxh128", "file 'f'"),
    (
        "hash-and-symlink",
        file_doc(name="f", hash=h(1), symlink={"name": "x"}, size=1, mtime=1),
        "exactly one",
        "file 'f'",
    ),
    ("no-content", file_doc(name="f", size=1, mtime=1), "exactly one", "file 'f'"),
    ("no-size", file_doc(name="f", hash=h(1), mtime=1), "size", "file 'f'"),
    ("no-mtime", file_doc(name="f", hash=h(1), size=1), "mtime", "file 'f'"),
    ("neg-size", file_doc(name="f", hash=h(1), size=-1, mtime=1), "negative", "file 'f'"),
    (
        "bool-size",
        file_doc(name="f", hash=h(1), size=True, mtime=1),
        "size is not an integer",
        "files #0 'f'",
    ),
    (
        "chunks-small-file",
        file_doc(name="f", chunkhashes=[h(1)], size=CHUNK, mtime=1),
        "larger than 268435456",
        "file 'f'",
    ),
    (
        "chunk-count",
        file_doc(name="f", chunkhashes=[h(1), h(2)], size=BIG, mtime=1),
        "3 chunks",
        "file 'f'",
    ),
    (
        "chunk-hash",
        file_doc(name="f", chunkhashes=[h(1), "x", h(3)], size=BIG, mtime=1),
        "chunkhashes[1]",
        "file 'f'",
    ),
    (
        "chunks-not-list",
        file_doc(name="f", chunkhashes="abc", size=BIG, mtime=1),
        "list of strings",
        "files #0 'f'",
    ),
    (
        "symlink-size",
        file_doc(name="l", symlink={"name": "x"}, size=1),
        "no size or mtime",
        "file 'l'",
    ),
    (
        "symlink-runnable",
        file_doc(name="l", symlink={"name": "x"}, runnable=True),
        "runnable",
        "file 'l'",
    ),
    ("symlink-shape", file_doc(name="l", symlink="x"), '{"name": target}', "files #0 'l'"),
    ("symlink-abs", file_doc(name="l", symlink={"name": "/etc/passwd"}), "absolute", "file 'l'"),
    ("symlink-drive", file_doc(name="l", symlink={"name": "C:\\x"}), "absolute", "file 'l'"),
    ("symlink-unc", file_doc(name="l", symlink={"name": "\\\\srv\\x"}), "absolute", "file 'l'"),
    ("symlink-escape", file_doc(name="l", symlink={"name": "../x"}), "escapes", "file 'l'"),
    (
        "symlink-escape-deep",
        file_doc(name="a/b/l", symlink={"name": "../x/../../../y"}),
        "escapes",
        "file 'a/b/l'",
    ),
    (
        "symlink-escape-backslash",
        file_doc(name="l", symlink={"name": "..\\x"}),
        "escapes",
        "file 'l'",
    ),
    ("symlink-empty", file_doc(name="l", symlink={"name": ""}), "empty", "file 'l'"),
    ("runnable-type", file_doc(name="f", hash=h(1), size=1, mtime=1, runnable=1), "boolean", None),
    ("delete-in-snapshot", file_doc(name="f", delete=True), "snapshot", "file 'f'"),
    ("dotdot-path", file_doc(name="a/../b", hash=h(1), size=1, mtime=1), "'..'", None),
    ("abs-path", file_doc(name="/etc/x", hash=h(1), size=1, mtime=1), "absolute", None),
    ("nul-path", file_doc(name="a\x00b", hash=h(1), size=1, mtime=1), "NUL", None),
    ("ref-out-of-range", file_doc(name="$5/f", hash=h(1), size=1, mtime=1), "not listed", None),
    ("name-missing", file_doc(hash=h(1), size=1, mtime=1), "name", "files #0"),
]


def _with(**changes: Any) -> dict[str, Any]:
    doc = base_doc()
    doc.update(changes)
    return doc


def _diff_doc(**changes: Any) -> dict[str, Any]:
    doc = _with(parentManifestHash=PARENT)
    doc.update(changes)
    return doc


CASES += [
    ("total-size", _with(totalSize=3), "totalSize 3 differs", None),
    ("total-size-type", _with(totalSize="2"), "totalSize", None),
    ("hash-alg", _with(hashAlg="sha256"), "sha256", None),
    ("dirs-not-list", _with(dirs={}), "dirs is not a list", None),
    ("files-not-list", _with(files=None), "files is not a list", None),
    ("parent-hash", _with(parentManifestHash="xyz"), "parentManifestHash", None),
    ("parent-hash-type", _with(parentManifestHash=5), "parentManifestHash", None),
    (
        "dir-forward-ref",
        _with(dirs=[{"name": "$1/x"}, {"name": "y"}]),
        "before it",
        "dirs #0 '$1/x'",
    ),
    ("dir-delete-type", _with(dirs=[{"name": "d", "delete": "yes"}]), "boolean", "dirs #0 'd'"),
    ("dir-delete-in-snapshot", _with(dirs=[{"name": "d", "delete": True}]), "snapshot", None),
    ("dir-not-object", _with(dirs=["d"]), "not a JSON object", "dirs #0"),
    ("file-not-object", _with(files=[1]), "not a JSON object", "files #0"),
    (
        "dir-twice",
        _diff_doc(dirs=[{"name": "d"}, {"name": "d", "delete": True}]),
        "listed twice",
        "dir 'd'",
    ),
    (
        "file-twice",
        _with(
            files=[
                {"hash": h(1), "mtime": 1, "name": "f", "size": 1},
                {"hash": h(2), "mtime": 1, "name": "f", "size": 1},
            ],
            totalSize=2,
        ),
        "listed twice",
        "file 'f'",
    ),
    (
        "file-and-dir",
        _with(
            dirs=[],
            files=[
                {"hash": h(1), "mtime": 1, "name": "a", "size": 1},
                {"hash": h(1), "mtime": 1, "name": "a/b", "size": 1},
            ],
        ),
        "a file and also a directory",
        "file 'a'",
    ),
    (
        "file-and-explicit-dir",
        _with(dirs=[{"name": "f"}], files=[{"hash": h(1), "mtime": 1, "name": "f", "size": 2}]),
        "a file and also a directory",
        "file 'f'",
    ),
    (
        "present-inside-deleted",
        _diff_doc(dirs=[{"name": "d", "delete": True}]),
        "inside the deleted directory 'd'",
        "file 'd/f'",
    ),
    (
        "delete-with-hash",
        _diff_doc(dirs=[], files=[{"name": "f", "delete": True, "hash": h(1)}], totalSize=0),
        "no other field (found hash)",
        "file 'f'",
    ),
]


@pytest.mark.parametrize(
    ("doc", "words", "entry"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decode_errors(doc: dict[str, Any], words: str, entry: str | None) -> None:
    with pytest.raises(ManifestError) as info:
        decode_manifest_v2(json.dumps(doc), source=SRC)
    err = info.value
    assert words in err.problem
    assert err.source == SRC and SRC in str(err)
    if entry is not None:
        assert err.entry == entry
    # decode_any_manifest reports the same error.
    with pytest.raises(ManifestError) as again:
        decode_any_manifest(json.dumps(doc), source=SRC)
    assert again.value.problem == err.problem


@pytest.mark.parametrize("key", ["dirs", "files", "hashAlg", "totalSize"])
def test_missing_top_level_key(key: str) -> None:
    doc = base_doc()
    del doc[key]
    with pytest.raises(ManifestError, match=key):
        decode_manifest_v2(json.dumps(doc), source=SRC)


def test_encode_validates_too() -> None:
    with pytest.raises(ManifestError, match="snapshot"):
        encode_manifest_v2(ManifestV2(files=[ManifestFilePath.deletion("x")]))
    with pytest.raises(ManifestError, match="escapes"):
        encode_manifest_v2(ManifestV2(files=[ManifestFilePath.symlink("l", "../../x")]))
    with pytest.raises(ManifestError, match="manifestVersion"):
        validate_manifest_v2(ManifestV2(manifest_version="2023-03-03"))
    # An identical duplicate is allowed and written once (AWS draft _sort_and_dedupe_files).
    f = ManifestFilePath.file("x", h(1), 1, 1)
    assert encode_manifest_v2(ManifestV2(files=[f, copy.copy(f)])) == encode_manifest_v2(
        ManifestV2(files=[f])
    )
    # Read back, the duplicate counts once in totalSize.
    doc = json.loads(encode_manifest_v2(ManifestV2(files=[f])))
    doc["files"].append(dict(doc["files"][0]))
    twice = decode_manifest_v2(json.dumps(doc))
    assert len(twice.files) == 2 and twice.computed_total_size() == 1


@pytest.mark.parametrize(
    ("link", "target", "ok"),
    [
        ("l", "x", True),
        ("l", "./x", True),
        ("l", "a//b/", True),
        ("a/l", "../x", True),
        ("a/b/l", "../../x", True),
        ("a/b/l", "../../x/../y", True),
        ("l", "..", False),
        ("l", "../x", False),
        ("a/l", "../../x", False),
        ("a/l", "x/../../../y", False),
        ("l", "/x", False),
        ("l", "\\x", False),
        ("l", "c:x", False),
        ("l", "", False),
        ("l", "a\x00b", False),
    ],
)
def test_symlink_target_problem(link: str, target: str, ok: bool) -> None:
    assert (symlink_target_problem(link, target) is None) is ok


# -- version detection ---------------------------------------------------------------------

GOLDEN_V1 = (
    b'{"hashAlg":"xxh128","manifestVersion":"2023-03-03","paths":[{"hash":"'
    + h(1).encode()
    + b'","mtime":5,"path":"a/b.txt","size":3}],"totalSize":3}'
)


def test_decode_any_detects_the_version() -> None:
    one = decode_any_manifest(GOLDEN_V1, source="v1")
    assert isinstance(one, Manifest)
    assert encode_any_manifest(one) == GOLDEN_V1
    two = decode_any_manifest(GOLDEN_SNAPSHOT, source="v2")
    assert isinstance(two, ManifestV2)
    assert encode_any_manifest(two) == GOLDEN_SNAPSHOT


def test_v1_decoder_refuses_v2_with_a_hint() -> None:
    with pytest.raises(ManifestError) as info:
        decode_manifest(GOLDEN_SNAPSHOT, source="x")
    assert "2025-12-04-beta" in info.value.problem
    assert info.value.hint is not None and "decode_any_manifest" in info.value.hint
    with pytest.raises(ManifestError, match="2025-12-04-beta"):
        decode_manifest_v2(GOLDEN_V1)


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"manifestVersion": "1999-01-01"}, "unknown manifest version"),
        ({}, "unknown manifest version None"),
        (
            {"specificationVersion": "relative-manifest-snapshot-beta-2025-12"},
            "later draft",
        ),
    ],
)
def test_decode_any_unknown_versions(doc: dict[str, Any], words: str) -> None:
    with pytest.raises(ManifestError, match=words):
        decode_any_manifest(json.dumps(doc), source="x")
    with pytest.raises(ManifestError, match="JSON"):
        decode_any_manifest(b"\xff", source="x")


# -- conversion ----------------------------------------------------------------------------


def test_to_v1_reports_what_it_drops() -> None:
    v1, dropped = to_v1(decode_manifest_v2(GOLDEN_SNAPSHOT))
    assert sorted(p.path for p in v1.paths) == sorted(
        ["scenes/shot 1/café.exr", "scenes/run.sh", "\U0001f600.txt", "\uff41.txt", "Z\x7f.txt"]
    )
    assert {(d.path, d.kind) for d in dropped} == {
        ("scenes/run.sh", "runnable"),
        ("current", "symlink"),
        ("big.bin", "chunked file"),
        ("empty", "directory"),
        ("\uff41dir", "directory"),
        ("\U0001f600dir", "directory"),
    }
    assert all(isinstance(d, DroppedEntry) and d.reason for d in dropped)
    assert [d.path for d in dropped] == sorted((d.path for d in dropped), key=canonical_path_key)
    # The result is a v1 manifest deadline reads.
    data = encode_manifest(v1)
    theirs = dl_decode(data.decode("ascii"))
    assert theirs.encode().encode("ascii") == data
    assert theirs.totalSize == 100 + 20 + 1 + 2 + 0


def test_to_v1_of_a_diff_and_of_nothing() -> None:
    v1, dropped = to_v1(golden_diff())
    assert [p.path for p in v1.paths] == ["keep/a.txt"]
    assert dropped[0].kind == "parentManifestHash"
    assert {(d.path, d.kind) for d in dropped[1:]} == {
        ("gone.txt", "delete marker"),
        ("old/sub/x", "delete marker"),
        ("old", "delete marker"),
        ("old/sub", "delete marker"),
        ("new", "directory"),
    }
    empty, dropped = to_v1(ManifestV2(files=[ManifestFilePath.symlink("l", "x")]))
    assert empty.paths == [] and [d.kind for d in dropped] == ["symlink"]
    with pytest.raises(ManifestError):
        encode_manifest(empty)  # v1 cannot express it; the caller is told


def test_to_v2_is_lossless() -> None:
    v1 = decode_manifest(GOLDEN_V1)
    v2 = to_v2(v1)
    assert v2.files == [ManifestFilePath.file("a/b.txt", h(1), 3, 5)]
    assert encode_manifest_v2(v2) == (
        b'{"dirs":[{"name":"a"}],"files":[{"hash":"'
        + h(1).encode()
        + b'","mtime":5,"name":"$0/b.txt","size":3}],"hashAlg":"xxh128",'
        b'"manifestVersion":"2025-12-04-beta","totalSize":3}'
    )
    back, dropped = to_v1(v2)
    assert dropped == [] and encode_manifest(back) == GOLDEN_V1
    # A large v1 file keeps its whole-file hash (no data to chunk), which v2 accepts.
    big = to_v2(Manifest([ManifestPath("big", h(2), BIG, 1), ManifestPath("big", h(3), 1, 1)]))
    assert big.files == [ManifestFilePath.file("big", h(3), 1, 1)]  # last duplicate wins
    assert decode_manifest_v2(
        encode_manifest_v2(to_v2(Manifest([ManifestPath("b", h(2), BIG, 1)])))
    )


# -- properties: round trips with arbitrary names ------------------------------------------

LONE = [os.fsdecode(b"\xff"), os.fsdecode(b"\x80abc"), "\udcff\udc80"]
component = st.one_of(
    st.text(
        alphabet=st.characters(
            blacklist_categories=("Cs",), blacklist_characters="/\x00", max_codepoint=0x10FFFF
        ),
        min_size=1,
        max_size=6,
    ).filter(lambda s: s not in (".", "..")),
    st.sampled_from(["a", "b", "Z", "$0", "$1", "$12x", "$", "café", "\U0001f600", "\uff41"]),
    st.sampled_from(LONE),
)
rel_path = st.lists(component, min_size=1, max_size=3).map("/".join)
hashes = st.integers(0, 2**128 - 1).map(lambda n: f"{n:032x}")
mtimes = st.integers(-(2**62), 2**62)


@st.composite
def file_entries(draw: st.DrawFn, path: str) -> ManifestFilePath:
    kind = draw(st.sampled_from(["hash", "hash", "chunked", "symlink"]))
    if kind == "hash":
        return ManifestFilePath.file(
            path,
            draw(hashes),
            draw(st.integers(0, 2**40)),
            draw(mtimes),
            runnable=draw(st.booleans()),
        )
    if kind == "chunked":
        size = draw(st.integers(CHUNK + 1, 5 * CHUNK))
        chunks = [draw(hashes) for _ in range(chunk_count(size))]
        return ManifestFilePath.chunked(
            path, chunks, size, draw(mtimes), runnable=draw(st.booleans())
        )
    depth = path.count("/")
    ups = draw(st.integers(0, depth))
    rest = draw(st.lists(component, min_size=0 if ups else 1, max_size=2))
    target = "/".join([".."] * ups + rest)
    if symlink_target_problem(path, target) is not None:  # "\" or "C:" in a component
        target = "t"
    return ManifestFilePath.symlink(path, target)


def _tree_paths(paths: list[str]) -> list[str]:
    """Drop paths that are ancestors of others, so that files never double as dirs."""
    unique = list(dict.fromkeys(paths))
    prefixes = {p[:i] for p in unique for i in range(len(p)) if p[i] == "/"}
    return [p for p in unique if p not in prefixes]


@st.composite
def v2_manifests(draw: st.DrawFn) -> ManifestV2:
    paths = _tree_paths(draw(st.lists(rel_path, max_size=8)))
    files = [draw(file_entries(p)) for p in paths]
    file_set = set(paths)
    dirs = [
        ManifestDirectoryPath(d)
        for d in draw(st.lists(rel_path, max_size=4))
        if not any(d == f or d.startswith(f + "/") for f in file_set)
    ]
    return ManifestV2(files=files, dirs=dirs)


def _ambiguous_target(m: ManifestV2) -> bool:
    dirs = {d.path for d in canonical_dirs(m)}
    return any(
        f.symlink_target is not None
        and re.match(r"\$[0-9]+/", f.symlink_target) is not None
        and f.symlink_target.rpartition("/")[0] not in dirs
        for f in m.files
    )


@PROPS
@given(v2_manifests())
def test_v2_round_trip(m: ManifestV2) -> None:
    if _ambiguous_target(m):
        with pytest.raises(ManifestError, match="directory reference"):
            encode_manifest_v2(m)
        return
    data = encode_manifest_v2(m)
    back = decode_manifest_v2(data, source="prop")
    assert back.files == sorted(m.files, key=lambda f: canonical_path_key(f.path))
    assert back.dirs == canonical_dirs(m)
    assert encode_manifest_v2(back) == data
    assert back.computed_total_size() == m.computed_total_size()
    # Canonical JSON, and every name with "/" is "$N/<one component>" (the AWS draft's
    # decoder requires exactly that).
    doc = json.loads(data)
    assert json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True) == (
        data.decode("ascii")
    )
    for entry in doc["dirs"] + doc["files"]:
        assert "/" not in entry["name"] or re.fullmatch(r"\$[0-9]+/[^/]+", entry["name"])
    # Conversion to v1 keeps exactly the regular, whole-file-hashed files.
    v1, dropped = to_v1(back)
    assert {p.path for p in v1.paths} == {f.path for f in back.files if f.hash is not None}
    assert {d.path for d in dropped if d.kind in ("symlink", "chunked file")} == {
        f.path for f in back.files if f.hash is None
    }


v1_entries = st.builds(
    ManifestPath,
    path=rel_path,
    hash=hashes,
    size=st.integers(0, 2**50),
    mtime=mtimes,
)


@PROPS
@given(st.lists(v1_entries, min_size=1, max_size=8, unique_by=lambda e: e.path))
def test_v1_round_trip_and_v2_conversion(entries: list[ManifestPath]) -> None:
    m = Manifest(paths=entries)
    data = encode_manifest(m)
    back = decode_any_manifest(data)
    assert isinstance(back, Manifest)
    assert encode_manifest(back) == data
    # deadline reads and writes the same bytes (lone surrogates included).
    assert dl_decode(data.decode("ascii")).encode().encode("ascii") == data
    # v1 -> v2 -> v1 is the identity when paths form a tree. (A path listed twice is
    # refused by decode_manifest: test_manifest_codec.py.)
    tree = _tree_paths([p.path for p in entries])
    if len(tree) == len(entries):
        again, dropped = to_v1(decode_manifest_v2(encode_manifest_v2(to_v2(m))))
        assert dropped == [] and encode_manifest(again) == data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_documents_decode_or_raise_manifest_error(data: st.DataObject) -> None:
    doc = json.loads(GOLDEN_SNAPSHOT if data.draw(st.booleans()) else GOLDEN_DIFF)
    junk = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 2**40),
        st.text(max_size=6),
        st.sampled_from(["$0/x", "$99/x", "../x", h(1), "a/b"]),
        st.lists(st.sampled_from([h(1), 3, None]), max_size=3),
        st.dictionaries(st.sampled_from(["name", "x"]), st.text(max_size=4), max_size=2),
    )
    for _ in range(data.draw(st.integers(1, 4))):
        section = data.draw(st.sampled_from(["dirs", "files", "top"]))
        if section == "top":
            doc[data.draw(st.sampled_from([*doc, "parentManifestHash"]))] = data.draw(junk)
        elif doc.get(section) and isinstance(doc[section], list):
            entries = doc[section]
            i = data.draw(st.integers(0, len(entries) - 1))
            if isinstance(entries[i], dict):
                key = data.draw(
                    st.sampled_from(
                        [
                            "name",
                            "hash",
                            "size",
                            "mtime",
                            "runnable",
                            "delete",
                            "symlink",
                            "chunkhashes",
                        ]
                    )
                )
                if data.draw(st.booleans()):
                    entries[i].pop(key, None)
                else:
                    entries[i][key] = data.draw(junk)
    text = json.dumps(doc)
    try:
        m = decode_any_manifest(text, source="fuzz")
    except ManifestError as e:
        assert str(e).startswith("manifest fuzz")
        return
    assert isinstance(m, ManifestV2)
    again = encode_manifest_v2(m)
    assert encode_manifest_v2(decode_manifest_v2(again)) == again
