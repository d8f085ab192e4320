"""``s3://BUCKET/ROOT_PREFIX`` store on boto3.

Credentials come from boto3's standard chain; the endpoint from ``endpoint_url`` or boto3's
own ``AWS_ENDPOINT_URL``. When ``expected_bucket_owner`` is set it is sent as
``ExpectedBucketOwner`` on every S3 call that accepts it, as deadline does with its
``provide-client-params.s3.*`` hook (reference §4.1).
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import http.client
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import CancelledError
from contextlib import AbstractContextManager, contextmanager
from typing import IO, TYPE_CHECKING, Any, cast

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ProfileNotFound
from botocore.utils import parse_timestamp

from vfs.errors import (
    CorruptObjectError,
    CredentialsError,
    EndpointError,
    ObjectNotFoundError,
    RangeNotHonoredError,
    StoreError,
    TransferCancelledError,
    VfsError,
)
from vfs.storage.base import RangeStream, Readable, normalize_metadata
from vfs.storage.layout import join_key
from vfs.storage.options import S3Options
from vfs.storage.ranges import content_range_problem
from vfs.storage.s3errors import classify
from vfs.storage.slices import CancelToken, FileSlice, ShortReadError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


_SESSION_ENV = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_REGION",
    "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED", "AWS_ENDPOINT_URL",
)  # fmt: skip
"""Environment variables a boto3 session reads once (credentials, profile, region)."""

_sessions: dict[tuple[str | None, ...], boto3.session.Session] = {}
_sessions_lock = threading.Lock()


def _session(profile: str | None, region: str | None) -> boto3.session.Session:
    """One boto3 session per profile, region and credential environment, shared by the
    process's clients: a client from a new session costs 0.3-0.5 s of loading service
    models (measured), one from a used session 0.03 s — a mount makes two (manifests,
    store). Call with :data:`_sessions_lock` held."""
    key = (profile, region, *(os.environ.get(name) for name in _SESSION_ENV))
    session = _sessions.get(key)
    if session is None:
        core = botocore.session.get_session()
        core.get_component("response_parser_factory").set_parser_defaults(
            timestamp_parser=parse_s3_timestamp
        )
        session = _sessions[key] = boto3.session.Session(
            botocore_session=core, profile_name=profile, region_name=region
        )
    return session


def parse_s3_timestamp(value: str) -> datetime.datetime:
    """botocore's response timestamp parser, without dateutil for S3's two formats.

    S3 sends ISO 8601 in XML bodies (``LastModified`` of a listing:
    ``2026-12-03T09:43:28.000Z``) and RFC 7231 dates in headers (``Last-Modified`` of a GET
    or HEAD: ``Wed, 03 Dec 2026 09:43:28 GMT``). botocore's default parser hands both to
    dateutil, which cost 0.1 ms of CPU per GET here (10 % of a 64 KiB GET's client CPU on
    s3rver) and as much per key of a listing. Those two forms are parsed by the standard
    library into the same instant (an aware UTC datetime); anything else (epoch seconds, no
    zone) goes to botocore's :func:`~botocore.utils.parse_timestamp`, whose errors it raises.
    """
    if isinstance(value, str):
        try:
            if value.endswith(" GMT"):
                return email.utils.parsedate_to_datetime(value)
            if value.endswith("Z") and "T" in value:
                return datetime.datetime.fromisoformat(value)
        except (ValueError, TypeError, IndexError):
            pass
    parsed: datetime.datetime = parse_timestamp(value)
    return parsed


def make_s3_client(options: S3Options) -> S3Client:
    """A thread-safe S3 client configured like deadline's (s3v4, standard retries). Raises
    :class:`EndpointError` when the endpoint URL is malformed."""
    config = Config(
        signature_version="s3v4",
        # total_max_attempts counts the first request; botocore's max_attempts does not.
        retries={"mode": "standard", "total_max_attempts": options.max_attempts},
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
        max_pool_connections=options.max_pool_connections,
        user_agent_extra="vfs",
    )
    try:
        with _sessions_lock:  # botocore sessions are not safe to create clients in parallel
            session = _session(options.profile, options.region)
            client = session.client("s3", endpoint_url=options.endpoint_url, config=config)
    except ProfileNotFound as e:
        raise CredentialsError(
            f"{e}", hint="check --profile / AWS_PROFILE against ~/.aws/config (or AWS_CONFIG_FILE)"
        ) from None
    except ValueError as e:  # botocore: "Invalid endpoint: ..."
        raise EndpointError(
            f"S3 endpoint {options.endpoint_url!r} is not a URL ({e})",
            hint="give --endpoint-url as http(s)://HOST[:PORT]",
        ) from None
    owner = options.expected_bucket_owner
    if owner:

        def inject_owner(params: dict[str, Any], model: Any, **_: Any) -> None:
            if "ExpectedBucketOwner" in model.input_shape.members:
                params.setdefault("ExpectedBucketOwner", owner)

        client.meta.events.register("provide-client-params.s3.*", inject_owner)
    return client


class S3Store:
    """An :class:`~vfs.storage.base.ObjectStore` on ``bucket`` under ``prefix``."""

    def __init__(self, bucket: str, prefix: str, options: S3Options | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.options = options or S3Options()
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.client = make_s3_client(self.options)
        self._bucket_exists = False

    def full_key(self, key: str) -> str:
        """The object key in the bucket: ``{prefix}/{key}``."""
        return join_key(self.prefix, key)

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.full_key(key)}"

    def _transfer_error(self, e: Exception, key: str) -> StoreError:
        """The error of an s3transfer upload of ``key``: s3transfer wraps the client's
        errors (``S3UploadFailedError``), so the cause is classified when it is one, else
        a plain :class:`StoreError` naming the key."""
        cause = e.__cause__ or e.__context__
        if isinstance(cause, ClientError | BotoCoreError):
            return self._error(cause, key, "PUT")
        return StoreError(f"PUT {self.describe(key)}: {e}", key=self.describe(key))

    def _error(self, e: ClientError | BotoCoreError, key: str, action: str) -> StoreError:
        return classify(
            e,
            action=action,
            where=self.describe(key),
            bucket=self.bucket,
            endpoint=self.options.endpoint_url,
            expected_owner=self.options.expected_bucket_owner,
        )

    def head(self, key: str) -> int | None:
        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
        except ClientError as e:
            err = self._error(e, key, "HEAD")
            if isinstance(err, ObjectNotFoundError):
                self._check_bucket(key)
                return None
            raise err from None
        except BotoCoreError as e:
            raise self._error(e, key, "HEAD") from None
        return int(resp["ContentLength"])

    def _check_bucket(self, key: str) -> None:
        """After a bare 404 to HEAD (which cannot say whether the key or the bucket is
        missing): raise :class:`BucketNotFoundError` when the bucket is missing. Asked once
        per store; other errors leave the answer to later calls."""
        if self._bucket_exists:
            return
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            err = self._error(e, key, "HEAD")
            if type(err) is ObjectNotFoundError:
                err = self._error(
                    ClientError({"Error": {"Code": "NoSuchBucket"}}, "HeadBucket"), key, "HEAD"
                )
                raise err from None
            return
        except BotoCoreError:
            return
        self._bucket_exists = True

    def open_read(self, key: str) -> AbstractContextManager[Readable]:
        return self._open(key)

    @contextmanager
    def _open(self, key: str) -> Iterator[Readable]:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, key, "GET") from None
        body = resp["Body"]
        try:
            yield GuardedBody(body, self, key)
        finally:
            body.close()

    def open_range(
        self, key: str, start: int, length: int, *, size: int | None = None
    ) -> AbstractContextManager[RangeStream]:
        return self._open_range(key, start, length, size)

    @contextmanager
    def _open_range(
        self, key: str, start: int, length: int, size: int | None
    ) -> Iterator[RangeStream]:
        try:
            resp = self.client.get_object(
                Bucket=self.bucket,
                Key=self.full_key(key),
                Range=f"bytes={start}-{start + length - 1}",
            )
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "InvalidRange":
                where = self.describe(key)
                raise CorruptObjectError(
                    f"GET {where} bytes {start}-{start + length - 1}: the object is shorter "
                    f"than {start + length} bytes"
                    + (f" (the manifest says {size})" if size else ""),
                    key=where,
                ) from None
            raise self._error(e, key, "GET") from None
        except BotoCoreError as e:
            raise self._error(e, key, "GET") from None
        body = resp["Body"]
        try:
            status = int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            problem = content_range_problem(status, resp.get("ContentRange"), start, length, size)
            if problem is not None:
                where = self.describe(key)
                text, wrong_size = problem
                if wrong_size:
                    raise CorruptObjectError(f"GET {where}: {text}", key=where)
                raise RangeNotHonoredError(
                    f"GET {where} bytes {start}-{start + length - 1}: {text}",
                    key=where,
                    hint="a proxy between vfs and the store may drop the Range header; "
                    "check --endpoint-url and HTTP(S)_PROXY",
                )
            yield GuardedBody(body, self, key)
        finally:
            body.close()

    def get_bytes(self, key: str) -> bytes:
        with self._open(key) as body:
            return body.read()

    def get_with_metadata(self, key: str) -> tuple[bytes, dict[str, str], float]:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, key, "GET") from None
        body = resp["Body"]
        try:
            data = GuardedBody(body, self, key).read()
        finally:
            body.close()
        metadata = {k.lower(): v for k, v in resp.get("Metadata", {}).items()}
        return data, metadata, resp["LastModified"].timestamp()

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None:
        meta = normalize_metadata(metadata, self.describe(key))
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.full_key(key), Body=data, Metadata=meta
            )
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, key, "PUT") from None

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        try:
            self.client.upload_file(os.fspath(path), self.bucket, self.full_key(key))
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, key, "PUT") from None
        except Exception as e:  # s3transfer wraps client errors in S3UploadFailedError
            raise self._transfer_error(e, key) from None

    def put_stream(self, key: str, stream: Readable) -> None:
        # s3transfer reads a stream without seek in order, part by part, and aborts the
        # multipart upload (or sends no PUT) when a read raises.
        try:
            self.client.upload_fileobj(stream, self.bucket, self.full_key(key))  # type: ignore[arg-type]  # any object with read() will do
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, key, "PUT") from None
        except VfsError:  # the stream's own, e.g. content that changed: as it is
            raise
        except Exception as e:
            raise self._transfer_error(e, key) from None

    def put_file_range(
        self,
        key: str,
        fd: int,
        offset: int,
        length: int,
        *,
        multipart: bool = False,
        part_size: int = 8 * 1024 * 1024,
        concurrency: int = 10,
        on_bytes: Callable[[int], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        """Create ``key`` from ``length`` bytes of ``fd`` at ``offset`` (see
        :class:`~vfs.storage.slices.RangeUploadStore`).

        Without ``multipart``: one ``PutObject`` streaming the range. With it: s3transfer's
        ``TransferManager`` (the engine of boto3's ``upload_fileobj``; deadline's
        ``upload_file_to_s3`` uses it too) with ``part_size``-byte parts, ``concurrency`` at
        once; cancelling ``cancel`` cancels the transfer, and s3transfer then aborts the
        multipart upload (``AbortMultipartUpload``, its failure clean-up) once the parts in
        flight end. Retries are botocore's alone (the client's ``standard`` mode);
        s3transfer does not retry uploads. Raises :class:`TransferCancelledError` when
        cancelled and :class:`StoreError` (classified) when S3 refuses.
        """
        body = FileSlice(fd, offset, length)
        if cancel is not None and cancel.cancelled:
            raise TransferCancelledError(f"upload of {self.describe(key)} cancelled")
        if not multipart:
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self.full_key(key),
                    Body=cast(IO[bytes], body),
                    ContentLength=length,
                )
            except (ClientError, BotoCoreError) as e:
                body.check(self.describe(key))
                raise self._error(e, key, "PUT") from None
            except ShortReadError:  # raised while botocore computed the body's checksum
                body.check(self.describe(key))
                raise
            if on_bytes is not None:
                on_bytes(length)
            return
        self._multipart_upload(key, body, part_size, concurrency, on_bytes, cancel)

    def _multipart_upload(
        self,
        key: str,
        body: FileSlice,
        part_size: int,
        concurrency: int,
        on_bytes: Callable[[int], None] | None,
        cancel: CancelToken | None,
    ) -> None:
        from s3transfer.manager import TransferConfig, TransferManager
        from s3transfer.subscribers import BaseSubscriber

        class Progress(BaseSubscriber):
            def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
                if on_bytes is not None:
                    on_bytes(bytes_transferred)

        config = TransferConfig(
            multipart_threshold=1,  # always multipart: the caller chose
            multipart_chunksize=part_size,
            max_request_concurrency=concurrency,
        )
        manager = TransferManager(self.client, config)
        try:
            future = manager.upload(
                cast(IO[bytes], body),
                self.bucket,
                self.full_key(key),
                subscribers=[Progress()],
            )
            hook: CancelToken | None = cancel
            with hook.on_cancel(future.cancel) if hook is not None else contextlib.nullcontext():
                try:
                    future.result()
                except CancelledError:
                    body.check(self.describe(key))
                    raise TransferCancelledError(
                        f"upload of {self.describe(key)} cancelled (multipart upload aborted)"
                    ) from None
                except (ClientError, BotoCoreError) as e:
                    body.check(self.describe(key))
                    raise self._error(e, key, "PUT") from None
                except Exception as e:  # s3transfer may wrap a client error
                    body.check(self.describe(key))
                    raise self._transfer_error(e, key) from None
        finally:
            manager.shutdown(cancel=True)

    def list_keys(self, prefix: str) -> Iterator[tuple[str, int]]:
        paginator = self.client.get_paginator("list_objects_v2")
        # Not join_key: with an empty ``prefix`` that would give ``{root}`` without its
        # trailing ``/`` and also list sibling prefixes such as ``{root}2/``.
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for obj in page.get("Contents", []):
                    yield obj["Key"][strip:], int(obj["Size"])
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, prefix, "LIST") from None


class GuardedBody:
    """A GET body (whole or ranged) whose read errors become :class:`StoreError` naming
    the key; :meth:`abort` gives up a stalled download from another thread."""

    def __init__(self, body: Any, store: S3Store, key: str) -> None:
        self._body = body
        self._store = store
        self._key = key

    def read(self, size: int = -1, /) -> bytes:
        try:
            data: bytes = self._body.read(None if size < 0 else size)
        except (ClientError, BotoCoreError) as e:
            raise self._store._error(e, self._key, "GET") from None
        except (OSError, ValueError, AttributeError) as e:  # the socket, after abort()
            where = self._store.describe(self._key)
            raise StoreError(f"GET {where}: the download was given up ({e})", key=where) from None
        return data

    def readinto(self, buffer: memoryview, /) -> int:
        """Read up to ``len(buffer)`` bytes into ``buffer``; 0 at the end of the body.

        The bytes go from the socket straight into ``buffer`` (``http.client``'s
        ``readinto`` under urllib3's response, with the GIL released), not through a
        ``bytes`` copied again in Python. Once the body was read to its end the connection
        goes back to urllib3's pool, as urllib3 does itself. A connection that ends before
        the length the server announced raises :class:`StoreError` (retried), like a read
        through urllib3.
        """
        raw = getattr(self._body, "_raw_stream", None)
        fp = getattr(raw, "_fp", None)
        try:
            if fp is None or not hasattr(fp, "readinto") or not hasattr(fp, "isclosed"):
                n: int = self._body.readinto(buffer)
                return n
            left = getattr(fp, "length", None)
            n = fp.readinto(buffer)
            if fp.isclosed():
                if n == 0 and len(buffer) and left:
                    where = self._store.describe(self._key)
                    raise StoreError(
                        f"GET {where}: the connection closed with {left} bytes still to come",
                        key=where,
                    )
                raw.release_conn()  # type: ignore[union-attr]
            return n
        except (ClientError, BotoCoreError) as e:
            raise self._store._error(e, self._key, "GET") from None
        except (OSError, ValueError, AttributeError, http.client.HTTPException) as e:
            where = self._store.describe(self._key)
            raise StoreError(f"GET {where}: the download was given up ({e})", key=where) from None

    def abort(self) -> None:
        """Shut the connection's socket down for reading, so that a ``read`` blocked in
        another thread returns at once (urllib3's ``HTTPResponse.shutdown``)."""
        raw = getattr(self._body, "_raw_stream", None)
        with contextlib.suppress(Exception):
            raw.shutdown()  # type: ignore[union-attr]
