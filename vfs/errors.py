"""The one error hierarchy of vfs.

Every error names what it concerns (a manifest file and entry, an object key, a path) and,
where one exists, what the user can do about it. The CLI prints ``str(error)`` and exits
non-zero; nothing else is needed to make a message useful.
"""

from __future__ import annotations


class VfsError(Exception):
    """Base class of every error vfs raises on purpose.

    ``hint`` is a sentence telling the user what to do; it is appended to the message.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class ManifestError(VfsError):
    """A manifest could not be decoded, or its content is unusable.

    ``source`` names the manifest (file path or ``s3://`` URI) when known, ``entry`` the
    offending path entry (its ``path`` value or its index) when the problem is in one entry.
    """

    def __init__(
        self,
        problem: str,
        *,
        source: str | None = None,
        entry: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.problem = problem
        self.source = source
        self.entry = entry
        where = f"manifest {source}" if source else "manifest"
        if entry is not None:
            where += f", entry {entry}"
        super().__init__(f"{where}: {problem}", hint=hint)

    def with_source(self, source: str) -> ManifestError:
        """The same error, naming the manifest it came from."""
        return ManifestError(self.problem, source=source, entry=self.entry, hint=self.hint)


class StoreError(VfsError):
    """An object store operation failed. ``key`` is the full key or path concerned."""

    def __init__(self, message: str, *, key: str | None = None, hint: str | None = None) -> None:
        self.key = key
        super().__init__(message, hint=hint)


class ObjectNotFoundError(StoreError):
    """The object does not exist in the store (S3 404, or a missing local file)."""


class AccessDeniedError(StoreError):
    """The store refused access (S3 403, or a local permission error)."""


class BucketNotFoundError(ObjectNotFoundError):
    """The bucket itself does not exist (S3 ``NoSuchBucket``): every key of it would fail
    the same way, so callers stop at the first."""


class CredentialsError(AccessDeniedError):
    """No credentials were found, or the store rejected them (unknown access key, bad
    signature, expired token): every request would fail the same way."""


class EndpointError(StoreError):
    """The endpoint could not be reached (refused, unresolvable, timed out), or its URL is
    malformed."""


class CorruptObjectError(StoreError):
    """An object's content does not match its content hash or its expected size. The hint
    says what to do unless another is given."""

    HINT = "the store holds wrong data for this hash; re-upload the file"

    def __init__(self, message: str, *, key: str | None = None, hint: str | None = HINT) -> None:
        super().__init__(message, key=key, hint=hint)


class RangeNotHonoredError(StoreError):
    """A ranged GET was answered with something other than the requested range (status 200
    with the whole object, or a ``Content-Range`` for other bytes): typically a proxy that
    drops the ``Range`` header. Never retried: the answer would be the same."""


class StoreUriError(VfsError):
    """A store URI is malformed or uses an unsupported scheme."""


class MountError(VfsError):
    """A mount could not be set up, or an unmount failed."""


class SnapshotError(VfsError):
    """A directory could not be snapshotted into a manifest."""


class UploadError(VfsError):
    """Files could not be uploaded to the content-addressed store."""


class TransferCancelledError(VfsError):
    """A transfer was cancelled (a progress callback returned ``False``, or the transfer was
    stopped after an error elsewhere) before it completed; nothing was half-written."""
