"""The pure steps of a parts build: train once, add one part, search one part, merge.

Each step is a plain function of a small, picklable task description (paths and row ranges,
never large arrays) that reads its own inputs from shared storage and writes its own output file
atomically. An engine (:mod:`mudg_fast.engines.local`, :mod:`mudg_fast.engines.ray`) only decides
where and when the steps run; the bytes they write do not depend on it. A Spark or Dask engine
would run the same functions.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .. import _core
from ..build_progress import _peak_rss_bytes, _release_free_memory
from ..index import IVFIndex
from ..parts import merge_parts, part_metadata
from ..shards import EmbeddingShards, ShardError, _inspect_npy, _Mapped, gather, sample_ids

__all__ = ["TrainTask", "ShardRange", "PartTask", "train", "add_part", "search_part", "merge"]


@dataclass(frozen=True)
class TrainTask:
    """Train the quantizer and codec once, on a seeded sample of every shard."""

    images_dir: str
    captions_dir: Optional[str]  # row-aligned captions: paired k-means
    ntotal: int  # what the planner saw; the task refuses shards that changed since
    dim: int
    nlist: int
    codec: str
    train_size: int
    seed: int
    max_iter: int
    out: str  # the trained, empty index file to write
    num_threads: Optional[int] = None
    kmeans_method: str = "flat"  # see KMeans(method=)
    quantizer: str = "flat"  # the index's coarse quantizer, see IVFIndex(quantizer=)
    quantizer_probe: Optional[int] = None


@dataclass(frozen=True)
class ShardRange:
    """Rows [start, stop) of one ``.npy`` shard whose row 0 has global id ``offset``; ``rows``,
    ``dim`` and ``dtype`` are the header facts the planner saw."""

    path: str
    offset: int
    start: int
    stop: int
    rows: int
    dim: int
    dtype: str


@dataclass(frozen=True)
class PartTask:
    """Add the rows of global ids [lo, hi) (read from ``ranges``) to a copy of the trained index
    and write it to ``out`` as part ``number`` of ``count``."""

    number: int
    count: int
    lo: int
    hi: int
    ranges: tuple[ShardRange, ...]
    trained: str
    out: str
    batch_rows: int
    metadata: dict = field(default_factory=dict)  # common to every part and the merged file
    num_threads: Optional[int] = None


def train(task: TrainTask, say: Callable[[str], None] = lambda msg: None) -> dict:
    """Trains on ``task.train_size`` rows drawn with ``task.seed`` over all shards (paired
    k-means when captions are given) and writes the trained, empty index to ``task.out``.
    Returns {"seconds", "peak_rss_bytes"}."""
    t0 = time.monotonic()
    images = EmbeddingShards(task.images_dir, label="images")
    captions = EmbeddingShards(task.captions_dir, label="captions") if task.captions_dir else None
    try:
        if (images.ntotal, images.dim) != (task.ntotal, task.dim):
            raise ShardError(f"{task.images_dir} changed since the build was planned: it holds "
                             f"{images.ntotal:,} x {images.dim}, not {task.ntotal:,} x {task.dim}")
        ids = sample_ids(task.ntotal, task.train_size, task.seed)
        xs = gather(images, ids)
        index = IVFIndex(task.dim, task.nlist, codec=task.codec, num_threads=task.num_threads,
                         quantizer=task.quantizer, quantizer_probe=task.quantizer_probe)
        if captions is not None:
            ps = gather(captions, ids)
            say(f"training paired k-means on {len(ids):,} sampled pairs")
            index.train_paired(xs, ps, pairing="nearest", max_iter=task.max_iter, seed=task.seed,
                               method=task.kmeans_method)
            del ps
        else:
            say(f"training k-means on {len(ids):,} sampled vectors")
            index.train(xs, max_iter=task.max_iter, seed=task.seed, method=task.kmeans_method)
        del xs, ids
    finally:
        images.close()
        if captions is not None:
            captions.close()
    index.save(task.out)
    return {"seconds": time.monotonic() - t0, "peak_rss_bytes": _peak_rss_bytes()}


class _RangeReader:
    """Reads float32 batches of one shard range exactly as :meth:`EmbeddingShards.read` does
    (same conversion, pages released after use, NaN/inf refused naming file and row)."""

    def __init__(self, r: ShardRange):
        shard = _inspect_npy(Path(r.path), r.offset)
        if (shard.rows, shard.dim, str(shard.dtype)) != (r.rows, r.dim, r.dtype):
            raise ShardError(f"{r.path} changed since the build was planned: it holds {shard.rows} x "
                             f"{shard.dim} {shard.dtype}, not {r.rows} x {r.dim} {r.dtype}")
        self.range, self.shard = r, shard
        self.mapped = _Mapped(shard)

    def read(self, a: int, b: int, out: np.ndarray) -> np.ndarray:
        dst = out[: b - a]
        np.copyto(dst, self.mapped.array[a:b], casting="same_kind")
        self.mapped.release(a, b)
        if not _core.all_finite(dst):  # type: ignore[arg-type]  # an ndarray exports the buffer protocol; numpy's stubs declare __buffer__ only from Python 3.12
            bad = int(np.flatnonzero(~np.isfinite(dst).all(axis=1))[0])
            raise ShardError(f"{self.shard.path} row {a + bad} (global id {self.shard.offset + a + bad}) "
                             "contains NaN or infinite values")
        return dst

    def close(self) -> None:
        self.mapped.close()


def add_part(task: PartTask, progress: Optional[Callable[[int], None]] = None) -> dict:
    """Adds the part's rows (global ids as ids) to the trained index and writes the part file
    atomically. ``progress(done)`` is called with the number of vectors added so far. Returns
    {"number", "path", "ntotal", "bytes", "seconds", "write_seconds", "peak_rss_bytes"}."""
    t0 = time.monotonic()
    index = IVFIndex.load(task.trained, mmap=False, verify=True, num_threads=task.num_threads)
    if index.ntotal != 0 or not index.is_trained:
        raise ValueError(f"{task.trained} is not a trained, empty index")
    buffer = np.empty((max(1, min(task.batch_rows, task.hi - task.lo)), index.dim), dtype=np.float32)
    done = 0
    for r in task.ranges:
        reader = _RangeReader(r)
        try:
            for a in range(r.start, r.stop, task.batch_rows):
                b = min(r.stop, a + task.batch_rows)
                x = reader.read(a, b, buffer)
                ids = np.arange(r.offset + a, r.offset + b, dtype=np.int64)
                base = done
                index.add(x, ids, progress=None if progress is None else (lambda d, t, base=base: progress(base + d)))
                done += b - a
                _release_free_memory()
        finally:
            reader.close()
    if index.ntotal != task.hi - task.lo:  # the planner's invariant
        raise AssertionError(f"part {task.number} holds {index.ntotal} vectors, expected {task.hi - task.lo}")
    index.set_metadata({**task.metadata,
                        "part": part_metadata(task.number, task.count, (task.lo, task.hi), index.fingerprint)})
    t_write = time.monotonic()
    index.save(task.out)
    t_end = time.monotonic()
    del index, buffer
    _release_free_memory()
    if progress is not None:
        progress(done)
    return {"number": task.number, "path": task.out, "ntotal": done, "bytes": os.path.getsize(task.out),
            "seconds": t_end - t0, "write_seconds": t_end - t_write, "peak_rss_bytes": _peak_rss_bytes()}


def search_part(path: str, queries: np.ndarray, k: int, probes: np.ndarray, mode: str = "auto",
                num_threads: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """One part's top-k over the given probes (memory-mapped); merge the parts' results with
    :func:`mudg_fast.parts.merge_topk`."""
    ix = IVFIndex.load(path, mmap=True, verify=False, num_threads=num_threads)
    return ix.search_probed(queries, k, probes, mode=mode)


def merge(paths: list[str], out: str, metadata: Optional[dict] = None, num_threads: Optional[int] = None) -> str:
    """Merges the part files into one index file (see :func:`mudg_fast.parts.merge_parts`)."""
    merge_parts([Path(p) for p in paths], out, metadata=metadata, num_threads=num_threads)
    return out
