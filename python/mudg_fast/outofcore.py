"""The out-of-core planner: how to build an index that does not fit in memory as bounded parts.

A process building a part holds the trained quantizer, the part's growing inverted lists and one
float32 batch; :func:`plan_parts` picks the largest part size (and the batch size) for which that
stays within ``memory_budget``, counting the memory the process already uses (interpreter,
libraries). Parts are consecutive ranges of global ids, balanced in size; they may split a shard.
The same plan sizes the merge into one file (its list batches), the disk needed and the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from .build_plan import (
    FIXED_OVERHEAD,
    GROWTH_SLACK,
    MAX_BATCH_ROWS,
    MIN_BATCH_ROWS,
    BuildError,
    _code_bytes_per_vector,
    _file_bytes,
    format_bytes,
)
from .engines.tasks import ShardRange
from .shards import EmbeddingShards

__all__ = ["PartsPlan", "plan_parts", "shard_ranges", "current_rss_bytes", "MERGE_BATCH_BYTES"]

MERGE_BATCH_BYTES = 64 << 20  # lists assembled per step of a merge (at most)
_MIN_MERGE_BATCH = 1 << 20


def current_rss_bytes() -> int:
    """Resident memory of this process now (Linux VmRSS; 64 MiB where it cannot be read)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 64 << 20


@dataclass
class PartsPlan:
    """Sizes of a parts build, computed before any work (see :func:`plan_parts`)."""

    ntotal: int
    dim: int
    nlist: int
    codec: str
    paired: bool
    train_size: int
    memory_budget: int  # per process that builds a part, or merges
    baseline_bytes: int  # what the process held when planning (interpreter, libraries)
    ranges: list = field(default_factory=list)  # [lo, hi) global ids of each part
    batch_rows: int = 0
    batch_bytes: int = 0
    trained_bytes: int = 0  # centroids and codec parameters held by every part
    part_index_bytes: int = 0  # the largest part's lists in memory when finished
    part_peak_bytes: int = 0  # the largest part's build, process baseline included
    train_bytes: int = 0  # training (with the baseline)
    parts_file_bytes: int = 0  # every part file on disk
    merged_file_bytes: int = 0  # the merged file
    merge_batch_bytes: int = 0
    merge_peak_bytes: int = 0
    disk_bytes: int = 0  # disk needed at the peak: parts (+ merged file while merging)

    @property
    def n_parts(self) -> int:
        """Number of parts."""
        return len(self.ranges)

    @property
    def part_rows(self) -> int:
        """Rows of the largest part."""
        return max((hi - lo for lo, hi in self.ranges), default=0)

    @property
    def peak_bytes(self) -> int:
        """Peak memory of one process of the build (bytes): a part, the training or the merge,
        whichever needs most."""
        return max(self.part_peak_bytes, self.train_bytes, self.merge_peak_bytes)


def _trained_bytes(nlist: int, dim: int, codec: str) -> int:
    params = {"sq8": 2 * dim, "sq4": 16 * dim + 15 * dim}.get(codec, 0) * 4
    return nlist * dim * 4 + params


def _part_lists_bytes(rows: int, dim: int, nlist: int, codec: str) -> int:
    """The inverted lists of a part of `rows` vectors while it grows (codes, ids, the half
    block every list leaves open, times the allocator's slack)."""
    bpv = _code_bytes_per_vector(codec, dim)
    return int(GROWTH_SLACK * (rows * (bpv + 8) + min(rows, nlist) * 16 * bpv / 2))


