"""Exact maximum-inner-product search."""

from __future__ import annotations

import numpy as np

from . import _core
from ._arrays import as_matrix, check_k, resolve_threads

__all__ = ["knn"]


def knn(queries, database, k: int, *, num_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product (cosine for L2-normalised inputs).

    Parameters
    ----------
    queries : array (nq, d) or (d,)
    database : array (n, d)
    k : number of neighbours. ``k > n`` is allowed: missing slots are padded with ``(-inf, -1)``.

    Returns
    -------
    scores : float32 (nq, k), best first
    ids : int64 (nq, k); equal scores go to the lower id.

    Memory stays bounded whatever ``n``: the database is streamed block by block.
    """
    k = check_k(k)
    db = as_matrix(database, name="database")
    q = as_matrix(queries, name="queries", dim=db.shape[1], allow_1d=True, allow_empty=True)
    return _core.knn(q, db, k, resolve_threads(num_threads))
