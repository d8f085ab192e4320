"""What an S3 failure means, in one line naming the key and the fix.

boto3 reports the same few causes in many shapes (reference/job-attachments.md §4, and what
moto, s3rver and AWS answer): a ``ClientError`` with an error code (``NoSuchKey``,
``NoSuchBucket``, ``AccessDenied``, ``InvalidAccessKeyId``, ``SignatureDoesNotMatch``,
``ExpiredToken``, ``KMS.*``), a bare status for ``HEAD`` (404/403 with no body), or a
``BotoCoreError`` raised before any answer (``NoCredentialsError``,
``EndpointConnectionError``, ``ConnectTimeoutError``, ``ReadTimeoutError``). Each becomes one
:class:`~vfs.errors.StoreError` subclass, so callers decide by type: missing bucket and
credential problems will not heal (stop at the first), a missing key is per object, network
trouble may be retried.
"""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

from vfs.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    CredentialsError,
    EndpointError,
    ObjectNotFoundError,
    StoreError,
)

CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "InvalidClientTokenId",
    }
)
"""Error codes meaning the credentials themselves were rejected."""

CREDENTIALS_HINT = (
    "give credentials as boto3 finds them: AWS_PROFILE or --profile, AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY, or an instance role"
)


def classify(
    error: ClientError | BotoCoreError,
    *,
    action: str,
    where: str,
    bucket: str,
    endpoint: str | None,
    expected_owner: str | None,
) -> StoreError:
    """The :class:`StoreError` for ``error`` raised by ``action`` (``GET``, ``HEAD``, ``PUT``,
    ``LIST``) on ``where`` (the full ``s3://`` key) in ``bucket``; ``endpoint`` (``None``: AWS)
    and ``expected_owner`` (the ``ExpectedBucketOwner`` sent, if any) go into the hints."""
    target = endpoint or "AWS S3"
    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return CredentialsError(
            f"{action} {where}: no AWS credentials found", key=where, hint=CREDENTIALS_HINT
        )
    if isinstance(error, EndpointConnectionError | ConnectTimeoutError):
        return EndpointError(
            f"{action} {where}: cannot reach {target} ({error})",
            key=where,
            hint="check --endpoint-url (or AWS_ENDPOINT_URL), the network and any proxy",
        )
    if isinstance(error, BotoCoreError):
        return StoreError(
            f"{action} {where}: {error}", key=where, hint=f"check the network and {target}"
        )
    info = error.response.get("Error", {})
    code = str(info.get("Code", ""))
    text = str(info.get("Message", "") or "")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "NoSuchBucket":
        return BucketNotFoundError(
            f"{action} {where}: bucket {bucket!r} does not exist at {target}",
            key=where,
            hint="check the bucket name in the store URI and --endpoint-url",
        )
    if status == 404 or code in ("404", "NoSuchKey", "NotFound"):
        return ObjectNotFoundError(
            f"{action} {where}: the object does not exist",
            key=where,
            hint="check the store's root prefix and that the data was uploaded",
        )
    if code in CREDENTIAL_CODES:
        return CredentialsError(
            f"{action} {where}: the credentials were rejected ({code})",
            key=where,
            hint="check that the access key, secret and session token are current and "
            f"belong to {target}; " + CREDENTIALS_HINT,
        )
    if code.startswith("KMS") or "kms" in text.lower():
        return AccessDeniedError(
            f"{action} {where}: access denied by the KMS key of the object or bucket ({code})",
            key=where,
            hint="grant kms:Decrypt (and kms:GenerateDataKey to upload) on the bucket's KMS "
            "key to these credentials",
        )
    if status == 403 or code in ("403", "AccessDenied", "Forbidden", "AllAccessDisabled"):
        owner = (
            f"that the bucket belongs to account {expected_owner} (ExpectedBucketOwner), "
            if expected_owner
            else "the ExpectedBucketOwner account id (--expected-bucket-owner), "
        )
        return AccessDeniedError(
            f"{action} {where}: access denied",
            key=where,
            hint=f"check the credentials' permissions on s3://{bucket}, {owner}"
            "and KMS key permissions",
        )
    return StoreError(f"{action} {where}: {code or status}: {text or error}", key=where)
