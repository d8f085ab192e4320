"""The canonical manifest codec against the reference facts and against deadline itself.

deadline 0.60.10 (deadline-job-attachments 0.1.5) is the oracle: for any manifest, our bytes
must equal its ``AssetManifest.encode()`` bytes, and each side must decode the other's bytes
back to the same bytes.
"""

from __future__ import annotations

import json
import os

import pytest
from deadline.job_attachments.asset_manifests.decode import decode_manifest as dl_decode
from deadline.job_attachments.asset_manifests.hash_algorithms import HashAlgorithm
from deadline.job_attachments.asset_manifests.v2023_03_03 import AssetManifest as DlManifest
from deadline.job_attachments.asset_manifests.v2023_03_03 import ManifestPath as DlPath
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfs.errors import ManifestError
from vfs.manifest import (
    Manifest,
    ManifestPath,
    canonical_path_key,
    decode_any_manifest,
    decode_manifest,
    encode_manifest,
    path_problem,
)

GOLDEN = (
    b'{"hashAlg":"xxh128","manifestVersion":"2023-03-03","paths":[{"hash":'
    b'"99aa06d3014798d86001c324468d497f","mtime":1795418714464717,"path":"scenes/empty.dat",'
    b'"size":0}],"totalSize":0}'
)
H0 = "99aa06d3014798d86001c324468d497f"
H1 = "0123456789abcdef0123456789abcdef"


def entry(path: str, hash_: str = H1, size: int = 1, mtime: int = 0) -> ManifestPath:
    return ManifestPath(path, hash_, size, mtime)


def dl_encode(m: Manifest) -> bytes:
    """deadline's encoding of the same manifest (fresh objects: deadline sorts in place)."""
    dl = DlManifest(
        hash_alg=HashAlgorithm.XXH128,
        paths=[DlPath(path=p.path, hash=p.hash, size=p.size, mtime=p.mtime) for p in m.paths],
        total_size=m.effective_total_size(),
    )
    return dl.encode().encode("utf-8")


def paths_in(data: bytes) -> list[str]:
    return [p["path"] for p in json.loads(data)["paths"]]


# -- golden example ------------------------------------------------------------------------


def test_golden_round_trip_is_byte_exact() -> None:
    m = decode_manifest(GOLDEN, source="golden")
    assert m.paths == [ManifestPath("scenes/empty.dat", H0, 0, 1795418714464717)]
    assert m.total_size == 0
    assert encode_manifest(m) == GOLDEN
    assert not encode_manifest(m).endswith(b"\n")
    # Also from a str, and from a manifest built in memory.
    assert encode_manifest(decode_manifest(GOLDEN.decode())) == GOLDEN
    built = Manifest(paths=[ManifestPath("scenes/empty.dat", H0, 0, 1795418714464717)])
    assert encode_manifest(built) == GOLDEN
    assert dl_encode(built) == GOLDEN


def test_decoded_total_size_is_kept_verbatim() -> None:
    data = GOLDEN.replace(b'"totalSize":0', b'"totalSize":42')
    m = decode_manifest(data)
    assert m.total_size == 42
    assert encode_manifest(m) == data
    assert dl_decode(data.decode()).encode().encode() == data


def test_unknown_keys_are_dropped_on_reencode() -> None:
    doc = json.loads(GOLDEN)
    doc["extra"] = 1
    doc["paths"][0]["extra"] = "x"
    m = decode_manifest(json.dumps(doc))
    assert encode_manifest(m) == GOLDEN


def test_empty_manifest_cannot_be_encoded() -> None:
    with pytest.raises(ManifestError):
        encode_manifest(Manifest(paths=[]))


# -- ordering ------------------------------------------------------------------------------


def test_utf16_code_unit_order() -> None:
    names = ["\uff41.txt", "a.txt", "\U0001f600.txt", "Z.txt", "a/b.txt", "a.txt/x", "\ue000"]
    m = Manifest(paths=[entry(n) for n in names])
    data = encode_manifest(m)
    order = paths_in(data)
    # Astral (surrogate pair D83D…) before U+E000 and U+FF41; uppercase before lowercase.
    assert order.index("\U0001f600.txt") < order.index("\ue000") < order.index("\uff41.txt")
    assert order.index("Z.txt") < order.index("a.txt")
    # Code-point order would differ: U+FF41 < U+1F600.
    assert sorted(names) != order
    assert order == sorted(names, key=lambda s: s.encode("utf-16_be", "surrogatepass"))
    assert data == dl_encode(m)
    # The in-memory list is not reordered.
    assert [p.path for p in m.paths] == names


