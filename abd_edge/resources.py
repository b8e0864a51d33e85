"""Resource measurement without torch: peak resident memory of a block of work.

``ru_maxrss`` only ever grows over a process's life, so it cannot say what
one update cost once a larger one has run. :class:`PeakRSS` samples the
resident set size from /proc in a background thread while the block runs,
and falls back to ``ru_maxrss`` where /proc is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import resource
import threading
from types import TracebackType


def current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def release_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the system (glibc ``malloc_trim``).

    Freed tensors otherwise stay in the process's heap, so each phase of an
    update (training, then dreaming, then export) would add its peak on top
    of the last one's; a no-op where glibc is absent.
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _malloc_trim() -> "ctypes._CFuncPtr | None":
    global _TRIM
    if _TRIM is False:
        try:
            _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = None
    return _TRIM  # type: ignore[return-value]


_TRIM: "ctypes._CFuncPtr | None | bool" = False


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class PeakRSS:
    """``with PeakRSS() as p: work()`` then ``p.peak_mb``."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = current_rss_bytes()
            if rss is not None:
                self.peak_bytes = max(self.peak_bytes, rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakRSS":
        rss = current_rss_bytes()
        if rss is None:
            return self
        self.peak_bytes = rss
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._thread is None:
            self.peak_bytes = max_rss_bytes()
            return
        self._stop.set()
        self._thread.join()
        rss = current_rss_bytes()
        if rss is not None:
            self.peak_bytes = max(self.peak_bytes, rss)

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20
