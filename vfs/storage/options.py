"""How to reach S3 (:class:`S3Options`), without importing boto3: code that only passes
options along (the CLI, a mount of a local store) never pays for importing it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class S3Options:
    """How to reach S3: ``endpoint_url`` (``None``: boto3's default or ``AWS_ENDPOINT_URL``),
    ``expected_bucket_owner`` (AWS account id sent on every call), ``max_pool_connections``;
    ``max_attempts`` per call (botocore's own retries: 1 turns them off, for callers that
    retry themselves, like the mount's fetcher), and the ``connect_timeout`` and
    ``read_timeout`` of one socket operation (seconds); ``profile`` and ``region``: the AWS
    profile and region of the boto3 session (``None``: boto3's defaults, ``AWS_PROFILE``
    and ``AWS_DEFAULT_REGION``)."""

    endpoint_url: str | None = None
    expected_bucket_owner: str | None = None
    max_pool_connections: int = 32
    max_attempts: int = 5
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    profile: str | None = None
    region: str | None = None