def test_canonical_path_key() -> None:
    assert canonical_path_key("\U0001f600") < canonical_path_key("\uff41")
    assert canonical_path_key("Z") < canonical_path_key("a")
    assert canonical_path_key("\udcff") == b"\xdc\xff"


# -- escaping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "escaped"),
    [
        ("caf\u00e9/x", b'"caf\\u00e9/x"'),
        ("a\x7fb", b'"a\\u007fb"'),
        ("dir/sub/file", b'"dir/sub/file"'),
        (os.fsdecode(b"\xff"), b'"\\udcff"'),
        ("\U0001f600", b'"\\ud83d\\ude00"'),
        ('q"b\\s', b'"q\\"b\\\\s"'),
        ("c\n\r\t\b\f\x01\x1f", b'"c\\n\\r\\t\\b\\f\\u0001\\u001f"'),
        ("\u00c9\uffff", b'"\\u00c9\\uffff"'),
    ],
)
def test_escaping(name: str, escaped: bytes) -> None:
    m = Manifest(paths=[entry(name)])
    data = encode_manifest(m)
    assert b'"path":' + escaped + b',"size"' in data
    assert data == dl_encode(m)
    assert data.isascii()
    assert decode_manifest(data).paths[0].path == name


def test_hex_escapes_are_lowercase() -> None:
    data = encode_manifest(Manifest(paths=[entry("\u00ff\u00ab\ufeff")]))
    assert b"\\u00ff\\u00ab\\ufeff" in data
    assert b"\\u00FF" not in data


# -- property test against deadline ---------------------------------------------------------

_SURROGATE_ESCAPES = [os.fsdecode(bytes([b])) for b in (0x80, 0x9F, 0xC3, 0xE9, 0xFE, 0xFF)]
_SPECIALS = [
    "\U0001f600",
    "\U00010000",
    "\U0010ffff",
    "\uff41",
    "\ue000",
    "\u00e9",
    "\x7f",
    "\x01",
    "\n",
    "\t",
    '"',
    "\\",
    "Z",
    "a",
    "\ud800",
    "\udfff",
    *_SURROGATE_ESCAPES,
]
_char = st.one_of(
    st.characters(exclude_characters="/\x00", exclude_categories=()),
    st.sampled_from(_SPECIALS),
)
_component = st.text(_char, min_size=1, max_size=8).filter(lambda c: c not in (".", ".."))
_path = st.lists(_component, min_size=1, max_size=4).map("/".join)
_hash = st.binary(min_size=16, max_size=16).map(bytes.hex)
_mtime = st.integers(min_value=-(2**62), max_value=2**62)
_entry = st.builds(ManifestPath, _path, _hash, st.integers(min_value=0, max_value=2**50), _mtime)
_manifest = st.builds(
    Manifest,
    st.lists(_entry, min_size=1, max_size=12, unique_by=lambda e: e.path),
    total_size=st.one_of(st.none(), st.integers(min_value=0, max_value=2**60)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_manifest)
def test_encode_matches_deadline(m: Manifest) -> None:
    for p in m.paths:
        assert path_problem(p.path) is None
    ours = encode_manifest(m)
    theirs = dl_encode(m)
    assert ours == theirs
    assert ours.isascii() and not ours.endswith(b"\n")

    # deadline decodes our bytes and re-encodes them identically.
    assert dl_decode(ours.decode("ascii")).encode().encode("ascii") == ours
    # We decode deadline's bytes (as text and as bytes) and re-encode them identically.
    back = decode_manifest(theirs.decode("ascii"), source="deadline")
    assert encode_manifest(back) == theirs
    assert encode_manifest(decode_manifest(theirs)) == theirs
    # Decoding gives the same entries, in canonical order.
    expected = sorted(m.paths, key=lambda p: canonical_path_key(p.path))
    assert back.paths == expected
    assert back.total_size == m.effective_total_size()


# -- decode errors -------------------------------------------------------------------------

SRC = "/data/manifests/x.manifest"


def doc_with(**changes: object) -> dict[str, object]:
    doc: dict[str, object] = json.loads(GOLDEN)
    doc.update(changes)
    return doc


def raises_manifest_error(data: str | bytes) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        decode_manifest(data, source=SRC)
    err = info.value
    assert err.source == SRC
    assert SRC in str(err)
    return err


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "JSON"),
        (b"{", "JSON"),
        (b"\xff\xfe\x00", "JSON"),
        (b"[1, 2]", "object"),
        (b"null", "object"),
        (json.dumps(doc_with(manifestVersion="2025-12-04-beta")), "2025-12-04-beta"),
        (json.dumps(doc_with(manifestVersion=None)), "version"),
        (json.dumps(doc_with(hashAlg="sha256")), "sha256"),
        (json.dumps(doc_with(paths=[])), "empty"),
        (json.dumps(doc_with(paths={})), "paths"),
        (json.dumps(doc_with(totalSize=True)), "totalSize"),
        (json.dumps(doc_with(totalSize="0")), "totalSize"),
    ],
)
def test_top_level_errors(data: str | bytes, words: str) -> None:
    err = raises_manifest_error(data)
    assert words in str(err)
    assert err.entry is None


