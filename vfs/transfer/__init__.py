"""Moving file contents between local disks and a content-addressed store."""

from vfs.transfer.conflicts import ConflictResolution
from vfs.transfer.download import DownloadOrchestrator, is_fatal
from vfs.transfer.localfs import DownloadError, InsufficientSpaceError, PathEscapeError
from vfs.transfer.progress import (
    LowTransferRateDetector,
    ProgressCallback,
    TransferProgress,
    TransferStatistics,
)
from vfs.transfer.upload import (
    UploadIncompleteError,
    UploadOrchestrator,
    UploadSummary,
    upload_manifest_files,
)

__all__ = [
    "ConflictResolution",
    "DownloadError",
    "DownloadOrchestrator",
    "InsufficientSpaceError",
    "LowTransferRateDetector",
    "PathEscapeError",
    "ProgressCallback",
    "TransferProgress",
    "TransferStatistics",
    "UploadIncompleteError",
    "UploadOrchestrator",
    "UploadSummary",
    "is_fatal",
    "upload_manifest_files",
]
