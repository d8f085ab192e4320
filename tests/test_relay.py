"""The fault-injecting S3 relay of :mod:`vfs.testing.relay`: each knob, through real HTTP
(boto3 and urllib) against the moto server."""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from vfs.testing import S3Relay
from vfs.testing.logcheck import unexpected_records

BODY = random.Random(7).randbytes(256 * 1024)
KEY = "obj.bin"


@pytest.fixture()
def obj(s3_client: Any, s3_bucket: str) -> str:
    """Path (``/bucket/key``) of a 256 KiB object on moto."""
    s3_client.put_object(Bucket=s3_bucket, Key=KEY, Body=BODY)
    return f"/{s3_bucket}/{KEY}"


@pytest.fixture()
def relay(s3_endpoint: str) -> Iterator[S3Relay]:
    r = S3Relay(s3_endpoint)
    try:
        yield r
    finally:
        r.close()


def client(url: str, retries: int = 1) -> Any:
    """A boto3 client on ``url`` that does not retry (so faults show)."""
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": retries, "mode": "standard"}, read_timeout=30),
    )


def signed(relay: S3Relay, bucket: str, key: str = KEY) -> str:
    """A presigned GET URL of ``key`` through the relay (plain HTTP clients can use it)."""
    url: str = client(relay.url).generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}
    )
    return url


