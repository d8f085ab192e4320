"""Key layout of a job-attachments store, relative to its root prefix.

Format facts (reference/job-attachments.md §4, deadline ``models.py`` and ``upload.py``):
CAS objects live at ``{rootPrefix}/Data/{hash}.{hashAlg}``; manifests under
``{rootPrefix}/Manifests/``. Keys are joined with ``/`` and never normalised.
"""

from __future__ import annotations

DATA_FOLDER = "Data"
MANIFEST_FOLDER = "Manifests"


def data_key(hash_: str, hash_alg: str = "xxh128") -> str:
    """Key of a CAS object relative to the root prefix: ``Data/{hash}.{hash_alg}``."""
    return f"{DATA_FOLDER}/{hash_}.{hash_alg}"


def join_key(*parts: str) -> str:
    """Join key parts with ``/``, skipping empty parts, as deadline's ``_join_s3_paths``."""
    return "/".join(p for p in parts if p)
