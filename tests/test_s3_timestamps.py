"""S3 response timestamps: vfs's clients parse them without dateutil, to the same instants
botocore's own parser gives (vfs/storage/s3.py parse_s3_timestamp)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.utils import parse_timestamp

from vfs.storage.options import S3Options
from vfs.storage.s3 import S3Store, parse_s3_timestamp

SAMPLES = [
    "2026-12-03T09:43:28.000Z",  # a listing's LastModified (XML, ISO 8601)
    "2026-12-03T09:43:28Z",
    "2026-12-03T09:43:28.123456Z",
    "2026-12-03T09:43:28.123456789Z",  # more digits than datetime keeps: botocore's parser
    "Wed, 03 Dec 2026 09:43:28 GMT",  # a GET's or HEAD's Last-Modified (RFC 7231)
    "Thu, 01 Jan 1970 00:00:00 GMT",
    "2026-12-03T09:43:28+02:00",  # not S3's forms: botocore's parser
    "1764755008",
    "1764755008.5",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_same_instant_as_botocore(text: str) -> None:
    ours, theirs = parse_s3_timestamp(text), parse_timestamp(text)
    assert ours == theirs
    assert ours.utcoffset() == theirs.utcoffset()


def test_garbage_fails_like_botocore() -> None:
    with pytest.raises(ValueError):
        parse_timestamp("not a date Z")
    with pytest.raises(ValueError):
        parse_s3_timestamp("not a date Z")


def test_clients_use_it_and_agree_with_a_plain_client(
    s3_endpoint: str, s3_bucket: str, s3_client: Any
) -> None:
    """A store's client answers HEAD and LIST with the instants a plain boto3 client gives,
    through parse_s3_timestamp (the session's parser default)."""
    s3_client.put_object(Bucket=s3_bucket, Key="p/Data/a", Body=b"x")
    store = S3Store(s3_bucket, "p", S3Options(endpoint_url=s3_endpoint))
    factory = store.client._endpoint._response_parser_factory
    assert factory._defaults.get("timestamp_parser") is parse_s3_timestamp
    plain = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    ours = store.client.head_object(Bucket=s3_bucket, Key="p/Data/a")["LastModified"]
    theirs = plain.head_object(Bucket=s3_bucket, Key="p/Data/a")["LastModified"]
    assert ours == theirs and ours.tzinfo is not None
    listed = store.client.list_objects_v2(Bucket=s3_bucket, Prefix="p/")["Contents"]
    plain_listed = plain.list_objects_v2(Bucket=s3_bucket, Prefix="p/")["Contents"]
    assert [o["LastModified"] for o in listed] == [o["LastModified"] for o in plain_listed]
