"""Retrieval with augmented label prompts and rank-vote pseudo-labelling (docs/method.rst §3)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from . import _core
from ._arrays import resolve_threads

__all__ = ["combine_retrievals", "CombinedRetrievals"]


@dataclass
class CombinedRetrievals:
    """Unique retrieved ids (ascending) with their pseudo-labels.

    ids : int64 (n,); labels : int64 (n,) class index; votes : float64 (n,) the winning class's
    sum of (K - rank); best_score : float32 (n,) highest retrieval similarity of the id among the
    winning class's queries; n_tied : int64 (n,) classes tied at the top vote (1 = no tie).
    """

    ids: np.ndarray
    labels: np.ndarray
    votes: np.ndarray
    best_score: np.ndarray
    n_tied: np.ndarray

    def __len__(self):
        return len(self.ids)


def combine_retrievals(ids, scores=None, seed: int = 0, *, return_details: bool = False,
                       num_threads: int | None = None):
    """Rank voting over m augmentations x C classes x K neighbours.

    ids : int (m, C, K) retrieved source ids, rank 0 = best within each query's list; negative ids
        (search padding) are ignored. scores : float (m, C, K) or None (only reported).

    A source id retrieved for several classes gets the class with the highest sum of (K - rank)
    over its appearances; ties are broken uniformly at random from an RNG seeded by (seed, id).

    Returns (ids, labels, votes) — unique ids ascending, their class, and the winning vote — or a
    CombinedRetrievals with more detail when ``return_details``.
    """
    a = np.asarray(ids)
    if a.dtype.kind not in "iu":
        raise TypeError(f"ids must be an integer array, got dtype {a.dtype}")
    if a.ndim != 3 or 0 in a.shape:
        raise ValueError(f"ids must have shape (m, C, K) with no empty axis, got {a.shape}")
    if a.dtype.kind == "u" and a.max() > np.iinfo(np.int64).max:
        raise ValueError(f"id {a.max()} does not fit in int64")
    a = np.ascontiguousarray(a, dtype=np.int64)
    s = None
    if scores is not None:
        s = np.asarray(scores)
        if s.dtype.kind not in "fiu" or s.dtype == np.bool_:
            raise TypeError(f"scores must be a real numeric array, got dtype {s.dtype}")
        if s.shape != a.shape:
            raise ValueError(f"scores must have the same shape as ids {a.shape}, got {s.shape}")
        s = np.ascontiguousarray(s, dtype=np.float32)
        if np.isnan(s).any():
            raise ValueError("scores contain NaN; the best score of an id would be undefined")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    r = CombinedRetrievals(*_core.combine_retrievals(a, s, int(seed), resolve_threads(num_threads)))
    return r if return_details else (r.ids, r.labels, r.votes)
