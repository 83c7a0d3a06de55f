"""Index quality: recall@k against exact search per nprobe (with speed), a recall plot, and the
modality-gap report of paired image/caption embeddings (docs/method.rst §1, paired k-means).

``recall@k`` is the intersection measure used by the authors and in faiss's benchmarks: for every
query, the fraction of its exact top-k neighbours found among the index's top k, averaged over
queries (``|found ∩ exact| / |exact|``; queries whose exact list is empty are skipped).
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from ._arrays import as_matrix, check_k
from .search import knn

__all__ = [
    "RecallResult",
    "evaluate_recall",
    "recall_at_k",
    "exact_ground_truth",
    "plot_recall",
    "modality_gap",
]


@dataclass
class RecallResult:
    """recall@k, queries per second and seconds per nprobe (lists aligned with ``nprobes``).

    For an :class:`~mudg_fast.IVFIndex` also its coarse quantizer's diagnostics: ``quantizer``
    ("flat" / "two_level"), ``quantizer_top1`` (fraction of queries whose first probed list is
    their exact nearest centroid), and per nprobe ``cells_kept`` (fraction of the exact nprobe
    nearest centroids among the probed lists), ``coarse_seconds`` (the fastest ``probe`` of all
    queries) and ``coarse_share`` (coarse_seconds / seconds: the coarse stage's share of search
    time). None for other indexes."""

    k: int
    n_queries: int
    nprobes: list
    recall: list
    qps: list
    seconds: list
    nlist: Optional[int] = None
    per_query: Optional[np.ndarray] = field(default=None, repr=False)  # (len(nprobes), n_queries)
    quantizer: Optional[str] = None
    quantizer_top1: Optional[float] = None
    cells_kept: Optional[list] = None
    coarse_seconds: Optional[list] = None

    @property
    def coarse_share(self) -> Optional[list]:
        """Per nprobe, the coarse stage's share of the search time (coarse_seconds / seconds);
        None when the index has no coarse-stage report."""
        if self.coarse_seconds is None:
            return None
        return [c / s if s > 0 else float("nan") for c, s in zip(self.coarse_seconds, self.seconds)]

    def __getitem__(self, nprobe: int) -> dict:
        """``result[8]`` -> {"nprobe": 8, "recall": ..., "qps": ..., "seconds": ...}."""
        try:
            j = self.nprobes.index(nprobe)
        except ValueError:
            raise KeyError(
                f"nprobe {nprobe} was not evaluated (evaluated: {self.nprobes})"
            ) from None
        row = {
            "nprobe": self.nprobes[j],
            "recall": self.recall[j],
            "qps": self.qps[j],
            "seconds": self.seconds[j],
        }
        share = self.coarse_share
        if self.coarse_seconds is not None and self.cells_kept is not None and share is not None:
            row["cells_kept"] = self.cells_kept[j]
            row["coarse_seconds"] = self.coarse_seconds[j]
            row["coarse_share"] = share[j]
        return row

    def rows(self) -> list:
        """One dict per evaluated nprobe (see ``__getitem__``), in the order evaluated."""
        return [self[p] for p in self.nprobes]

    def to_dict(self) -> dict:
        """JSON-ready dict (without per-query values)."""
        out: dict[str, Any] = {
            "k": self.k,
            "n_queries": self.n_queries,
            "nlist": self.nlist,
            "results": self.rows(),
        }
        if self.quantizer is not None:
            out["quantizer"] = self.quantizer
            out["quantizer_top1"] = self.quantizer_top1
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> "RecallResult":
        """The result back from :meth:`to_dict`'s output (e.g. a JSON report)."""
        rows = d["results"]
        coarse = all("coarse_seconds" in r for r in rows) and "quantizer" in d
        return cls(
            k=int(d["k"]),
            n_queries=int(d["n_queries"]),
            nlist=d.get("nlist"),
            nprobes=[int(r["nprobe"]) for r in rows],
            recall=[float(r["recall"]) for r in rows],
            qps=[float(r["qps"]) for r in rows],
            seconds=[float(r["seconds"]) for r in rows],
            quantizer=d.get("quantizer"),
            quantizer_top1=d.get("quantizer_top1"),
            cells_kept=[float(r["cells_kept"]) for r in rows] if coarse else None,
            coarse_seconds=[float(r["coarse_seconds"]) for r in rows] if coarse else None,
        )

    def table(self) -> str:
        """The results as a fixed-width text table, one line per nprobe (plus the quantizer's top-1
        agreement when reported)."""
        coarse = self.coarse_seconds is not None
        head = f"{'nprobe':>6}  {'recall@' + str(self.k):>10}  {'QPS':>10}  {'seconds':>9}"
        if coarse:
            head += f"  {'cells kept':>10}  {'coarse share':>12}"
        lines = [head]
        for r in self.rows():
            line = f"{r['nprobe']:>6}  {r['recall']:>10.4f}  {r['qps']:>10,.0f}  {r['seconds']:>9.4f}"
            if coarse:
                line += f"  {r['cells_kept']:>10.4f}  {r['coarse_share']:>12.1%}"
            lines.append(line)
        if coarse:
            lines.append(f"quantizer {self.quantizer}: top-1 agreement with exact assignment "
                         f"{self.quantizer_top1:.4f}")
        return "\n".join(lines)


