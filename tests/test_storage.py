"""Object stores: LocalStore on a directory and S3Store on the moto server, URI parsing."""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vfs.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    CredentialsError,
    EndpointError,
    ObjectNotFoundError,
    StoreError,
    StoreUriError,
)
from vfs.storage import (
    LocalStore,
    ObjectStore,
    S3Options,
    S3Store,
    data_key,
    open_store,
    read_location,
)
from vfs.testing import S3Relay

OWNER = "123456789012"  # moto's default account id
PREFIX = "root/pre"


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(str(tmp_path / "store"))
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return S3Store(bucket, PREFIX, S3Options(endpoint_url=endpoint))


def test_put_get_head_bytes(store: ObjectStore) -> None:
    key = data_key("0123456789abcdef0123456789abcdef")
    assert key == "Data/0123456789abcdef0123456789abcdef.xxh128"
    assert store.head(key) is None
    store.put_bytes(key, b"hello")
    assert store.head(key) == 5
    assert store.get_bytes(key) == b"hello"
    store.put_bytes(key, b"")  # replace, and an empty object
    assert store.head(key) == 0
    assert store.get_bytes(key) == b""


@pytest.mark.parametrize("size", [0, 1000, 8 * 1024 * 1024 + 17])
def test_put_file_and_open_read(store: ObjectStore, tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    key = f"Data/file-{size}"
    store.put_file(key, src)
    assert store.head(key) == size
    chunks = []
    with store.open_read(key) as f:
        while chunk := f.read(1 << 20):
            chunks.append(chunk)
    assert b"".join(chunks) == data
    with store.open_read(key) as f:
        assert f.read() == data
    assert store.get_bytes(key) == data


def test_list_keys(store: ObjectStore) -> None:
    objects = {
        "Data/a.xxh128": b"a",
        "Data/b.xxh128": b"bb",
        "Manifests/farm/queue/Inputs/g/x_input": b"{}",
        "Datastore/other": b"ccc",
    }
    for k, v in objects.items():
        store.put_bytes(k, v)
    assert sorted(store.list_keys("Data/")) == [("Data/a.xxh128", 1), ("Data/b.xxh128", 2)]
    assert sorted(store.list_keys("")) == sorted((k, len(v)) for k, v in objects.items())
    assert sorted(store.list_keys("Manifests/farm")) == [
        ("Manifests/farm/queue/Inputs/g/x_input", 2)
    ]
    assert list(store.list_keys("Nothing/")) == []


def test_missing_object(store: ObjectStore) -> None:
    key = "Data/ffffffffffffffffffffffffffffffff.xxh128"
    full = store.describe(key)
    assert full.endswith(key)
    if isinstance(store, S3Store):
        assert full == f"s3://{store.bucket}/{PREFIX}/{key}"
    else:
        assert os.path.isabs(full)
    assert store.head(key) is None
    with pytest.raises(ObjectNotFoundError) as info:
        store.get_bytes(key)
    assert full in str(info.value)
    assert info.value.key == full
    with pytest.raises(ObjectNotFoundError) as info, store.open_read(key):
        pass
    assert full in str(info.value)


def test_s3_list_keys_stays_inside_the_root_prefix(
    s3_endpoint: str, s3_bucket: str, s3_client: Any
) -> None:
    # Objects under sibling prefixes that merely start with the same characters.
    for key in ["root/pre/Data/x", "root/pre2/Data/y", "root/prefix/z", "root/pre.txt"]:
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"1")
    store = S3Store(s3_bucket, "root/pre/", S3Options(endpoint_url=s3_endpoint))
    assert store.prefix == PREFIX
    assert list(store.list_keys("")) == [("Data/x", 1)]
    assert list(store.list_keys("Data/")) == [("Data/x", 1)]
    whole = S3Store(s3_bucket, "", S3Options(endpoint_url=s3_endpoint))
    assert sorted(k for k, _ in whole.list_keys("root/pre")) == [
        "root/pre.txt",
        "root/pre/Data/x",
        "root/pre2/Data/y",
        "root/prefix/z",
    ]
    assert whole.describe("a/b") == f"s3://{s3_bucket}/a/b"
    assert whole.uri == f"s3://{s3_bucket}"


