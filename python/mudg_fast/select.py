"""Sample selection (docs/method.rst §4-§5): similarity filter and per-class k-means selection,
native core."""

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
    if n and a.max() > np.iinfo(np.int64).max:
        raise ValueError(f"label {a.max()} does not fit in int64")
    if n_classes is not None and n and a.max() >= n_classes:
        raise ValueError(f"label {a.max()} out of range: there are {n_classes} prototypes")
    return np.ascontiguousarray(a, dtype=np.int64)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def check_threshold(threshold) -> float:
    """A real, finite similarity threshold as a float (TypeError / ValueError otherwise)."""
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold must be a real number, got {type(threshold).__name__}")
    if not np.isfinite(float(threshold)):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    return float(threshold)


def similarity_to_prototypes(embeddings, labels, prototypes, *, num_threads: int | None = None) -> np.ndarray:
    """float32 (n,): inner product of each embedding with its label's prototype."""
    p = as_matrix(prototypes, name="prototypes")
    x = as_matrix(embeddings, name="embeddings", dim=p.shape[1], allow_empty=True)
    lab = _labels(labels, x.shape[0], p.shape[0])
    return _core.similarity_to_prototypes(x, lab, p, resolve_threads(num_threads))


def filter_by_similarity(embeddings, labels, prototypes, threshold: float = 0.25, *,
                         num_threads: int | None = None) -> np.ndarray:
    """Boolean mask (n,): keep image i when <embedding_i, prototype[label_i]> > threshold
    (docs/method.rst §4, filtering; the prototypes are the unaugmented class-prompt embeddings,
    default threshold 0.25)."""
    threshold = check_threshold(threshold)
    sim = similarity_to_prototypes(embeddings, labels, prototypes, num_threads=num_threads)
    with np.errstate(over="ignore"):      # |threshold| beyond float32 compares as +-inf, correctly
        return sim > threshold


def select_by_clustering(embeddings, labels, k_per_class: int, strategy: str = "random", seed: int = 0, *,
                         max_iter: int = 20, spherical: bool = True, num_threads: int | None = None) -> np.ndarray:
    """Diverse subset per class (docs/method.rst §5): classes with more than ``k_per_class`` images are
    clustered with k-means (k-means++ init, ``max_iter`` iterations) into ``k_per_class`` clusters
    and one image per non-empty cluster is kept — a seeded random member (``strategy="random"``,
    as the authors do) or the member nearest the centroid (``"nearest"``); smaller classes keep
    every image. Classes run in parallel; the result is the same for any thread count.

    Returns int64 row indices into ``embeddings``, ascending.
    """
    if not _is_int(k_per_class) or k_per_class < 1:
        raise ValueError(f"k_per_class must be a positive integer, got {k_per_class!r}")
    if not isinstance(strategy, str) or strategy not in ("random", "nearest"):
        raise ValueError(f"strategy must be 'random' or 'nearest', got {strategy!r}")
    if not _is_int(seed) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    if not _is_int(max_iter) or not 0 <= max_iter < 2**31:
        raise ValueError(f"max_iter must be an integer in [0, 2**31), got {max_iter!r}")
    x = as_matrix(embeddings, name="embeddings", allow_empty=True)
    lab = _labels(labels, x.shape[0])
    # A class of m <= k_per_class rows keeps every row, so any k >= n selects the same rows.
    k = min(int(k_per_class), max(x.shape[0], 1))
    return _core.select_by_clustering(x, lab, k, strategy, int(seed), int(max_iter),
                                      bool(spherical), resolve_threads(num_threads))
