"""Progress reports, cancellation and the statistics a transfer returns.

Names from the storage-design seed (``TransferProgress``, ``TransferStatistics``, a progress
callback returning ``False`` to cancel). A callback is called from worker threads, one call
at a time, at most every ``interval`` seconds and whenever a file completes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TransferProgress:
    """One progress report.

    ``bytes_done``/``bytes_total``: bytes transferred so far / to transfer (files skipped
    count in neither). ``files_done``/``files_total``: files finished (transferred, skipped
    or failed) / all files. ``rate``: bytes per second since the start. ``elapsed``:
    seconds since the start. ``current``: the last file worked on (a local path).
    """

    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    rate: float
    elapsed: float
    current: str = ""


ProgressCallback = Callable[[TransferProgress], bool]
"""Called with each report; returning ``False`` cancels the transfer."""


@dataclass(slots=True)
class TransferStatistics:
    """What a transfer did.

    ``files_transferred``/``bytes_transferred``: files written and their bytes;
    ``files_skipped``/``bytes_skipped``: files left alone (conflict resolution ``skip``);
    ``files_failed`` with one message per failure in ``errors``; ``cancelled``: stopped by a
    progress callback (the counts are then partial); ``elapsed``: seconds;
    ``paths``: the local path each transferred file was written to (``create_copy`` may
    have chosen ``name (1).ext``), in completion order.
    """

    files_total: int = 0
    files_transferred: int = 0
    bytes_transferred: int = 0
    files_skipped: int = 0
    bytes_skipped: int = 0
    files_failed: int = 0
    errors: list[str] = field(default_factory=list)
    cancelled: bool = False
    elapsed: float = 0.0
    paths: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Bytes transferred per second (0 when nothing took time)."""
        return self.bytes_transferred / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        """The ``--json`` summary shape (``paths`` left out: it can be long)."""
        return {
            "files_total": self.files_total,
            "files_transferred": self.files_transferred,
            "bytes_transferred": self.bytes_transferred,
            "files_skipped": self.files_skipped,
            "bytes_skipped": self.bytes_skipped,
            "files_failed": self.files_failed,
            "errors": list(self.errors),
            "cancelled": self.cancelled,
            "elapsed_seconds": round(self.elapsed, 3),
            "bytes_per_second": round(self.rate, 1),
        }


class ProgressTracker:
    """Counts bytes and files from many threads and reports to a callback.

    ``cancelled`` is set when the callback returns ``False`` (or :meth:`cancel` is called);
    workers poll it between reads.
    """

    def __init__(
        self,
        callback: ProgressCallback | None,
        *,
        bytes_total: int,
        files_total: int,
        interval: float = 0.1,
    ) -> None:
        self._callback = callback
        self._interval = interval
        self._lock = threading.Lock()
        self._report_lock = threading.Lock()
        self._start = time.monotonic()
        self._last = 0.0
        self.bytes_total = bytes_total
        self.files_total = files_total
        self.bytes_done = 0
        self.files_done = 0
        self.cancelled = threading.Event()
        self._current = ""

    @property
    def elapsed(self) -> float:
        """Seconds since the tracker was made."""
        return time.monotonic() - self._start

    def cancel(self) -> None:
        """Ask every worker to stop."""
        self.cancelled.set()

    def add_bytes(self, n: int, current: str) -> None:
        """Count ``n`` bytes (negative to take back bytes of a failed attempt)."""
        with self._lock:
            self.bytes_done += n
        self._maybe_report(current, force=False)

    def file_done(self, current: str) -> None:
        """Count one finished file and report."""
        with self._lock:
            self.files_done += 1
        self._maybe_report(current, force=True)

    def tick(self) -> None:
        """Report if one is due, even though nothing moved (a stalled transfer still
        reports, so that a callback such as :class:`LowTransferRateDetector` can act)."""
        self._maybe_report(self._current, force=False)

    def _maybe_report(self, current: str, *, force: bool) -> None:
        self._current = current
        if self._callback is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        # One callback at a time; a report due while another runs is dropped.
        if not self._report_lock.acquire(blocking=force):
            return
        try:
            self._last = now
            elapsed = now - self._start
            with self._lock:
                progress = TransferProgress(
                    bytes_done=self.bytes_done,
                    bytes_total=self.bytes_total,
                    files_done=self.files_done,
                    files_total=self.files_total,
                    rate=self.bytes_done / elapsed if elapsed > 0 else 0.0,
                    elapsed=elapsed,
                    current=current,
                )
            if self._callback(progress) is False:
                self.cancelled.set()
        finally:
            self._report_lock.release()


LOW_TRANSFER_RATE_THRESHOLD = 10_000
"""Bytes per second below which the worker agent counts a report as slow (10 KB/s)."""

LOW_TRANSFER_COUNT_THRESHOLD = 60
"""Consecutive slow reports after which the worker agent cancels (60, ~1 minute)."""


class LowTransferRateDetector:
    """A progress callback that cancels a transfer stuck at a low rate: the worker agent's
    policy (seed 002 §2, ``attachment_download.py``'s progress handler).

    Each report whose overall ``rate`` (bytes per second since the start) is below
    ``threshold`` counts one; a report at or above it resets the count, and so does a
    report with more files done than the previous one (file completion is a heartbeat)
    before the rate is judged. At ``reports`` counts the detector returns ``False``
    (cancel) and sets ``triggered``. Reports come every ``progress_interval`` seconds of
    the orchestrator (1 s gives the worker's one minute). ``then`` is called on every
    report too, and its answer returned while the rate is fine.
    """

    def __init__(
        self,
        threshold: float = LOW_TRANSFER_RATE_THRESHOLD,
        reports: int = LOW_TRANSFER_COUNT_THRESHOLD,
        then: ProgressCallback | None = None,
    ) -> None:
        self.threshold = threshold
        self.reports = reports
        self.then = then
        self.low_count = 0
        self.last_files = 0
        self.triggered = False

    def __call__(self, progress: TransferProgress) -> bool:
        if progress.files_done > self.last_files:
            self.low_count = 0
        self.last_files = progress.files_done
        if progress.rate < self.threshold:
            self.low_count += 1
        else:
            self.low_count = 0
        if self.low_count >= self.reports:
            self.triggered = True
            return False
        return True if self.then is None else self.then(progress)