def test_s3_missing_bucket(s3_endpoint: str) -> None:
    """A missing bucket is named as such, by GET and by HEAD (whose bare 404 cannot say
    which is missing), so that callers stop at the first object instead of the last."""
    store = S3Store("no-such-bucket-vfs", "p", S3Options(endpoint_url=s3_endpoint))
    with pytest.raises(BucketNotFoundError) as info:
        store.get_bytes("Data/x")
    assert "s3://no-such-bucket-vfs/p/Data/x" in str(info.value)
    assert "bucket 'no-such-bucket-vfs' does not exist" in str(info.value)
    with pytest.raises(BucketNotFoundError, match="does not exist"):
        store.head("Data/x")


def test_s3_transfer_uploads_name_the_missing_bucket(s3_endpoint: str, tmp_path: Path) -> None:
    """s3transfer wraps the client's error (``S3UploadFailedError``); the uploads through it
    (whole file, multipart range) still report the classified cause."""
    store = S3Store("no-such-bucket-vfs", "p", S3Options(endpoint_url=s3_endpoint))
    path = tmp_path / "f"
    path.write_bytes(os.urandom(6 * 1024 * 1024))
    with pytest.raises(BucketNotFoundError, match="does not exist"):
        store.put_file("Data/f", path)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(BucketNotFoundError, match="does not exist"):
            store.put_file_range("Data/g", fd, 0, 6 * 1024 * 1024, multipart=True,
                                 part_size=5 * 1024 * 1024)  # fmt: skip
    finally:
        os.close(fd)


def test_s3_head_of_a_missing_key_in_an_existing_bucket_is_none(
    s3_endpoint: str, s3_bucket: str
) -> None:
    store = S3Store(s3_bucket, "p", S3Options(endpoint_url=s3_endpoint))
    assert store.head("Data/x") is None
    assert store.head("Data/y") is None


def test_s3_without_credentials_says_so(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = S3Store("bucket", "p", S3Options(endpoint_url=s3_endpoint))
    with pytest.raises(CredentialsError, match="no AWS credentials found") as info:
        store.get_bytes("Data/x")
    assert "AWS_PROFILE" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("deny", "error", "text", "hint"),
    [
        ((403, "InvalidAccessKeyId", "The key does not exist"), CredentialsError,
         "credentials were rejected (InvalidAccessKeyId)", "access key"),
        ((403, "SignatureDoesNotMatch", "bad signature"), CredentialsError,
         "credentials were rejected (SignatureDoesNotMatch)", "access key"),
        ((400, "ExpiredToken", "The provided token has expired"), CredentialsError,
         "credentials were rejected (ExpiredToken)", "session token"),
        ((403, "AccessDenied", "User is not authorized to perform kms:Decrypt"),
         AccessDeniedError, "access denied by the KMS key", "kms:Decrypt"),
        ((403, "AccessDenied", "Access Denied"), AccessDeniedError, "access denied",
         "ExpectedBucketOwner"),
    ],
)  # fmt: skip
def test_s3_refusals_name_their_cause(
    s3_relay: S3Relay,
    s3_bucket: str,
    deny: tuple[int, str, str],
    error: type[Exception],
    text: str,
    hint: str,
) -> None:
    s3_relay.deny = deny
    store = S3Store(s3_bucket, "p", S3Options(endpoint_url=s3_relay.url, max_attempts=1))
    with pytest.raises(error, match=re.escape(text)) as info:
        store.get_bytes("Data/x")
    assert store.describe("Data/x") in str(info.value)
    assert hint in (getattr(info.value, "hint", "") or "")