def recall_at_k(found, truth, k: Optional[int] = None) -> np.ndarray:
    """Per-query ``|found[:, :k] ∩ truth[:, :k]| / |truth[:, :k]|`` (ids < 0 in ``truth`` are
    padding and do not count; NaN where a query has no true neighbour). float64 (n,)."""
    found = np.asarray(found)
    truth = np.asarray(truth)
    for name, a in (("found", found), ("truth", truth)):
        if a.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integer ids, got dtype {a.dtype}")
    if found.ndim != 2 or truth.ndim != 2 or found.shape[0] != truth.shape[0]:
        raise ValueError(
            f"found and truth must be 2-D with the same number of rows, got {found.shape} and "
            f"{truth.shape}"
        )
    k = min(found.shape[1], truth.shape[1]) if k is None else check_k(k)
    found, truth = found[:, :k], truth[:, :k]
    valid = truth >= 0
    hits = np.zeros(found.shape[0], dtype=np.int64)
    step = max(1, 4_000_000 // max(1, k * k))
    for a in range(0, found.shape[0], step):
        f, t, v = found[a : a + step], truth[a : a + step], valid[a : a + step]
        hits[a : a + step] = ((t[:, :, None] == f[:, None, :]).any(axis=2) & v).sum(axis=1)
    n_true = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_true > 0, hits / np.maximum(n_true, 1), np.nan)