@pytest.mark.parametrize("key", ["hashAlg", "manifestVersion", "paths", "totalSize"])
def test_missing_top_level_key(key: str) -> None:
    doc = doc_with()
    del doc[key]
    err = raises_manifest_error(json.dumps(doc))
    assert key in str(err) or "version" in str(err)


GOOD = {"hash": H1, "mtime": 5, "path": "ok/file", "size": 3}
_DROP = object()


def bad_entry(**changes: object) -> dict[str, object]:
    e = dict(GOOD)
    e.update(changes)
    return {k: v for k, v in e.items() if v is not _DROP}


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (bad_entry(path="x", hash=_DROP), "'hash' is missing"),
        (bad_entry(path="x", size=_DROP), "'size' is missing"),
        (bad_entry(path="x", mtime=_DROP), "'mtime' is missing"),
        (bad_entry(path="x", size=True), "size is not an integer"),
        (bad_entry(path="x", mtime=False), "mtime is not an integer"),
        (bad_entry(path="x", size=1.0), "size is not an integer"),
        (bad_entry(path="x", mtime="5"), "mtime is not an integer"),
        (bad_entry(path="x", size=-1), "negative"),
        (bad_entry(path="x", hash="ABCDEF0123456789ABCDEF0123456789"), "hash"),
        (bad_entry(path="x", hash="0123"), "hash"),
        (bad_entry(path="x", hash="g" * 32), "hash"),
        (bad_entry(path="x", hash=5), "hash"),
        (bad_entry(path="/abs/x"), "absolute"),
        (bad_entry(path="a/../b"), "'..'"),
        (bad_entry(path=".."), "'..'"),
        (bad_entry(path="../x"), "'..'"),
        (bad_entry(path="a/.."), "'..'"),
        (bad_entry(path="./x"), "'.'"),
        (bad_entry(path="a/./b"), "'.'"),
        (bad_entry(path="."), "'.'"),
        (bad_entry(path="a//b"), "empty component"),
        (bad_entry(path="a/"), "empty component"),
        (bad_entry(path=""), "empty"),
        (bad_entry(path="a\x00b"), "NUL"),
    ],
)
def test_entry_errors_name_source_entry_and_problem(bad: dict[str, object], words: str) -> None:
    doc = doc_with(paths=[GOOD, bad])
    err = raises_manifest_error(json.dumps(doc))
    msg = str(err)
    assert words in msg
    assert err.entry is not None
    assert "#1" in err.entry and "#1" in msg
    assert repr(bad["path"]) in err.entry
    assert repr(bad["path"]) in msg


@pytest.mark.parametrize("bad", [[], "ok/file", 5, None, True])
def test_entry_not_an_object(bad: object) -> None:
    doc = doc_with(paths=[GOOD, GOOD, bad])
    err = raises_manifest_error(json.dumps(doc))
    assert err.entry is not None and "#2" in err.entry
    assert "#2" in str(err)
    assert "not a JSON object" in str(err)


def test_entry_path_missing_or_not_a_string() -> None:
    err = raises_manifest_error(json.dumps(doc_with(paths=[bad_entry(path=_DROP)])))
    assert err.entry == "#0" and "'path' is missing" in str(err)
    err = raises_manifest_error(json.dumps(doc_with(paths=[bad_entry(path=7)])))
    assert err.entry == "#0" and "path is not a string" in str(err)


def test_error_without_source_still_explains() -> None:
    with pytest.raises(ManifestError) as info:
        decode_manifest(json.dumps(doc_with(paths=[bad_entry(path="../x")])))
    assert info.value.source is None
    assert "'../x'" in str(info.value) and "'..'" in str(info.value)