def target(url: str) -> str:
    """The request target (path and query) of ``url``."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A plain GET with urllib: status, headers, body."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_forwards_and_records(relay: S3Relay, obj: str, s3_bucket: str) -> None:
    c = client(relay.url)
    assert (
        c.get_object(Bucket=s3_bucket, Key=KEY, Range="bytes=10-19")["Body"].read() == (BODY[10:20])
    )
    assert c.head_object(Bucket=s3_bucket, Key=KEY)["ContentLength"] == len(BODY)
    (g,) = relay.gets(KEY)
    assert (g.method, g.path, g.range) == ("GET", obj, "bytes=10-19")
    assert [r.method for r in relay.seen] == ["GET", "HEAD"]


def test_down_and_fail_ratio(relay: S3Relay, obj: str, s3_bucket: str) -> None:
    relay.down = True
    status, _, body = get(signed(relay, s3_bucket))
    assert status == 503 and b"ServiceUnavailable" in body
    relay.down = False
    relay.fail_ratio = 1.0
    assert get(signed(relay, s3_bucket))[0] == 503
    relay.fail_ratio = 0.0
    assert get(signed(relay, s3_bucket))[0] == 200


def test_stall_delays_the_answer(relay: S3Relay, obj: str, s3_bucket: str) -> None:
    relay.stall = 0.5
    t0 = time.monotonic()
    assert get(signed(relay, s3_bucket))[2] == BODY
    assert time.monotonic() - t0 >= 0.5


def test_drop_range_answers_the_whole_object(relay: S3Relay, obj: str, s3_bucket: str) -> None:
    status, _, body = get(signed(relay, s3_bucket), {"Range": "bytes=0-99"})
    assert (status, body) == (206, BODY[:100])
    relay.drop_range = True
    status, _, body = get(signed(relay, s3_bucket), {"Range": "bytes=0-99"})
    assert (status, body) == (200, BODY)
    resp = client(relay.url).get_object(Bucket=s3_bucket, Key=KEY, Range="bytes=5-9")
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert resp["Body"].read() == BODY
    assert relay.gets()[-1].range == "bytes=5-9"  # recorded as the client sent it


def test_rewrite_replaces_the_body(relay: S3Relay, obj: str, s3_bucket: str) -> None:
    calls: list[str] = []

    def flip(path: str, body: bytes) -> bytes:
        calls.append(path)
        return b"X" + body[1:] + b"tail"

    relay.rewrite = flip
    status, headers, body = get(signed(relay, s3_bucket))
    assert status == 200 and body == b"X" + BODY[1:] + b"tail"
    assert int(headers["Content-Length"]) == len(BODY) + 4
    ranged = client(relay.url).get_object(Bucket=s3_bucket, Key=KEY, Range="bytes=0-9")
    assert ranged["Body"].read() == b"X" + BODY[1:10] + b"tail"
    assert [c.split("?")[0] for c in calls] == [obj, obj]
    # Errors and HEADs are not rewritten.
    assert get(signed(relay, s3_bucket, "missing"))[0] == 404
    assert [c.split("?")[0] for c in calls] == [obj, obj]


def test_stall_body_sends_headers_and_64k_then_pauses(
    relay: S3Relay, obj: str, s3_bucket: str
) -> None:
    relay.stall_body = 2.0
    host, port = relay.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    t0 = time.monotonic()
    conn.request("GET", target(signed(relay, s3_bucket)))
    resp = conn.getresponse()
    t_headers = time.monotonic() - t0
    first = resp.read(64 * 1024)
    t_first = time.monotonic() - t0
    rest = resp.read()
    t_all = time.monotonic() - t0
    conn.close()
    assert resp.status == 200 and first + rest == BODY
    assert t_headers < 1.5 and t_first < 1.5, (t_headers, t_first)  # before the pause
    assert t_all >= 2.0


def test_trickle_limits_the_rate(relay: S3Relay, obj: str, s3_bucket: str) -> None:
    relay.trickle = 100_000.0  # bytes/s: 256 KiB take about 2.6 s
    t0 = time.monotonic()
    assert get(signed(relay, s3_bucket))[2] == BODY
    assert time.monotonic() - t0 >= 2.5
    relay.trickle = 0
    t0 = time.monotonic()
    assert get(signed(relay, s3_bucket))[2] == BODY
    assert time.monotonic() - t0 < 2.0


def test_reset_after_cuts_the_connection(relay: S3Relay, obj: str, s3_bucket: str) -> None:
    relay.reset_after = 1000
    host, port = relay.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", target(signed(relay, s3_bucket)))
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Length") == str(len(BODY))
    got = b""
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        while chunk := resp.read(100):
            got += chunk
        raise http.client.IncompleteRead(got)
    conn.close()
    assert len(got) <= 1000 and BODY.startswith(got)
    with pytest.raises(Exception, match=r"(?i)connection|incomplete|read"):
        client(relay.url).get_object(Bucket=s3_bucket, Key=KEY)["Body"].read()
    # A body no longer than the limit is sent whole.
    status, _, body = get(signed(relay, s3_bucket), {"Range": "bytes=0-999"})
    assert (status, body) == (206, BODY[:1000])
    relay.reset_after = None
    assert get(signed(relay, s3_bucket))[2] == BODY


def test_expected_owner(relay: S3Relay, obj: str, s3_bucket: str) -> None:
    relay.expected_owner = "111122223333"
    with pytest.raises(ClientError) as e:
        client(relay.url).get_object(Bucket=s3_bucket, Key=KEY)
    assert e.value.response["Error"]["Code"] == "AccessDenied"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    right = client(relay.url).get_object(
        Bucket=s3_bucket, Key=KEY, ExpectedBucketOwner="111122223333"
    )
    assert right["Body"].read() == BODY
    with pytest.raises(ClientError):
        client(relay.url).get_object(Bucket=s3_bucket, Key=KEY, ExpectedBucketOwner="999")
    assert [r.owner for r in relay.seen] == [None, "111122223333", "999"]
    relay.expected_owner = None
    assert get(signed(relay, s3_bucket))[0] == 200


def test_many_concurrent_connections_and_quick_close(
    relay: S3Relay, obj: str, s3_bucket: str
) -> None:
    results: list[bytes] = []
    lock = threading.Lock()

    def worker() -> None:
        body = get(signed(relay, s3_bucket))[2]
        with lock:
            results.append(body)

    threads = [threading.Thread(target=worker) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 40 and all(b == BODY for b in results)
    # A stalled request and an idle keep-alive connection do not hold up close().
    relay.stall = 30
    idle = socket.create_connection(("127.0.0.1", int(relay.url.rsplit(":", 1)[1])))
    url = signed(relay, s3_bucket)
    outcome: list[BaseException] = []

    def stalled_get() -> None:
        try:
            get(url)
        except (OSError, http.client.HTTPException) as e:  # the relay hung up: expected
            outcome.append(e)

    stalled = threading.Thread(target=stalled_get, daemon=True)
    stalled.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    relay.close()
    assert time.monotonic() - t0 < 5
    stalled.join(10)
    assert not stalled.is_alive() and outcome, outcome
    idle.close()


def test_unexpected_records_of_a_log() -> None:
    log = (
        "2026-01-01 10:00:00,000 INFO vfs: mounted\n"
        "2026-01-01 10:00:01,000 WARNING vfs.fetch: retrying GET of x\n"
        "2026-01-01 10:00:02,000 ERROR vfs.mount.fs: read of a failed\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1\n'
        "ValueError: boom\n"
        "2026-01-01 10:00:03,000 INFO vfs: an ERROR word in an info line\n"
    )
    assert len(unexpected_records(log)) == 2
    left = unexpected_records(log, [r"retrying GET"])
    assert len(left) == 1 and left[0].startswith("2026-01-01 10:00:02,000 ERROR")
    assert "ValueError: boom" in left[0]
    assert unexpected_records(log, [r"retrying", r"ValueError: boom"]) == []
