"""vfs: AWS Deadline Cloud job attachments as a FUSE filesystem, and the toolkit under it."""
