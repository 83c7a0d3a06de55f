"""Sizes, memory budgets, batch sizes and time estimates of an index build (:func:`plan_build`).

Everything here is computed before any work: how much memory the growing index, one batch and
training need, how large the file will be, and how long training and adding should take on this
machine (from the speed of the native kernels, measured on a small problem).
"""

from __future__ import annotations

import math
import numbers
import os
import re
import time
from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np

from . import _core
from ._arrays import resolve_threads
from .index import CODECS
from .shards import EmbeddingShards

__all__ = [
    "plan_build",
    "BuildPlan",
    "BuildError",
    "parse_memory",
    "format_bytes",
    "default_train_size",
]

MAX_BATCH_ROWS = 262_144  # larger batches do not add speed, only memory
MIN_BATCH_ROWS = 1_024
FIXED_OVERHEAD = 32 << 20  # native add() scratch, Python objects, progress bar
# The native inverted lists grow by reallocation (x1.5 per step), and the allocator keeps part of
# the spare capacity and of the freed blocks resident: measured 1.2-1.6x the final list storage
# while adding (200k x 128, nlist 256). Budgets and the printed peak use this factor.
GROWTH_SLACK = 1.5


class BuildError(ValueError):
    """A build cannot start or resume as asked (bad parameter, budget, changed inputs)."""


class IndexTooLarge(BuildError):
    """The finished index does not fit in the memory budget of an in-memory build (a build in
    parts can still do it)."""


# ---------------------------------------------------------------------------------------------
# sizes


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_memory(value) -> Optional[int]:
    """Bytes from an int or a string such as "4GB", "512MB", "1.5G", "64MiB", "1000000"
    (units are powers of 1024, as in autofaiss). None stays None."""
    if value is None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if value <= 0:
            raise BuildError(f"memory size must be positive, got {value}")
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(
            r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]?)(?:i?b)?\s*", value, flags=re.IGNORECASE
        )
        if m:
            f = float(m.group(1)) * _UNITS[m.group(2).lower()]
            if math.isfinite(f) and f >= 1:
                return int(f)
    raise BuildError(
        f"cannot read memory size {value!r}: use bytes or a number with a unit, e.g. '4GB', '512MB'"
    )


def format_bytes(n: float) -> str:
    """Human-readable size in powers of 1024 ("512 B", "1.50 GiB")."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover


def _format_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _available_memory() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _code_bytes_per_vector(codec: str, dim: int) -> float:
    return {"f32": 4.0, "f16": 2.0, "sq8": 1.0, "sq4": 0.5}[codec] * dim


def default_train_size(ntotal: int, nlist: int) -> int:
    """min(ntotal, max(65536, 64 * nlist)): 64 points per centroid (faiss warns under 39;
    k-means samples at most 256 per centroid)."""
    return int(min(ntotal, max(65_536, 64 * nlist)))


class _PlanSizes(Protocol):
    """What the time model reads of a plan (BuildPlan, or outofcore.PartsPlan for builds in parts)."""

    @property
    def ntotal(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def nlist(self) -> int: ...
    @property
    def paired(self) -> bool: ...
    @property
    def train_size(self) -> int: ...


@dataclass
class BuildPlan:
    """Sizes a build will need, computed before any work (see :func:`plan_build`)."""

    ntotal: int
    dim: int
    nlist: int
    codec: str
    n_shards: int
    paired: bool
    train_size: int
    memory_budget: int
    index_bytes: int  # the finished index in memory (lists, ids, centroids)
    resident_index_bytes: int  # the index while it grows (index_bytes x GROWTH_SLACK)
    batch_rows: int
    batch_bytes: int  # float32 batch + ids + the source pages of one batch
    train_bytes: int  # training sample(s) and k-means working memory
    file_bytes: int  # the index file on disk
    disk_peak_bytes: int  # checkpoint + its temporary copy, or checkpoint + output

    @property
    def add_peak_bytes(self) -> int:
        """Peak memory while adding: the resident index, one batch and a fixed overhead (bytes)."""
        return self.resident_index_bytes + self.batch_bytes + FIXED_OVERHEAD

    @property
    def peak_bytes(self) -> int:
        """Peak memory of the build (bytes): adding or training, whichever needs more."""
        return max(self.add_peak_bytes, self.train_bytes)


def _index_bytes(ntotal: int, dim: int, nlist: int, codec: str) -> int:
    bpv = _code_bytes_per_vector(codec, dim)
    block = 16 * bpv
    params = {"sq8": 2 * dim, "sq4": 16 * dim}.get(codec, 0) * 4
    # every list ends in a partly filled block: half a block on average
    return int(ntotal * (bpv + 8) + nlist * block / 2 + nlist * dim * 4 + params)


def _file_bytes(ntotal: int, dim: int, nlist: int, codec: str) -> int:
    bpv = _code_bytes_per_vector(codec, dim)
    params = {"sq8": 2 * dim, "sq4": 16 * dim}.get(codec, 0) * 4
    head = 128 + nlist * dim * 4 + params + 8 + nlist * 24 + 64
    # per list: half a block of padding on average, and alignment of codes (64) and ids (8)
    return int(head + ntotal * (bpv + 8) + nlist * (8 * bpv + 36) + 16)


def train_memory_bytes(train_n: int, dim: int, nlist: int, paired: bool) -> int:
    """Training's memory: the sample(s); k-means' own sample of <= 256 points per centroid,
    labels and pairs; centroids; the codec's sample of <= 65536 rows; FIXED_OVERHEAD."""
    return int(
        train_n * dim * 4 * (2 if paired else 1)
        + min(train_n, 256 * nlist) * dim * 4
        + train_n * 16
        + 2 * nlist * dim * 4
        + min(train_n, 65_536) * dim * 4
        + FIXED_OVERHEAD
    )


