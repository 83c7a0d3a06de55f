"""Progress display of a build (tqdm, a plain line, or a user callable) and its memory helpers."""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, Optional

from .build_plan import _format_seconds

log = logging.getLogger("mudg_fast.build")


class _Progress:
    """tqdm bar when available, else a line every 10 s logged to ``mudg_fast.build`` (INFO); or a
    user callable(done, total)."""

    def __init__(self, total: int, initial: int, mode, desc: str = "adding"):
        self.total, self.n = total, initial
        self.callback = mode if callable(mode) else None
        self.bar = None
        self.printer = False
        self.t0, self.n0, self.last_print = time.monotonic(), initial, 0.0
        self.parts: Optional[tuple[int, int]] = None
        if mode is True:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(
                    total=total,
                    initial=initial,
                    desc=desc,
                    unit="vec",
                    unit_scale=True,
                    dynamic_ncols=True,
                    smoothing=0.1,
                )
            except ImportError:
                self.printer = True

    def set_parts(self, done: int, total: int) -> None:
        """Shows how many parts are finished (builds in parts); the plain line is printed at
        every finished part."""
        first = self.parts is None
        self.parts = (int(done), int(total))
        if self.bar is not None:
            self.bar.set_postfix_str(f"parts {done}/{total}")
        if self.printer and not first:
            self._print(time.monotonic())

    def update_to(self, done: int) -> None:
        done = int(done)
        if self.bar is not None and done > self.bar.n:
            self.bar.update(done - self.bar.n)
        self.n = done
        if self.printer:
            now = time.monotonic()
            if now - self.last_print >= 10 or (done >= self.total and self.parts is None):
                self._print(now)
        if self.callback is not None:
            self.callback(done, self.total)

    def _print(self, now: float) -> None:
        done = self.n
        rate = (done - self.n0) / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else math.inf
        parts = f", parts {self.parts[0]}/{self.parts[1]}" if self.parts else ""
        log.info(
            "  %s/%s vectors (%.1f%%)%s, %s/s, ETA %s", f"{done:,}", f"{self.total:,}",
            100 * done / max(self.total, 1), parts, f"{rate:,.0f}",
            _format_seconds(eta) if math.isfinite(eta) else "?",
        )
        self.last_print = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# malloc_trim once looked up: None not yet, False unavailable, else the C function.
_TRIM: Any = None


def _release_free_memory() -> None:
    """Returns freed heap pages to the OS (glibc ``malloc_trim``; a no-op elsewhere). The inverted
    lists grow by reallocation; without this, the holes they leave behind in the heap stay
    resident and the build's footprint creeps ~25% above the index size."""
    global _TRIM
    if _TRIM is None:
        _TRIM = False
        try:
            import ctypes

            fn = ctypes.CDLL(None).malloc_trim
            fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
            _TRIM = fn
        except (OSError, AttributeError, ImportError):
            pass
    if _TRIM:
        _TRIM(0)


def _peak_rss_bytes() -> Optional[int]:
    """High-water mark of this process's resident memory. Linux: VmHWM of the current address
    space (ru_maxrss would also count the parent's memory when this process was spawned by fork +
    exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(r if sys.platform == "darwin" else r * 1024)
    except (ImportError, OSError):  # pragma: no cover
        return None