# -- duplicate paths -----------------------------------------------------------------------


@pytest.mark.parametrize("same_content", [True, False])
def test_duplicate_path_is_refused_naming_file_and_path(same_content: bool) -> None:
    """deadline decodes a manifest listing a path twice and keeps both entries; vfs refuses it
    (which entry a download or mount would use is an accident of order), through the
    canonical fast path, the general path and decode_any_manifest alike."""
    twin = dict(GOOD) if same_content else bad_entry(hash=H0, size=0)
    other = bad_entry(path="zz/other")
    rows = [(str(e["path"]), str(e["hash"]), int(str(e["size"]))) for e in (GOOD, twin, other)]
    canonical = encode_manifest(Manifest([entry(*row) for row in rows]))
    assert len(dl_decode(canonical.decode("ascii")).paths) == 3  # deadline accepts it
    spaced = json.dumps(doc_with(paths=[other, GOOD, twin]), indent=1)
    for data in (canonical, canonical.decode("ascii"), spaced):
        for decode in (decode_manifest, decode_any_manifest):
            with pytest.raises(ManifestError) as info:
                decode(data, source=SRC)
            err = info.value
            assert err.source == SRC and SRC in str(err)
            assert err.entry is not None and repr("ok/file") in err.entry
            assert "listed twice" in str(err) and repr("ok/file") in str(err)


def test_distinct_paths_differing_only_in_case_or_form_are_not_duplicates() -> None:
    m = Manifest([entry("a"), entry("A"), entry("\u00e9"), entry("e\u0301")])
    data = encode_manifest(m)
    assert data == dl_encode(m)
    assert encode_manifest(decode_manifest(data)) == data


# -- the mount's column decode ---------------------------------------------------------------


def _columns_case(paths_json: str, total: int = 3) -> bytes:
    return (
        '{"hashAlg":"xxh128","manifestVersion":"2023-03-03","paths":'
        + paths_json
        + f',"totalSize":{total}}}'
    ).encode()


_GOOD = '{"hash":"%s","mtime":-5,"path":"d/a b","size":3}' % ("0123456789abcdef" * 2)


@pytest.mark.parametrize(
    "data",
    [
        _columns_case("[" + _GOOD + "]"),
        _columns_case("[" + _GOOD + "," + _GOOD.replace("d/a b", "\\u00e9/\\ud83d\\ude00") + "]"),
        _columns_case("[" + _GOOD.replace('"size":3', '"size":3,"extra":[1]') + "]"),
    ],
)
def test_column_decode_equals_the_manifest_decode(data: bytes) -> None:
    from vfs.manifest.codec import decode_manifest_columns

    columns = decode_manifest_columns(data)
    assert columns is not None
    assert columns.to_manifest() == decode_manifest(data)
    assert decode_manifest_columns(data.decode()) == columns


@pytest.mark.parametrize(
    "data",
    [
        _columns_case("[]"),
        _columns_case("[" + _GOOD + "," + _GOOD + "]"),  # listed twice
        _columns_case("[" + _GOOD.replace('"size":3', '"size":-1') + "]"),
        _columns_case("[" + _GOOD.replace('"size":3', '"size":3.0') + "]"),
        _columns_case("[" + _GOOD.replace('"size":3', '"size":true') + "]"),
        _columns_case("[" + _GOOD.replace('"size":3', f'"size":{2**64}') + "]"),
        _columns_case("[" + _GOOD.replace('"mtime":-5', f'"mtime":{2**63}') + "]"),
        _columns_case("[" + _GOOD.replace("0123", "0X23") + "]"),
        _columns_case("[" + _GOOD.replace("d/a b", "d/../x") + "]"),
        _columns_case("[" + _GOOD.replace("d/a b", "d/\\ud800") + "]"),
        _columns_case("[" + _GOOD.replace('"path":"d/a b",', "") + "]"),
        _columns_case("[" + _GOOD + "]") + b"x",
        _columns_case("[" + _GOOD + "]").replace(b'"totalSize"', b'"other":1,"totalSize"'),
        b" " + _columns_case("[" + _GOOD + "]"),
    ],
)
def test_column_decode_leaves_everything_else_to_the_full_decode(data: bytes) -> None:
    from vfs.manifest.codec import decode_manifest_columns

    assert decode_manifest_columns(data) is None