def plan_build(
    images: EmbeddingShards,
    *,
    nlist: int,
    codec: str = "sq8",
    train_size: Optional[int] = None,
    memory_budget=None,
    paired: bool = False,
    batch_size: Optional[int] = None,
) -> BuildPlan:
    """Memory, disk and batch size of a build over ``images`` (raises BuildError when the budget
    cannot hold the index plus a minimal batch, or the training sample)."""
    if not isinstance(images, EmbeddingShards):
        raise TypeError(f"images must be an EmbeddingShards, got {type(images).__name__}")
    nlist = _check_int("nlist", nlist)
    if codec not in CODECS:
        raise BuildError(f"codec must be one of {CODECS}, got {codec!r}")
    if train_size is not None:
        train_size = _check_int("train_size", train_size)
    if batch_size is not None:
        batch_size = _check_int("batch_size", batch_size)
    ntotal, dim = images.ntotal, images.dim
    budget = parse_memory(memory_budget)
    if budget is None:
        avail = _available_memory()
        budget = int(0.8 * avail) if avail else 8 << 30
    train_n = (
        default_train_size(ntotal, nlist) if train_size is None else min(int(train_size), ntotal)
    )
    index_bytes = _index_bytes(ntotal, dim, nlist, codec)
    resident = int(index_bytes * GROWTH_SLACK)
    itemsize = max(s.dtype.itemsize for s in images.shards)
    per_row = dim * 4 + dim * itemsize + 8
    largest = max(s.rows for s in images.shards)
    if batch_size is not None:
        batch_rows = max(1, min(int(batch_size), largest))
    else:
        room = budget - resident - FIXED_OVERHEAD
        batch_rows = min(max(room, 0) // per_row, MAX_BATCH_ROWS, max(largest, 1))
        if batch_rows < min(MIN_BATCH_ROWS, largest):
            need = resident + FIXED_OVERHEAD + min(MIN_BATCH_ROWS, largest) * per_row
            raise IndexTooLarge(
                f"memory_budget {format_bytes(budget)} is too small: the finished index needs "
                f"about {format_bytes(resident)} in memory while it grows ({ntotal:,} vectors x "
                f"{dim} with codec {codec!r}) plus batches of at least {MIN_BATCH_ROWS} rows; give "
                f"at least {format_bytes(need)}, or use a smaller codec (f16 < f32, sq8 < f16, "
                "sq4 < sq8)"
            )
        batch_rows = int(batch_rows)
    if resident + FIXED_OVERHEAD > budget:
        raise IndexTooLarge(
            f"memory_budget {format_bytes(budget)} is smaller than the index needs while it "
            f"grows (~{format_bytes(resident)}); raise it or use a smaller codec"
        )
    train_bytes = train_memory_bytes(train_n, dim, nlist, paired)
    if train_bytes > budget:
        per = dim * 4 * (4 if paired else 3) + 16
        fit = (budget - 2 * nlist * dim * 4 - FIXED_OVERHEAD) // per
        hint = (
            f"use train_size <= {fit:,} or raise the budget" if fit >= nlist else "raise the budget"
        )
        raise BuildError(
            f"training on {train_n:,} {'pairs' if paired else 'vectors'} needs about "
            f"{format_bytes(train_bytes)}, more than memory_budget {format_bytes(budget)}; {hint}"
        )
    file_bytes = _file_bytes(ntotal, dim, nlist, codec)
    return BuildPlan(
        ntotal=ntotal,
        dim=dim,
        nlist=nlist,
        codec=codec,
        n_shards=len(images.shards),
        paired=paired,
        train_size=train_n,
        memory_budget=budget,
        index_bytes=index_bytes,
        resident_index_bytes=resident,
        batch_rows=batch_rows,
        batch_bytes=batch_rows * per_row,
        train_bytes=train_bytes,
        file_bytes=file_bytes,
        disk_peak_bytes=2 * file_bytes,
    )


def _calibrate(dim: int, nlist: int, num_threads) -> tuple[float, float]:
    """Multiply-adds per second of (nearest-centroid assignment, exact top-1 search), the kernels
    that k-means, paired training and add() spend their time in, each measured on a small random
    problem of ~4e8 multiply-adds (large enough for the kernels to reach their speed; ~0.1 s)."""
    rng = np.random.default_rng(0)
    threads = resolve_threads(num_threads)
    c = min(nlist, 1024)
    rows = int(np.clip(4e8 // (c * dim), 4096, 65536))
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    cent = rng.standard_normal((c, dim), dtype=np.float32)
    nq, ndb = 2048, int(np.clip(4e8 // (2048 * dim), 4096, 65536))
    q = rng.standard_normal((nq, dim), dtype=np.float32)
    db = rng.standard_normal((ndb, dim), dtype=np.float32)
    best_a = best_k = math.inf
    for _ in range(2):
        t0 = time.perf_counter()
        _core.kmeans_assign(x, cent, True, threads)
        t1 = time.perf_counter()
        _core.knn(q, db, 1, threads)
        t2 = time.perf_counter()
        best_a, best_k = min(best_a, t1 - t0), min(best_k, t2 - t1)
    return rows * c * dim / max(best_a, 1e-9), nq * ndb * dim / max(best_k, 1e-9)


def _time_model(plan: _PlanSizes, max_iter: int, rates: tuple[float, float], *, two_level: bool = False,
                scores_per_vector: Optional[float] = None) -> tuple[float, float]:
    """(training seconds, adding seconds) predicted from the measured rates. ``two_level``: two-level
    k-means (coarse k-means with sqrt(k) clusters on <= 1024 points each, labels, then sqrt(k)
    centroids per point per iteration); ``scores_per_vector``: centroids a two-level quantizer
    scores per added vector (default nlist: flat)."""
    assign_rate, knn_rate = rates
    n, k, d = plan.train_size, plan.nlist, plan.dim
    n = min(n, 256 * k)
    if two_level:
        k1 = max(1, round(k ** 0.5))
        m = k / k1  # centroids per coarse cluster
        fma = (max_iter * min(n, 1024 * k1) * k1 + n * k1 + max_iter * n * m) * d
        fma += k1 * (m * max(8 * m, 4096) + k1 * 4096) * d  # k-means++ seeding of every fit
    else:
        fma = max_iter * n * k * d + k * max(8 * k, 4096) * d  # Lloyd + k-means++ init
    train = fma / assign_rate
    if plan.paired:
        train += plan.train_size * plan.train_size * d / knn_rate  # exact nearest image of every sampled caption
    add = plan.ntotal * (scores_per_vector or k) * d * 1.15 / assign_rate  # + encoding and list appends
    return train, add


def _check_int(name, v, lo=1, hi=None):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise BuildError(f"{name} must be an integer >= {lo}, got {v!r}")
    if hi is not None and v > hi:
        raise BuildError(f"{name} must be at most {hi}, got {v!r}")
    return int(v)