def plan_parts(
    images: EmbeddingShards,
    *,
    nlist: int,
    codec: str,
    train_size: int,
    memory_budget: int,
    paired: bool = False,
    batch_size: Optional[int] = None,
    part_size: Optional[int] = None,
    min_parts: int = 1,
    merge: bool = False,
    train_bytes: int = 0,
    baseline_bytes: Optional[int] = None,
) -> PartsPlan:
    """Part layout, batch size, memory, disk for building ``images`` in parts within
    ``memory_budget`` bytes per process. ``part_size`` fixes the vectors per part (it must fit);
    ``min_parts`` asks for at least that many parts (e.g. one per worker). ``train_bytes`` is the
    training's own need (see :func:`plan_build`). Raises BuildError when the budget cannot hold
    one batch next to the trained quantizer, or the training, or the merge."""
    ntotal, dim = images.ntotal, images.dim
    base = current_rss_bytes() if baseline_bytes is None else int(baseline_bytes)
    trained = _trained_bytes(nlist, dim, codec)
    itemsize = max(s.dtype.itemsize for s in images.shards)
    per_row = dim * 4 + dim * itemsize + 8  # float32 batch + the source pages + ids
    largest = max(s.rows for s in images.shards)
    fixed = base + FIXED_OVERHEAD + trained
    room = memory_budget - fixed
    min_batch = min(MIN_BATCH_ROWS, largest, ntotal)
    smallest_part = _part_lists_bytes(min_batch, dim, nlist, codec)
    if room < min_batch * per_row + smallest_part:
        need = fixed + min_batch * per_row + smallest_part
        raise BuildError(
            f"memory_budget {format_bytes(memory_budget)} is too small for one batch: this process "
            f"already uses {format_bytes(base)}, the trained quantizer needs {format_bytes(trained)} "
            f"(nlist {nlist} x dim {dim}), and a batch of {min_batch:,} rows {format_bytes(min_batch * per_row)} "
            f"plus its part's lists; give at least {format_bytes(need)}"
        )
    if batch_size is not None:
        batch_rows = max(1, min(int(batch_size), largest))
    else:  # a quarter of the room at most: the rest holds the part's lists
        batch_rows = int(min(MAX_BATCH_ROWS, largest, max(min_batch, room // 4 // per_row)))
    batch_bytes = batch_rows * per_row
    lists_room = room - batch_bytes
    bpv = _code_bytes_per_vector(codec, dim)
    # the largest part whose lists fit (the open half blocks counted for every list)
    fit = int((lists_room / GROWTH_SLACK - nlist * 16 * bpv / 2) // (bpv + 8))
    if part_size is not None:
        rows = int(part_size)
        need = fixed + batch_bytes + _part_lists_bytes(rows, dim, nlist, codec)
        if need > memory_budget:
            raise BuildError(
                f"part_size {rows:,} needs about {format_bytes(need)} per process, more than memory_budget "
                f"{format_bytes(memory_budget)}; use part_size <= {max(fit, 0):,} or raise the budget"
            )
        n_parts = math.ceil(ntotal / rows)
        ranges = [(i * rows, min(ntotal, (i + 1) * rows)) for i in range(n_parts)]
    else:
        if fit < 1:
            raise BuildError(
                f"memory_budget {format_bytes(memory_budget)} is too small: after this process "
                f"({format_bytes(base)}), the trained quantizer ({format_bytes(trained)}) and a batch "
                f"({format_bytes(batch_bytes)}) no room is left for a part's lists; raise the budget"
            )
        n_parts = max(int(min_parts), math.ceil(ntotal / fit))
        n_parts = min(n_parts, ntotal)
        ranges = [(i * ntotal // n_parts, (i + 1) * ntotal // n_parts) for i in range(n_parts)]
    part_rows = max(hi - lo for lo, hi in ranges)
    part_index = _part_lists_bytes(part_rows, dim, nlist, codec)
    parts_file = sum(_file_bytes(hi - lo, dim, nlist, codec) for lo, hi in ranges)
    merged_file = _file_bytes(ntotal, dim, nlist, codec)
    # merging: part 0's quantizer, the written meta region (another copy of the centroids), the
    # parts' list checksums, and a batch of lists twice (assembled + the parts' pages read)
    sums = len(ranges) * 2 * nlist * 8
    merge_fixed = base + FIXED_OVERHEAD + 2 * trained + sums
    merge_batch = int(min(MERGE_BATCH_BYTES, (memory_budget - merge_fixed) // 2))
    if merge and merge_batch < _MIN_MERGE_BATCH:
        raise BuildError(
            f"memory_budget {format_bytes(memory_budget)} is too small to merge {len(ranges)} parts "
            f"(needs at least {format_bytes(merge_fixed + 2 * _MIN_MERGE_BATCH)}); raise the budget or "
            "keep the folder of parts (merge=False)"
        )
    merge_batch = max(merge_batch, _MIN_MERGE_BATCH)
    train_peak = base + max(0, train_bytes - FIXED_OVERHEAD)
    if train_peak > memory_budget:
        raise BuildError(
            f"training on {train_size:,} {'pairs' if paired else 'vectors'} needs about "
            f"{format_bytes(train_peak)} with this process's {format_bytes(base)}, more than memory_budget "
            f"{format_bytes(memory_budget)}; use a smaller train_size or raise the budget"
        )
    return PartsPlan(
        ntotal=ntotal,
        dim=dim,
        nlist=nlist,
        codec=codec,
        paired=paired,
        train_size=train_size,
        memory_budget=int(memory_budget),
        baseline_bytes=base,
        ranges=[list(r) for r in ranges],
        batch_rows=batch_rows,
        batch_bytes=batch_bytes,
        trained_bytes=trained,
        part_index_bytes=part_index,
        part_peak_bytes=fixed + batch_bytes + part_index,
        train_bytes=train_peak,
        parts_file_bytes=parts_file,
        merged_file_bytes=merged_file,
        merge_batch_bytes=merge_batch,
        merge_peak_bytes=merge_fixed + 2 * merge_batch if merge else 0,
        disk_bytes=parts_file + (merged_file if merge else 0),
    )


def shard_ranges(images: EmbeddingShards, lo: int, hi: int) -> tuple[ShardRange, ...]:
    """The rows of global ids [lo, hi) as ranges of the shards that hold them."""
    out = []
    for s in images.shards:
        a, b = max(lo, s.offset), min(hi, s.stop)
        if a < b:
            out.append(ShardRange(path=str(s.path.resolve()), offset=s.offset, start=a - s.offset,
                                  stop=b - s.offset, rows=s.rows, dim=s.dim, dtype=str(s.dtype)))
    return tuple(out)

