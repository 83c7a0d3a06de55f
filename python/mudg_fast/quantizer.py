"""Coarse quantizers of :class:`~mudg_fast.IVFIndex`: which list a vector joins (``add``) and which
lists a query visits (``probe`` / ``search``), and how well a fast one agrees with exact assignment.

``"flat"`` scores every centroid: the exact nearest lists, at ``nlist * dim`` multiply-adds per
vector. ``"two_level"`` groups the centroids into ``cells`` cells (a spherical k-means of the
centroids themselves; each centroid joins the cell of its nearest centre), scores every cell
centre, then only the centroids of the vector's ``probe`` best cells: about
``cells + probe * nlist / cells`` scores per vector (nlist 131072, cells 362, probe 12: ~6 300,
20x fewer than flat). ``probe`` is the accuracy parameter: ``probe >= cells`` scans every centroid
and equals exact assignment. The answer is deterministic (it does not depend on threads or the
SIMD level). faiss expresses it as an ``IndexIVFFlat`` over the centroids used as the quantizer of
the IVF index (``to_faiss`` exports it so).

``"auto"`` picks two-level from ``TWO_LEVEL_MIN_LISTS`` = 16384 lists: below that the exact coarse
stage costs little next to the list scans (nlist 8192, d 768: ~6 million multiply-adds per vector)
and is exact.
"""

from __future__ import annotations

import numbers
import time

import numpy as np

from . import _core

__all__ = ["QUANTIZERS", "TWO_LEVEL_MIN_LISTS", "quantizer_defaults", "resolve_quantizer",
           "quantizer_agreement"]

QUANTIZERS = ("flat", "two_level", "auto")
#: quantizer="auto" uses a two-level quantizer from this many lists (read from the core).
TWO_LEVEL_MIN_LISTS = int(_core.two_level_quantizer_min_lists)
#: The fewest lists a two-level quantizer accepts.
TWO_LEVEL_MIN_NLIST = int(_core.two_level_quantizer_min_nlist)


def quantizer_defaults(nlist: int, cells: int | None = None) -> tuple[int, int]:
    """(cells, probe) a two-level quantizer uses for ``nlist`` lists when they are not given (see
    the module docs); with ``cells`` given, the default probe for that many cells."""
    cells = int(_core.two_level_quantizer_default_cells(int(nlist))) if cells is None else int(cells)
    return cells, int(_core.two_level_quantizer_default_probe(cells))


def _check_optional_int(name: str, v, lo: int, hi: int | None = None):
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an integer or None, got {type(v).__name__}")
    v = int(v)
    if v < lo or (hi is not None and v > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {rng}, got {v}")
    return int(v)


def resolve_quantizer(nlist: int, quantizer: str = "auto", cells=None, probe=None) -> tuple[str, int | None, int | None]:
    """Validates a quantizer choice for ``nlist`` lists: returns ("flat", None, None) or
    ("two_level", cells, probe) with the defaults filled in. Raises ValueError / TypeError with a
    message that says what to change."""
    if not isinstance(quantizer, str) or quantizer not in QUANTIZERS:
        raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {quantizer!r}")
    probe = _check_optional_int("quantizer_probe", probe, 1, 2**31 - 1)
    cells = _check_optional_int("quantizer_cells", cells, 1, nlist)
    if quantizer == "auto":
        quantizer = "two_level" if nlist >= TWO_LEVEL_MIN_LISTS else "flat"
    if quantizer == "flat":
        return "flat", None, None
    if nlist < TWO_LEVEL_MIN_NLIST:
        raise ValueError(f"nlist={nlist} is too small for a two-level quantizer (it needs at least "
                         f"{TWO_LEVEL_MIN_NLIST} lists); use quantizer='flat'")
    cells, default_probe = quantizer_defaults(nlist, cells)
    return "two_level", cells, default_probe if probe is None else probe


def quantizer_agreement(index, x, *, nprobe: int = 1, num_threads=None) -> dict:
    """How well ``index``'s coarse quantizer agrees with exact assignment on the rows of ``x``:

    - ``top1``: fraction of rows whose first list is the exact nearest centroid (what ``add``
      decides);
    - ``cells_kept``: fraction of the exact ``nprobe`` nearest centroids among the ``nprobe`` lists
      the quantizer returns (what ``search`` visits), averaged over rows;
    - ``seconds`` / ``exact_seconds``: the quantizer's and the exact coarse stage's time for x.

    Measured, never assumed: the exact nearest centroids come from exact search over all of them
    (``nlist * dim`` per row). A flat quantizer gives 1.0 by construction of the same search."""
    from .search import knn

    nprobe = int(nprobe)
    t0 = time.perf_counter()
    _, got = index.probe(x, nprobe)
    t1 = time.perf_counter()
    _, exact = knn(x, index.centroids, min(nprobe, index.nlist), num_threads=num_threads)
    t2 = time.perf_counter()
    n = x.shape[0]
    top1 = float(np.mean(got[:, 0] == exact[:, 0])) if n else float("nan")
    kept = 0
    for a in range(0, n, 4096):
        g, e = got[a:a + 4096], exact[a:a + 4096]
        kept += int(((e[:, :, None] == g[:, None, :]) & (e[:, :, None] >= 0)).any(axis=2).sum())
    total = int((exact >= 0).sum())
    return {"quantizer": index.quantizer, "nprobe": nprobe, "n": int(n), "top1": top1,
            "cells_kept": kept / total if total else float("nan"), "seconds": t1 - t0, "exact_seconds": t2 - t1}