def test_s3_unreachable_endpoint_and_malformed_url(s3_bucket: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    store = S3Store(
        s3_bucket, "p", S3Options(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1)
    )
    with pytest.raises(EndpointError, match=f"cannot reach http://127.0.0.1:{port}"):
        store.get_bytes("Data/x")
    with pytest.raises(EndpointError, match="'not-a-url' is not a URL") as info:
        S3Store(s3_bucket, "p", S3Options(endpoint_url="not-a-url"))
    assert "--endpoint-url" in (info.value.hint or "")


def test_local_store_layout_and_keys(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LocalStore(str(root))
    assert store.uri == f"file://{root}"
    store.put_bytes("Data/abc.xxh128", b"xyz")
    assert (root / "Data" / "abc.xxh128").read_bytes() == b"xyz"
    (root / "Data" / ".tmp-partial").write_bytes(b"half")
    assert list(store.list_keys("")) == [("Data/abc.xxh128", 3)]
    for bad in ["../escape", "/etc/passwd", "Data/../../x"]:
        with pytest.raises(StoreError):
            store.put_bytes(bad, b"x")
    assert not (tmp_path / "escape").exists()


def test_local_store_writes_objects_with_the_umasks_modes(tmp_path: Path) -> None:
    """A file:// store is shared like the bucket it stands for: objects and metadata get
    the mode a new file gets (not mkstemp's 0600)."""
    script = (
        "import os, sys; os.umask(int(sys.argv[2], 8)); from vfs.storage import LocalStore; "
        "s = LocalStore(sys.argv[1]); s.put_bytes('Data/a', b'x', {'k': 'v'}); "
        "s.put_file('Data/b', sys.argv[3])"
    )
    (tmp_path / "src").write_bytes(b"y")
    for umask, mode in (("022", 0o644), ("077", 0o600), ("002", 0o664)):
        root = tmp_path / f"store{umask}"
        subprocess.run([sys.executable, "-c", script, str(root), umask, str(tmp_path / "src")],
                       check=True, timeout=60)  # fmt: skip
        written = [p for p in root.rglob("*") if p.is_file()]
        assert len(written) >= 3, written  # two objects and the metadata of one
        for p in written:
            assert p.stat().st_mode & 0o777 == mode, (p, oct(p.stat().st_mode))


def test_put_file_missing_source_names_it(store: ObjectStore, tmp_path: Path) -> None:
    missing = tmp_path / "nope.bin"
    with pytest.raises(StoreError) as info:
        store.put_file("Data/x", missing)
    # The local file is what is missing, not the object.
    assert not isinstance(info.value, ObjectNotFoundError)
    assert str(missing) in str(info.value)
    assert store.describe("Data/x") in str(info.value)
    assert store.head("Data/x") is None
    assert list(store.list_keys("")) == []


# -- URIs ----------------------------------------------------------------------------------


def test_open_store_s3_uris() -> None:
    s = open_store("s3://bucket/prefix/sub")
    assert isinstance(s, S3Store)
    assert (s.bucket, s.prefix, s.uri) == ("bucket", "prefix/sub", "s3://bucket/prefix/sub")
    assert s.describe("Data/h.xxh128") == "s3://bucket/prefix/sub/Data/h.xxh128"
    s = open_store("s3://bucket")
    assert isinstance(s, S3Store)
    assert (s.bucket, s.prefix, s.uri) == ("bucket", "", "s3://bucket")
    s = open_store("s3://bucket/p/")
    assert isinstance(s, S3Store) and s.prefix == "p"
    opts = S3Options(endpoint_url="http://127.0.0.1:9", expected_bucket_owner=OWNER)
    s = open_store("s3://b/p", opts)
    assert isinstance(s, S3Store) and s.options == opts


def test_open_store_file_uris(tmp_path: Path) -> None:
    s = open_store(f"file://{tmp_path}")
    assert isinstance(s, LocalStore) and s.root == str(tmp_path)
    s = open_store(f"file://localhost{tmp_path}")
    assert isinstance(s, LocalStore) and s.root == str(tmp_path)
    s = open_store("file:///tmp/with%20space")
    assert isinstance(s, LocalStore) and s.root == "/tmp/with space"


@pytest.mark.parametrize(
    "uri",
    [
        "s3://",
        "s3:///prefix",
        "file://host/dir",
        "file://relative/dir",
        "file://",
        "file:relative",
        "http://example.com/x",
        "/abs/dir",
        "bucket/prefix",
        "",
        "S3://bucket",
    ],
)
def test_open_store_bad_uris(uri: str) -> None:
    with pytest.raises(StoreUriError) as info:
        open_store(uri)
    assert repr(uri) in str(info.value)


def test_read_location_local(tmp_path: Path) -> None:
    p = tmp_path / "m.manifest"
    p.write_bytes(b"content")
    assert read_location(str(p)) == b"content"
    assert read_location(f"file://{p}") == b"content"
    with pytest.raises(StoreError) as info:
        read_location(str(tmp_path / "missing.manifest"))
    assert str(tmp_path / "missing.manifest") in str(info.value)


def test_read_location_s3(s3_endpoint: str, s3_bucket: str, s3_client: Any) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="Manifests/a/b_input", Body=b"manifest!")
    opts = S3Options(endpoint_url=s3_endpoint)
    assert read_location(f"s3://{s3_bucket}/Manifests/a/b_input", opts) == b"manifest!"
    with pytest.raises(ObjectNotFoundError) as info:
        read_location(f"s3://{s3_bucket}/Manifests/a/missing", opts)
    assert f"s3://{s3_bucket}/Manifests/a/missing" in str(info.value)
    with pytest.raises(StoreUriError):
        read_location(f"s3://{s3_bucket}", opts)
    with pytest.raises(StoreUriError):
        read_location(f"s3://{s3_bucket}/", opts)


# -- ExpectedBucketOwner -------------------------------------------------------------------


def capture_headers(store: S3Store) -> list[tuple[str, str | None]]:
    """Record (operation, x-amz-expected-bucket-owner) of every request the client sends."""
    seen: list[tuple[str, str | None]] = []

    def before_send(request: Any, event_name: str, **_: Any) -> None:
        value = request.headers.get("x-amz-expected-bucket-owner")
        if isinstance(value, bytes):
            value = value.decode()
        seen.append((event_name.rsplit(".", 1)[-1], value))

    store.client.meta.events.register("before-send.s3", before_send)
    return seen


def exercise(store: S3Store, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x01" * (8 * 1024 * 1024 + 5))  # multipart with the default threshold
    small = tmp_path / "small.bin"
    small.write_bytes(b"small")
    store.put_bytes("Data/a", b"abc")
    store.put_file("Data/small", small)
    store.put_file("Data/big", big)
    assert store.head("Data/a") == 3
    assert store.head("Data/none") is None
    assert store.get_bytes("Data/small") == b"small"
    with store.open_read("Data/a") as f:
        assert f.read() == b"abc"
    assert len(list(store.list_keys("Data/"))) == 3


def test_expected_bucket_owner_is_sent_on_every_call(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    store = S3Store(
        s3_bucket, PREFIX, S3Options(endpoint_url=s3_endpoint, expected_bucket_owner=OWNER)
    )
    seen = capture_headers(store)
    exercise(store, tmp_path)
    ops = {op for op, _ in seen}
    assert {"PutObject", "HeadObject", "GetObject", "ListObjectsV2"} <= ops
    assert {"CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"} <= ops
    assert all(owner == OWNER for _, owner in seen), seen


def test_no_expected_bucket_owner_by_default(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    store = S3Store(s3_bucket, PREFIX, S3Options(endpoint_url=s3_endpoint))
    seen = capture_headers(store)
    exercise(store, tmp_path)
    assert seen and all(owner is None for _, owner in seen)


def test_bucket_owner_is_enforced_through_a_checking_relay(
    s3_relay: S3Relay, s3_bucket: str, tmp_path: Path
) -> None:
    """moto does not enforce ExpectedBucketOwner; the relay does (403 AccessDenied when the
    header is missing or differs), so every call of a store with the right owner must carry
    it, and a wrong or missing owner must surface as AccessDeniedError."""
    s3_relay.expected_owner = OWNER
    store = S3Store(
        s3_bucket, PREFIX, S3Options(endpoint_url=s3_relay.url, expected_bucket_owner=OWNER)
    )
    exercise(store, tmp_path)
    assert store.get_bytes("Data/a") == b"abc"
    methods = {r.method for r in s3_relay.seen}
    assert {"PUT", "HEAD", "GET", "POST"} <= methods, methods
    assert all(r.owner == OWNER for r in s3_relay.seen), s3_relay.seen

    for owner in ("999999999999", None):
        other = S3Store(
            s3_bucket, PREFIX, S3Options(endpoint_url=s3_relay.url, expected_bucket_owner=owner)
        )
        with pytest.raises(AccessDeniedError) as info:
            other.get_bytes("Data/a")
        assert other.describe("Data/a") in str(info.value)
        assert "ExpectedBucketOwner" in str(info.value)
        assert s3_relay.seen[-1].owner == owner
