"""Moving file contents between local disks and a content-addressed store."""

from vfs.transfer.upload import UploadSummary, upload_manifest_files

__all__ = ["UploadSummary", "upload_manifest_files"]
