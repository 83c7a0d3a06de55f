"""Sample selection (SPEC §4): similarity filter and per-class k-means selection, native core."""

from __future__ import annotations

import numbers

import numpy as np

from . import _core
from ._arrays import as_matrix, resolve_threads

__all__ = ["filter_by_similarity", "similarity_to_prototypes", "select_by_clustering"]


def _labels(labels, n: int, n_classes: int | None = None) -> np.ndarray:
    a = np.asarray(labels)
    if a.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {a.dtype}")
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},), got {a.shape}")
    if n and a.min() < 0:
        raise ValueError(f"labels must be >= 0, got {a.min()}")
    if n_classes is not None and n and a.max() >= n_classes:
        raise ValueError(f"label {a.max()} out of range: there are {n_classes} prototypes")
    return np.ascontiguousarray(a, dtype=np.int64)


def similarity_to_prototypes(embeddings, labels, prototypes, *, num_threads: int | None = None) -> np.ndarray:
    """float32 (n,): inner product of each embedding with its label's prototype."""
    p = as_matrix(prototypes, name="prototypes")
    x = as_matrix(embeddings, name="embeddings", dim=p.shape[1], allow_empty=True)
    lab = _labels(labels, x.shape[0], p.shape[0])
    return _core.similarity_to_prototypes(x, lab, p, resolve_threads(num_threads))


def filter_by_similarity(embeddings, labels, prototypes, threshold: float = 0.25, *,
                         num_threads: int | None = None) -> np.ndarray:
    """Boolean mask (n,): keep image i when <embedding_i, prototype[label_i]> > threshold (SPEC §4.1;
    the prototypes are the unaugmented class-prompt embeddings, default threshold 0.25)."""
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    return similarity_to_prototypes(embeddings, labels, prototypes, num_threads=num_threads) > threshold


def select_by_clustering(embeddings, labels, k_per_class: int, strategy: str = "random", seed: int = 0, *,
                         max_iter: int = 20, spherical: bool = True, num_threads: int | None = None) -> np.ndarray:
    """Diverse subset per class (SPEC §4.2): classes with more than ``k_per_class`` images are
    clustered with k-means (k-means++ init, ``max_iter`` iterations) into ``k_per_class`` clusters
    and one image per non-empty cluster is kept — a seeded random member (``strategy="random"``,
    as the authors do) or the member nearest the centroid (``"nearest"``); smaller classes keep
    every image. Classes run in parallel; the result is the same for any thread count.

    Returns int64 row indices into ``embeddings``, ascending.
    """
    if isinstance(k_per_class, bool) or not isinstance(k_per_class, numbers.Integral) or k_per_class < 1:
        raise ValueError(f"k_per_class must be a positive integer, got {k_per_class!r}")
    if strategy not in ("random", "nearest"):
        raise ValueError(f"strategy must be 'random' or 'nearest', got {strategy!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    x = as_matrix(embeddings, name="embeddings", allow_empty=True)
    lab = _labels(labels, x.shape[0])
    return _core.select_by_clustering(x, lab, int(k_per_class), strategy, int(seed), int(max_iter),
                                      bool(spherical), resolve_threads(num_threads))
