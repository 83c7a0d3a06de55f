"""Streaming, resumable IVF index builds from embedding shards (clip-retrieval / LAION layout).

:func:`build_index` trains an :class:`~mudg_fast.IVFIndex` on a seeded random sample of the
shards (paired k-means when caption shards are given, standard k-means otherwise; SPEC §1), then
adds every image shard batch by batch through read-only memory maps, converting at most one batch
to float32 at a time. Peak memory is the final index plus one batch (plus a small constant); the
batch size is derived from ``memory_budget``.

Progress survives interruption. A work folder next to the output (``<out>.build/`` by default)
holds:

``manifest.json``  written atomically after every step: a fingerprint of the inputs and
                   parameters, whether training finished, how many shards the checkpoint holds;
``trained.ivf``    the trained, empty index (centroids and codec), written once after training;
``checkpoint.ivf`` the partial index after the last checkpointed shard (atomic replace).

Running the same build again resumes from the checkpoint, skipping training, and produces the
same index file byte for byte as an uninterrupted build: adding is deterministic and does not
depend on batch boundaries or thread counts, and the file format stores nothing time-dependent.
A resume against different inputs or parameters is refused (the manifest lists what changed).
When the output is written, the large work files are deleted and the manifest is marked complete.

Checkpoints cost a full write of the partial index. By default (``checkpoint_every=None``) a
checkpoint is written after a shard only when the adding time since the last one is at least
nine times the last checkpoint's duration, so that checkpoints take at most ~10% of the build;
``checkpoint_every=k`` writes one every k shards, 0 never (resume then restarts after training).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from . import _core
from ._arrays import INT32_MAX, MAX_THREADS, resolve_threads
from .index import CODECS, IVFIndex, _temp_path, atomic_write
from .shards import EmbeddingShards, ShardError, check_aligned, gather, sample_ids

__all__ = [
    "build_index",
    "source_metadata",
    "plan_build",
    "BuildPlan",
    "BuildError",
    "parse_memory",
    "format_bytes",
    "default_train_size",
    "MANIFEST_FORMAT",
]

MANIFEST_FORMAT = "mudg_fast.build-index/1"
MAX_BATCH_ROWS = 262_144  # larger batches do not add speed, only memory
MIN_BATCH_ROWS = 1_024
FIXED_OVERHEAD = 32 << 20  # native add() scratch, Python objects, progress bar
# The native inverted lists grow by reallocation (x1.5 per step), and the allocator keeps part of
# the spare capacity and of the freed blocks resident: measured 1.2-1.6x the final list storage
# while adding (200k x 128, nlist 256). Budgets and the printed peak use this factor.
GROWTH_SLACK = 1.5
_MANIFEST, _TRAINED, _CHECKPOINT, _LOCK = "manifest.json", "trained.ivf", "checkpoint.ivf", "lock"


class BuildError(ValueError):
    """A build cannot start or resume as asked (bad parameter, budget, changed inputs)."""


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
        return self.resident_index_bytes + self.batch_bytes + FIXED_OVERHEAD

    @property
    def peak_bytes(self) -> int:
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
            raise BuildError(
                f"memory_budget {format_bytes(budget)} is too small: the finished index needs "
                f"about {format_bytes(resident)} in memory while it grows ({ntotal:,} vectors x "
                f"{dim} with codec {codec!r}) plus batches of at least {MIN_BATCH_ROWS} rows; give "
                f"at least {format_bytes(need)}, or use a smaller codec (f16 < f32, sq8 < f16, "
                "sq4 < sq8)"
            )
        batch_rows = int(batch_rows)
    if resident + FIXED_OVERHEAD > budget:
        raise BuildError(
            f"memory_budget {format_bytes(budget)} is smaller than the index needs while it "
            f"grows (~{format_bytes(resident)}); raise it or use a smaller codec"
        )
    # training: the sample(s); k-means' own sample of <= 256 points per centroid, labels and
    # pairs; centroids; the codec's sample of <= 65536 rows
    train_bytes = int(
        train_n * dim * 4 * (2 if paired else 1)
        + min(train_n, 256 * nlist) * dim * 4
        + train_n * 16
        + 2 * nlist * dim * 4
        + min(train_n, 65_536) * dim * 4
        + FIXED_OVERHEAD
    )
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


def _time_model(plan: BuildPlan, max_iter: int, rates: tuple[float, float]) -> tuple[float, float]:
    """(training seconds, adding seconds) predicted from the measured rates."""
    assign_rate, knn_rate = rates
    n, k, d = plan.train_size, plan.nlist, plan.dim
    fma = max_iter * min(n, 256 * k) * k * d + k * max(8 * k, 4096) * d  # Lloyd + k-means++ init
    train = fma / assign_rate
    if plan.paired:
        train += n * n * d / knn_rate  # exact nearest image of every sampled caption
    add = plan.ntotal * k * d * 1.15 / assign_rate  # + encoding and list appends
    return train, add


# ---------------------------------------------------------------------------------------------
# work folder, manifest, lock


class _WorkDir:
    def __init__(self, path: Path):
        self.path = path
        self.manifest = path / _MANIFEST
        self.trained = path / _TRAINED
        self.checkpoint = path / _CHECKPOINT
        self._lock_file = None

    def lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / _LOCK, "a+")  # noqa: SIM115 - held open: it carries the lock
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not POSIX: no protection against a second build
            pass
        except OSError:
            f.close()
            raise BuildError(
                f"another build is using {self.path} (lock held); wait for it to finish or "
                "give a different output"
            ) from None
        self._lock_file = f

    def unlock(self) -> None:
        if self._lock_file is not None:
            try:
                os.unlink(self.path / _LOCK)
            except OSError:
                pass
            self._lock_file.close()
            self._lock_file = None

    def read_manifest(self) -> Optional[dict]:
        if not self.manifest.exists():
            return None
        try:
            m = json.loads(self.manifest.read_text())
        except (OSError, ValueError) as e:
            raise BuildError(
                f"cannot read the build manifest {self.manifest} ({e}); rerun with resume=False "
                "(--no_resume) to start over"
            ) from e
        if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
            raise BuildError(
                f"{self.manifest} is not a mudg_fast build manifest (format "
                f"{m.get('format') if isinstance(m, dict) else None!r}); rerun with resume=False "
                "(--no_resume) to start over, or choose another output"
            )
        return m

    def write_manifest(self, m: dict) -> None:
        text = json.dumps(m, indent=1, sort_keys=True)
        atomic_write(self.manifest, lambda tmp: Path(tmp).write_text(text))

    def remove(self, *paths: Path) -> None:
        for p in paths:
            try:
                os.unlink(p)
            except OSError:  # missing, or still open elsewhere (Windows): leave it
                pass

    def clear(self) -> None:
        """Removes our own files only (the folder may be a user's)."""
        self.remove(self.checkpoint, self.trained, self.manifest, *self.leftover_temps())

    def leftover_temps(self) -> list[Path]:
        """Temporary files of saves that were killed mid-write (a later save would reuse them)."""
        return [_temp_path(p) for p in (self.checkpoint, self.trained, self.manifest)]


def _fingerprint(
    images: EmbeddingShards, captions: Optional[EmbeddingShards], params: dict
) -> dict:
    from . import __version__

    inputs = {
        "images": images.fingerprint_items(),
        "captions": captions.fingerprint_items() if captions is not None else None,
    }
    body = {"inputs": inputs, "params": params, "mudg_fast": __version__}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return {"sha256": digest, **body}


def _describe_changes(old: dict, new: dict) -> list[str]:
    out = []
    if old.get("mudg_fast") != new.get("mudg_fast"):
        out.append(f"mudg_fast version {old.get('mudg_fast')} -> {new.get('mudg_fast')}")
    op, np_ = old.get("params", {}), new.get("params", {})
    for k in sorted(set(op) | set(np_)):
        if op.get(k) != np_.get(k):
            out.append(f"{k} {op.get(k)!r} -> {np_.get(k)!r}")
    for side in ("images", "captions"):
        a, b = (old.get("inputs") or {}).get(side), (new.get("inputs") or {}).get(side)
        if a == b:
            continue
        if a is None or b is None:
            out.append(
                f"{side}: {'none' if a is None else 'given'} -> {'none' if b is None else 'given'}"
            )
            continue
        if len(a) != len(b):
            out.append(f"{side}: {len(a)} shards -> {len(b)} shards")
        for x, y in zip(a, b):
            if x != y:
                what = [
                    k
                    for k in ("name", "rows", "dim", "dtype", "bytes", "probe")
                    if x.get(k) != y.get(k)
                ]
                label = "content" if what == ["probe"] else ", ".join(what)
                out.append(f"{side} shard {x.get('name')}: {label} changed")
                if len(out) > 12:
                    return out + ["..."]
    return out or ["(fingerprint differs)"]


# ---------------------------------------------------------------------------------------------
# progress


class _Progress:
    """tqdm bar when available, else a line every 10 s; or a user callable(done, total)."""

    def __init__(self, total: int, initial: int, mode, desc: str = "adding"):
        self.total, self.n = total, initial
        self.callback = mode if callable(mode) else None
        self.bar = None
        self.printer = False
        self.t0, self.n0, self.last_print = time.monotonic(), initial, 0.0
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

    def update_to(self, done: int) -> None:
        done = int(done)
        if self.bar is not None and done > self.bar.n:
            self.bar.update(done - self.bar.n)
        self.n = done
        if self.printer:
            now = time.monotonic()
            if now - self.last_print >= 10 or done >= self.total:
                rate = (done - self.n0) / max(now - self.t0, 1e-9)
                eta = (self.total - done) / rate if rate > 0 else math.inf
                print(
                    f"  {done:,}/{self.total:,} vectors ({100 * done / max(self.total, 1):.1f}%), "
                    f"{rate:,.0f}/s, ETA {_format_seconds(eta) if math.isfinite(eta) else '?'}",
                    file=sys.stderr,
                    flush=True,
                )
                self.last_print = now
        if self.callback is not None:
            self.callback(done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Checkpoints:
    def __init__(self, every: Optional[int]):
        self.every = every
        self.shards_since = 0
        self.work_since = 0.0
        self.last_cost: Optional[float] = None

    def shard_done(self, seconds: float) -> None:
        self.shards_since += 1
        self.work_since += seconds

    def due(self) -> bool:
        if self.every == 0:
            return False
        if self.every is not None:
            return self.shards_since >= self.every
        return self.last_cost is None or self.work_since >= 9 * self.last_cost

    def saved(self, seconds: float) -> None:
        self.last_cost = seconds
        self.shards_since = 0
        self.work_since = 0.0


_TRIM = None


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


# ---------------------------------------------------------------------------------------------
# the build


def _check_int(name, v, lo=1, hi=None):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise BuildError(f"{name} must be an integer >= {lo}, got {v!r}")
    if hi is not None and v > hi:
        raise BuildError(f"{name} must be at most {hi}, got {v!r}")
    return int(v)


def build_index(
    images_dir,
    captions_dir=None,
    *,
    nlist: int,
    codec: str = "sq8",
    train_size: Optional[int] = None,
    memory_budget=None,
    out,
    resume: bool = True,
    seed: int = 0,
    batch_size: Optional[int] = None,
    nprobe: int = 8,
    max_iter: int = 20,
    num_threads: Optional[int] = None,
    progress: Union[bool, Callable[[int, int], None]] = True,
    checkpoint_every: Optional[int] = None,
    work_dir=None,
) -> IVFIndex:
    """Builds an IVF index over the ``*.npy`` image shards of ``images_dir``; writes it to ``out``.

    Parameters
    ----------
    images_dir : folder of image embedding shards (clip-retrieval ``img_emb/``); row ``j`` of the
        shards in lexicographic file order gets id ``j`` (see :mod:`mudg_fast.shards`).
    captions_dir : folder of row-aligned caption shards (``text_emb/``). When given, centroids are
        trained by paired k-means (``train_paired(..., pairing="nearest")``) so that text queries
        probe the cells of their nearest images; otherwise by standard spherical k-means.
    nlist, codec : as for :class:`~mudg_fast.IVFIndex` ("f32", "f16", "sq8", "sq4").
    train_size : training sample size, drawn uniformly at random over all shards with ``seed``
        (default :func:`default_train_size`; clamped to the number of vectors).
    memory_budget : bytes or "4GB"/"512MB" (powers of 1024) for the whole build; the batch size
        is derived from it (default: 80% of the available memory). Raises BuildError up front when
        the index or the training sample cannot fit.
    out : output index file, written atomically (temporary file, then rename).
    resume : continue an interrupted build of the same inputs and parameters (and return the
        existing index when it is already complete); False discards earlier progress.
    seed : seeds the training sample, k-means and the codec sample.
    batch_size : rows converted and added at a time (overrides the budget-derived size).
    nprobe : the nprobe you intend to search with; recorded in the manifest and used for the
        printed cost estimate.
    max_iter : k-means iterations.
    num_threads : threads for training and adding (None: all cores).
    progress : True: estimates and a tqdm bar (a plain line every 10 s without tqdm) on stderr;
        False: silent; a callable(done, total) is called with the number of vectors added so far
        (raise from it to stop the build; progress is kept for a resume).
    checkpoint_every : see the module docs (None adaptive, k every k shards, 0 never).
    work_dir : folder for the manifest and checkpoints (default ``<out>.build``).

    Returns
    -------
    ``IVFIndex.load(out)``: the finished index, memory-mapped from the file (the build's own
    in-memory copy is released first).
    """
    nlist = _check_int("nlist", nlist)
    if codec not in CODECS:
        raise BuildError(f"codec must be one of {CODECS}, got {codec!r}")
    seed = _check_int("seed", seed, 0, 2**64 - 1)
    max_iter = _check_int("max_iter", max_iter, 1, INT32_MAX)
    nprobe = _check_int("nprobe", nprobe, 1, INT32_MAX)
    if train_size is not None:
        train_size = _check_int("train_size", train_size)
    if batch_size is not None:
        batch_size = _check_int("batch_size", batch_size)
    if checkpoint_every is not None:
        checkpoint_every = _check_int("checkpoint_every", checkpoint_every, 0)
    if num_threads is not None:
        _check_int("num_threads", num_threads, 1, MAX_THREADS)
    if not (isinstance(progress, bool) or callable(progress)):
        raise BuildError(
            f"progress must be True, False or a callable(done, total), got {progress!r}"
        )
    if out is None:
        raise BuildError("out (the index file to write) is required")
    out = Path(out)
    if out.is_dir():
        raise BuildError(f"out {str(out)!r} is a folder; give the path of the index file to write")
    verbose = progress is not False

    def say(msg: str) -> None:
        if verbose:
            print(f"build-index: {msg}", file=sys.stderr, flush=True)

    images = EmbeddingShards(images_dir, label="images")
    captions = EmbeddingShards(captions_dir, label="captions") if captions_dir is not None else None
    work = _WorkDir(Path(work_dir) if work_dir is not None else out.with_name(out.name + ".build"))
    try:
        if captions is not None:
            check_aligned(images, captions)
        if images.ntotal < nlist:
            raise BuildError(
                f"nlist={nlist} is larger than the number of vectors ({images.ntotal}); use at "
                f"most {images.ntotal} (typically ~4*sqrt(n) to 16*sqrt(n))"
            )
        if train_size is not None and train_size < nlist:
            raise BuildError(
                f"train_size={train_size} is smaller than nlist={nlist}; k-means needs at least "
                "one training vector per centroid (ideally 39 or more)"
            )
        plan = plan_build(
            images,
            nlist=nlist,
            codec=codec,
            train_size=train_size,
            memory_budget=memory_budget,
            paired=captions is not None,
            batch_size=batch_size,
        )
        params = {
            "nlist": nlist,
            "codec": codec,
            "train_size": plan.train_size,
            "seed": seed,
            "max_iter": max_iter,
            "training": "paired" if captions is not None else "standard",
            "pairing": "nearest" if captions is not None else None,
        }
        work.lock()
        try:
            return _build(
                images,
                captions,
                plan,
                params,
                out,
                work,
                resume=resume,
                nprobe=nprobe,
                num_threads=num_threads,
                progress=progress,
                checkpoint_every=checkpoint_every,
                say=say,
            )
        finally:
            work.unlock()
    finally:
        images.close()
        if captions is not None:
            captions.close()


def _build(
    images,
    captions,
    plan: BuildPlan,
    params,
    out: Path,
    work: _WorkDir,
    *,
    resume,
    nprobe,
    num_threads,
    progress,
    checkpoint_every,
    say,
) -> IVFIndex:
    t_start = time.monotonic()
    fingerprint = _fingerprint(images, captions, params)
    manifest = work.read_manifest() if resume else None
    if not resume:
        work.clear()
    same = (
        manifest is not None
        and manifest.get("fingerprint", {}).get("sha256") == fingerprint["sha256"]
    )
    if manifest is not None and manifest.get("complete"):
        # A finished build: nothing is in progress, so nothing can be lost by building again.
        o = manifest.get("output", {})
        if (
            same
            and out.exists()
            and o.get("bytes") == out.stat().st_size
            and o.get("mtime_ns") == out.stat().st_mtime_ns
        ):
            say(f"{out} is already complete (manifest {work.manifest}); nothing to do")
            return IVFIndex.load(out, mmap=True, verify=False, num_threads=num_threads)
        why = (
            "the finished build in the manifest used other inputs or parameters"
            if not same
            else "it is missing"
            if not out.exists()
            else "it changed since the build finished"
        )
        say(f"building {out} again: {why}")
        work.clear()
        manifest = None
    elif manifest is not None and not same:
        changes = _describe_changes(manifest.get("fingerprint", {}), fingerprint)
        raise BuildError(
            f"cannot resume: {work.path} holds an unfinished build of different inputs or "
            "parameters (" + "; ".join(changes) + "). Rerun with resume=False (--no_resume) to "
            "discard it and start over, or restore the original inputs and parameters"
        )
    if manifest is None:
        manifest = {
            "format": MANIFEST_FORMAT,
            "fingerprint": fingerprint,
            "trained": False,
            "shards_done": 0,
            "ntotal_done": 0,
            "complete": False,
            "nprobe": nprobe,
            "shards": [
                {
                    "images": s.name,
                    "captions": (captions.shards[i].name if captions else None),
                    "rows": s.rows,
                    "offset": s.offset,
                }
                for i, s in enumerate(images.shards)
            ],
            "images_dir": str(images.folder.resolve()),
            "captions_dir": str(captions.folder.resolve()) if captions is not None else None,
            "output": {"path": str(out.resolve())},
            "stats": {},
        }
        work.write_manifest(manifest)

    # -- estimates ------------------------------------------------------------------------------
    rates = _calibrate(plan.dim, plan.nlist, num_threads)
    t_train, t_add = _time_model(plan, params["max_iter"], rates)
    dtypes = "/".join(str(t) for t in images.dtypes)
    say(
        f"{plan.n_shards} shards, {plan.ntotal:,} vectors x {plan.dim} ({dtypes}); "
        f"nlist {plan.nlist}, codec {plan.codec}, {params['training']} k-means on "
        f"{plan.train_size:,} sampled "
        f"{'pairs' if plan.paired else 'vectors'} (seed {params['seed']})"
    )
    say(
        f"memory: index ~{format_bytes(plan.index_bytes)} (up to "
        f"~{format_bytes(plan.resident_index_bytes)} while growing) + batches of "
        f"{plan.batch_rows:,} rows "
        f"(~{format_bytes(plan.batch_bytes)}) = peak ~{format_bytes(plan.peak_bytes)} "
        f"(training ~{format_bytes(plan.train_bytes)}; budget {format_bytes(plan.memory_budget)})"
    )
    say(
        f"disk: index file ~{format_bytes(plan.file_bytes)}; up to "
        f"~{format_bytes(plan.disk_peak_bytes)} while checkpointing in {work.path}"
    )
    done_frac = manifest["ntotal_done"] / max(plan.ntotal, 1)
    t_train_left = 0.0 if manifest["trained"] else t_train
    say(
        f"time (measured {rates[0] / 1e9:.1f} GFMA/s assigning, {rates[1] / 1e9:.1f} searching): "
        f"training ~{_format_seconds(t_train_left)}, adding ~{_format_seconds(t_add * (1 - done_frac))}"
    )
    manifest["stats"]["estimate"] = {
        "train_seconds": round(t_train_left, 3),
        "add_seconds": round(t_add * (1 - done_frac), 3),
    }
    try:
        free = shutil.disk_usage(out.parent if out.parent.exists() else Path.cwd()).free
        if free < plan.file_bytes:
            raise BuildError(
                f"not enough disk space for {out}: ~{format_bytes(plan.file_bytes)} needed, "
                f"{format_bytes(free)} free"
            )
        if free < plan.disk_peak_bytes:
            say(
                f"warning: only {format_bytes(free)} free on disk; checkpoints may need "
                f"~{format_bytes(plan.disk_peak_bytes)}"
            )
    except OSError:
        pass

    try:
        index = _train_or_resume(images, captions, plan, params, manifest, work, num_threads, say)
        _add_all(images, plan, manifest, work, index, progress, checkpoint_every, say)
    except BaseException as e:
        if not isinstance(e, (BuildError, ShardError)):
            say(
                f"stopped ({type(e).__name__}); {manifest['shards_done']} of {plan.n_shards} shards are "
                "checkpointed"
                + (", training is saved" if manifest["trained"] else "")
                + "; run the same build again to resume"
            )
        raise

    # Where the vectors came from, for IVFIndex.search(..., rerank=N, source="auto").
    index.set_metadata({**index.metadata, "source": source_metadata(images)})
    t0 = time.monotonic()
    index.save(out)
    st = out.stat()
    manifest.update(
        complete=True,
        shards_done=plan.n_shards,
        ntotal_done=index.ntotal,
        output={"path": str(out.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns},
    )
    manifest["stats"].update(
        write_seconds=round(time.monotonic() - t0, 3),
        total_seconds=round(time.monotonic() - t_start, 3),
        peak_rss_bytes=_peak_rss_bytes(),
        plan=asdict(plan),
    )
    work.write_manifest(manifest)
    work.remove(work.checkpoint, work.trained, *work.leftover_temps())
    ntotal = index.ntotal
    mean_list = ntotal / plan.nlist
    say(
        f"wrote {out} ({format_bytes(st.st_size)}, {ntotal:,} vectors) in "
        f"{_format_seconds(time.monotonic() - t_start)}; peak RSS "
        f"{format_bytes(_peak_rss_bytes() or 0)}; nprobe {nprobe} scans "
        f"~{nprobe * mean_list:,.0f} vectors per query "
        f"({100 * min(1.0, nprobe / plan.nlist):.2g}% of the index)"
    )
    num_threads = index.num_threads
    del index
    _release_free_memory()
    return IVFIndex.load(out, mmap=True, verify=False, num_threads=num_threads)


def source_metadata(images: EmbeddingShards) -> dict:
    """``index.metadata["source"]`` as build_index writes it: the absolute path of the image shard
    folder, its size, dim and element type ("float16", "float32"; "mixed" when shards differ).
    ``IVFIndex.search(..., rerank=N, source="auto")`` re-ranks from that folder after checking
    that it still holds ntotal x dim vectors."""
    dtypes = sorted({str(s.dtype) for s in images.shards})
    return {"img_emb": str(images.folder.resolve()), "ntotal": int(images.ntotal), "dim": int(images.dim),
            "dtype": dtypes[0] if len(dtypes) == 1 else "mixed"}


def _train_or_resume(
    images, captions, plan: BuildPlan, params, manifest, work: _WorkDir, num_threads, say
):
    def load_checked(path: Path, expect_ntotal: int) -> Optional[IVFIndex]:
        try:
            ix = IVFIndex.load(path, mmap=True, verify=True, num_threads=num_threads)
        except (OSError, ValueError) as e:
            say(f"warning: cannot use {path} ({e}); redoing that step")
            return None
        if (ix.dim, ix.nlist, ix.codec, ix.ntotal) != (
            plan.dim,
            plan.nlist,
            plan.codec,
            expect_ntotal,
        ):
            say(f"warning: {path} does not match the manifest; redoing that step")
            return None
        return ix

    done = int(manifest["shards_done"])
    if manifest["trained"] and done > 0:
        expect = images.shards[done - 1].stop
        ix = load_checked(work.checkpoint, expect)
        if ix is not None and expect == manifest["ntotal_done"]:
            say(
                f"resuming after shard {done} of {plan.n_shards} ({expect:,} vectors already added)"
            )
            return ix
        manifest.update(shards_done=0, ntotal_done=0)
        work.write_manifest(manifest)
    if manifest["trained"]:
        ix = load_checked(work.trained, 0)
        if ix is not None:
            say("training was done earlier; adding")
            return ix
        manifest.update(trained=False)
        work.write_manifest(manifest)

    t0 = time.monotonic()
    ids = sample_ids(plan.ntotal, plan.train_size, params["seed"])
    xs = gather(images, ids)
    index = IVFIndex(plan.dim, plan.nlist, codec=plan.codec, num_threads=num_threads)
    if captions is not None:
        ps = gather(captions, ids)
        say(f"training paired k-means on {len(ids):,} sampled pairs")
        index.train_paired(
            xs, ps, pairing="nearest", max_iter=params["max_iter"], seed=params["seed"]
        )
        del ps
    else:
        say(f"training k-means on {len(ids):,} sampled vectors")
        index.train(xs, max_iter=params["max_iter"], seed=params["seed"])
    del xs, ids
    images.close()
    if captions is not None:
        captions.close()
    index.save(work.trained)
    manifest.update(trained=True, shards_done=0, ntotal_done=0)
    manifest["stats"]["train_seconds"] = round(time.monotonic() - t0, 3)
    work.write_manifest(manifest)
    say(f"trained in {_format_seconds(time.monotonic() - t0)}")
    # continue from the saved file, exactly as a resumed build would
    return IVFIndex.load(work.trained, num_threads=index.num_threads)


def _add_all(
    images: EmbeddingShards,
    plan: BuildPlan,
    manifest,
    work: _WorkDir,
    index: IVFIndex,
    progress,
    checkpoint_every,
    say,
) -> None:
    start = int(manifest["shards_done"])
    if start < plan.n_shards:
        if index.ntotal != images.shards[start].offset:  # our invariant
            raise AssertionError(
                f"index holds {index.ntotal} vectors, shard {start} starts at "
                f"{images.shards[start].offset}"
            )
    buffer = np.empty((max(1, plan.batch_rows), plan.dim), dtype=np.float32)
    bar = _Progress(plan.ntotal, index.ntotal, progress)
    policy = _Checkpoints(checkpoint_every)
    t_add = time.monotonic()
    try:
        for i in range(start, plan.n_shards):
            s = images.shards[i]
            t0 = time.monotonic()
            for a in range(0, s.rows, plan.batch_rows):
                b = min(s.rows, a + plan.batch_rows)
                x = images.read(i, a, b, out=buffer)
                ids = np.arange(s.offset + a, s.offset + b, dtype=np.int64)
                base = index.ntotal
                index.add(
                    x, ids, progress=lambda done, total, base=base: bar.update_to(base + done)
                )
                _release_free_memory()
                bar.update_to(index.ntotal)
            images._unmap(i)
            policy.shard_done(time.monotonic() - t0)
            if i + 1 < plan.n_shards and policy.due():
                t1 = time.monotonic()
                index.save(work.checkpoint)
                manifest.update(shards_done=i + 1, ntotal_done=index.ntotal)
                work.write_manifest(manifest)
                policy.saved(time.monotonic() - t1)
    finally:
        bar.close()
    manifest["stats"]["add_seconds"] = round(time.monotonic() - t_add, 3)