def exact_ground_truth(
    queries, database, k: int, *, batch_rows: int = 262_144, num_threads: Optional[int] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, ids) of ``queries`` in ``database``: an array, or an
    :class:`~mudg_fast.shards.EmbeddingShards` folder (ids are global ids). A float32 array goes to
    :func:`mudg_fast.knn` directly; anything else (shards, float16 or memory-mapped arrays) is
    converted and searched ``batch_rows`` rows at a time, so memory stays at one batch. Equal
    scores go to the lower id, as in ``knn``; missing neighbours are (-inf, -1)."""
    from .shards import EmbeddingShards

    k = check_k(k)
    batch_rows = check_k(batch_rows, "batch_rows")
    if not isinstance(database, EmbeddingShards):
        db = np.asarray(database)
        if db.dtype.kind not in "fiu" or db.dtype == np.bool_:
            raise TypeError(f"database must be a numeric array, got dtype {db.dtype}")
        if db.ndim != 2:
            raise ValueError(f"database must be a 2-D array (n, d), got shape {db.shape}")
        if db.shape[0] == 0:
            raise ValueError(f"database is empty (shape {db.shape}); pass at least one row")
        if db.dtype == np.float32 and db.flags.c_contiguous and not isinstance(db, np.memmap):
            return knn(queries, db, k, num_threads=num_threads)
        dim = db.shape[1]
        batches = (
            (a, np.ascontiguousarray(db[a : a + batch_rows], dtype=np.float32))
            for a in range(0, db.shape[0], batch_rows)
        )
    else:
        dim = database.dim
        batches = ((first, x) for _, first, x in database.iter_batches(batch_rows))
    q = as_matrix(queries, name="queries", dim=dim, allow_1d=True)
    best_s = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
    best_i = np.full((q.shape[0], k), -1, dtype=np.int64)
    for first, x in batches:
        s, i = knn(q, x, k, num_threads=num_threads)
        i = np.where(i >= 0, i + first, -1)
        cs, ci = np.concatenate([best_s, s], axis=1), np.concatenate([best_i, i], axis=1)
        # best first; equal scores: lower id first; padding (-1) last
        order = np.lexsort((np.where(ci < 0, np.iinfo(np.int64).max, ci), -cs), axis=-1)[:, :k]
        best_s, best_i = np.take_along_axis(cs, order, 1), np.take_along_axis(ci, order, 1)
    return best_s, best_i


def _check_nprobes(nprobes) -> list:
    if isinstance(nprobes, numbers.Integral):
        nprobes = [nprobes]
    out = [check_k(p, "nprobe") for p in nprobes]
    if not out:
        raise ValueError("nprobes is empty; give at least one nprobe")
    return out


def _search(index, q, k, nprobe):
    from .index import IVFIndex

    if isinstance(index, IVFIndex):
        return index.search(q, k, nprobe=nprobe)
    if hasattr(index, "nprobe"):  # a faiss IVF index, e.g. from IVFIndex.to_faiss()
        index.nprobe = nprobe
        return index.search(q, k)
    return index.search(q, k, nprobe=nprobe)


def evaluate_recall(
    index,
    queries,
    database=None,
    ground_truth=None,
    k=10,
    nprobes=(1, 2, 4, 8, 16, 32),
    *,
    num_threads: Optional[int] = None,
    min_seconds: float = 0.2,
) -> RecallResult:
    """recall@k of ``index`` against exact search, and its speed, for each nprobe.

    Parameters
    ----------
    index : an :class:`~mudg_fast.IVFIndex` (or a faiss IVF index: its ``nprobe`` is set per run).
    queries : (nq, d) array.
    database : the vectors the index holds, row i = id i: an array, or an EmbeddingShards folder
        (streamed). Ground truth is ``knn(queries, database, k)``. Not needed with ground_truth.
    ground_truth : int (nq, >= k) exact neighbour ids (the first k columns are used; -1 = none).
    k : neighbours per query.
    nprobes : nprobe values to evaluate, in the order given.

    num_threads : threads of the exact search (the index searches with its own setting).
    min_seconds : timing: after an untimed warm-up on up to 64 queries, all queries are searched
        repeatedly (at least once, at most 10 times) until ``min_seconds`` have been spent;
        ``seconds`` is the fastest run and ``qps = nq / seconds``. Recall comes from the first run
        (every run returns the same ids).

    With an IVFIndex, the result also reports its coarse quantizer (see :class:`RecallResult`):
    the top-1 agreement with exact assignment and the exact cells kept are measured against an
    exact search of the queries over all centroids; ``coarse_seconds`` times ``index.probe`` the
    same way as the search.
    """
    k = check_k(k)
    nprobes = _check_nprobes(nprobes)
    if not (isinstance(min_seconds, numbers.Real) and min_seconds >= 0):
        raise ValueError(f"min_seconds must be a number >= 0, got {min_seconds!r}")
    dim = getattr(index, "dim", None) or getattr(index, "d", None)
    q = as_matrix(queries, name="queries", dim=dim, allow_1d=True)
    if ground_truth is None:
        if database is None:
            raise ValueError("give the database (for exact search) or the ground_truth ids")
        _, gt = exact_ground_truth(q, database, k, num_threads=num_threads)
    else:
        gt = np.asarray(ground_truth)
        if (
            gt.dtype.kind not in "iu"
            or gt.ndim != 2
            or gt.shape[0] != q.shape[0]
            or gt.shape[1] < k
        ):
            raise ValueError(
                f"ground_truth must be integer ids of shape ({q.shape[0]}, >= {k}), got "
                f"{gt.dtype} {gt.shape}"
            )
        gt = gt[:, :k].astype(np.int64)
    from .index import IVFIndex

    ours = isinstance(index, IVFIndex)
    if ours:  # the exact nearest centroids, for the quantizer's agreement
        _, exact_cells = knn(q, index.centroids, min(max(nprobes), index.nlist), num_threads=num_threads)

    def timed(fn):
        """Fastest of repeated runs (at least one, at most 10, until min_seconds), first result."""
        out, dt, spent, runs = None, math.inf, 0.0, 0
        while runs < 1 or (spent < min_seconds and runs < 10):
            t0 = time.perf_counter()
            got = fn()
            t = time.perf_counter() - t0
            out = got if out is None else out
            dt, spent, runs = min(dt, t), spent + t, runs + 1
        return out, dt

    recalls, qps, secs, per_query, kept, coarse = [], [], [], [], [], []
    top1 = None
    for nprobe in nprobes:
        _search(index, q[:64], k, nprobe)
        (_, ids), dt = timed(lambda: _search(index, q, k, nprobe))
        r = recall_at_k(ids, gt, k)
        per_query.append(r)
        recalls.append(float(np.nanmean(r)) if np.isfinite(r).any() else float("nan"))
        secs.append(dt)
        qps.append(q.shape[0] / dt if dt > 0 else math.inf)
        if ours:
            (_, lists), ct = timed(lambda: index.probe(q, nprobe))
            coarse.append(ct)
            e = exact_cells[:, :nprobe]
            kept.append(float(np.nanmean(recall_at_k(lists, e, e.shape[1]))))
            if top1 is None:
                top1 = float(np.mean(lists[:, 0] == exact_cells[:, 0]))
    return RecallResult(
        k=k,
        n_queries=int(q.shape[0]),
        nprobes=nprobes,
        recall=recalls,
        qps=qps,
        seconds=secs,
        nlist=getattr(index, "nlist", None),
        per_query=np.stack(per_query),
        quantizer=index.quantizer if ours else None,
        quantizer_top1=top1,
        cells_kept=kept if ours else None,
        coarse_seconds=coarse if ours else None,
    )


def plot_recall(results: Mapping[str, RecallResult], path, *, title: Optional[str] = None) -> Path:
    """PNG with recall@k against nprobe (left) and QPS against recall (right), one line per
    labelled result (e.g. {"standard": r1, "paired": r2}). Written atomically with matplotlib's
    Agg canvas (no pyplot, no global backend change). Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .index import atomic_write

    if not results:
        raise ValueError("plot_recall() needs at least one result")
    for label, r in results.items():
        if not isinstance(r, RecallResult):
            raise TypeError(f"results[{label!r}] must be a RecallResult, got {type(r).__name__}")
    fig = Figure(figsize=(11, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ks = sorted({r.k for r in results.values()})
    kname = f"recall@{ks[0]}" if len(ks) == 1 else "recall@k"
    markers = "osD^vP*X"
    for j, (label, r) in enumerate(results.items()):
        m = markers[j % len(markers)]
        ax1.plot(r.nprobes, r.recall, marker=m, label=label)
        ax2.plot(r.recall, r.qps, marker=m, label=label)
        for x, y, p in zip(r.recall, r.qps, r.nprobes):
            ax2.annotate(str(p), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax1.set_xscale("log", base=2)
    ticks = sorted({p for r in results.values() for p in r.nprobes})
    ax1.set_xticks(ticks)
    ax1.set_xticklabels([str(t) for t in ticks])
    ax1.set_xlabel("nprobe")
    ax1.set_ylabel(kname)
    ax1.set_ylim(0, 1.02)
    ax1.grid(True, alpha=0.3)
    ax1.legend()
    ax2.set_yscale("log")
    ax2.set_xlabel(kname)
    ax2.set_ylabel("queries per second")
    ax2.grid(True, alpha=0.3)
    ax2.set_title("speed / quality (labels: nprobe)", fontsize=9)
    nq = sorted({r.n_queries for r in results.values()})
    fig.suptitle(title or f"{kname} against exact search ({', '.join(map(str, nq))} queries)")
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def modality_gap(images, captions, sample: int = 10_000, seed: int = 0) -> dict:
    """The modality gap of row-aligned image and caption embeddings (row i of each is one pair):

    - ``matched_cosine``: mean cosine of matched pairs;
    - ``random_cosine``: mean cosine over all unmatched pairs (i != j), computed exactly in O(n d)
      from the sums of the normalised rows;
    - ``mean_distance``: Euclidean distance between the means of the normalised images and of
      the normalised captions (the "modality gap" vector of Liang et al., 2022).

    Uses a seeded random sample of ``sample`` pairs when there are more. Inputs: arrays, or two
    row-aligned EmbeddingShards. (COCO-500 with CLIP ViT-B/16: 0.31, 0.16, 0.85.)
    """
    from .shards import EmbeddingShards, gather, sample_ids

    sample = check_k(sample, "sample")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(images, EmbeddingShards) or isinstance(captions, EmbeddingShards):
        if not (isinstance(images, EmbeddingShards) and isinstance(captions, EmbeddingShards)):
            raise TypeError("give two arrays or two EmbeddingShards")
        if images.ntotal != captions.ntotal:
            raise ValueError(
                f"images have {images.ntotal} rows, captions {captions.ntotal}: not row-aligned"
            )
        ids = sample_ids(images.ntotal, sample, seed)
        x, p = gather(images, ids), gather(captions, ids)
    else:
        x = as_matrix(images, name="images")
        p = as_matrix(captions, name="captions", dim=x.shape[1])
        if x.shape[0] != p.shape[0]:
            raise ValueError(
                f"images have {x.shape[0]} rows, captions {p.shape[0]}: modality_gap needs "
                "row-aligned pairs"
            )
        if x.shape[0] > sample:
            ids = sample_ids(x.shape[0], sample, seed)
            x, p = x[ids], p[ids]
    n = x.shape[0]
    if n < 2:
        raise ValueError("modality_gap needs at least 2 pairs")
    x = x.astype(np.float64)
    p = p.astype(np.float64)
    nx, np_ = np.linalg.norm(x, axis=1), np.linalg.norm(p, axis=1)
    if (nx == 0).any() or (np_ == 0).any():
        raise ValueError("some embeddings are all zeros; cosines are undefined for them")
    x /= nx[:, None]
    p /= np_[:, None]
    matched = np.einsum("ij,ij->i", x, p)
    sx, sp = x.sum(axis=0), p.sum(axis=0)
    random_mean = (float(sx @ sp) - float(matched.sum())) / (n * (n - 1))
    return {
        "n_pairs": int(n),
        "matched_cosine": float(matched.mean()),
        "matched_cosine_std": float(matched.std()),
        "random_cosine": random_mean,
        "mean_distance": float(np.linalg.norm(sx / n - sp / n)),
        "image_norm_mean": float(nx.mean()),
        "caption_norm_mean": float(np_.mean()),
    }
