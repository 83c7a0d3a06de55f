"""k-means and paired k-means estimators (scikit-learn conventions, native core)."""

from __future__ import annotations

import numbers

import numpy as np

from . import _core
from ._arrays import INT32_MAX, as_matrix, resolve_threads
from .search import knn

__all__ = ["KMeans", "PairedKMeans", "kmeans", "paired_kmeans"]


class KMeans:
    """Lloyd k-means on the fused GEMM + argmax kernel.

    Parameters
    ----------
    n_clusters : number of centroids.
    max_iter : Lloyd iterations (assignment + update). Stops early at a fixed point.
    init : "k-means++" (Arthur & Vassilvitskii 2007, on a seeded sample of max(8k, 4096) points),
        "random" (k distinct points), or an array (n_clusters, d) of initial centroids.
    seed : all randomness derives from it; the same seed gives bit-identical results for any
        ``num_threads`` and SIMD level.
    spherical : assign by inner product and L2-normalise centroids (cosine k-means, the default for
        CLIP embeddings). False: ordinary Euclidean k-means.
    max_points_per_centroid : train on a seeded sample of ``n_clusters * max_points_per_centroid``
        points when there are more (faiss's convention); ``labels_`` still covers every point.
    num_threads : None uses all cores (OMP_NUM_THREADS is honoured).
    verbose : print one line per iteration to stderr.

    Attributes
    ----------
    cluster_centers_ : float32 (n_clusters, d)
    labels_ : int64 (n,) nearest centroid of every training point for the final centroids.
    inertia_ : float, sum of squared distances of points to their centroid.
    n_iter_ : int, iterations run.
    objective_history_ : float64 (n_iter_,), sum of assignment scores per iteration (spherical:
        sum of cosines); non-decreasing.
    iteration_seconds_ : float64 (n_iter_,)
    """

    def __init__(self, n_clusters: int = 8, *, max_iter: int = 20, init="k-means++", seed: int = 0,
                 spherical: bool = True, max_points_per_centroid: int | None = None,
                 num_threads: int | None = None, verbose: bool = False):
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.init = init
        self.seed = seed
        self.spherical = spherical
        self.max_points_per_centroid = max_points_per_centroid
        self.num_threads = num_threads
        self.verbose = verbose

    # -- parameters ---------------------------------------------------------------------------
    def _check_params(self, n: int, d: int):
        k = self.n_clusters
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
            raise TypeError(f"n_clusters must be an integer, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"n_clusters must be >= 1, got {k}")
        if k > n:
            raise ValueError(f"n_clusters={k} is larger than the number of samples ({n}); use at most {n}")
        mi = self.max_iter
        if isinstance(mi, (bool, np.bool_)) or not isinstance(mi, numbers.Integral) or not 1 <= mi <= INT32_MAX:
            raise ValueError(f"max_iter must be an integer in [1, {INT32_MAX}], got {mi!r}")
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        mppc = self.max_points_per_centroid
        if mppc is not None and (isinstance(mppc, bool) or not isinstance(mppc, numbers.Integral) or mppc < 1):
            raise ValueError(f"max_points_per_centroid must be None or a positive integer, got {mppc!r}")
        init_centroids = None
        if isinstance(self.init, str):
            if self.init not in ("k-means++", "random"):
                raise ValueError(f"init must be 'k-means++', 'random' or an array, got {self.init!r}")
            init = self.init
        else:
            init_centroids = as_matrix(self.init, name="init", dim=d)
            if init_centroids.shape[0] != k:
                raise ValueError(f"init has {init_centroids.shape[0]} rows but n_clusters is {k}")
            init = "given"
        if mppc is not None and int(mppc) * int(k) >= n:  # the sample would be every point
            mppc = None
        return int(k), init, init_centroids, int(seed) & 0xFFFFFFFFFFFFFFFF, int(mppc or 0)

    def _run(self, assign, assign_ids, update):
        k, init, init_centroids, seed, mppc = self._check_params(update.shape[0], update.shape[1])
        r = _core.kmeans_fit(assign, assign_ids, update, k, int(self.max_iter), bool(self.spherical), init,
                             init_centroids, seed, mppc, resolve_threads(self.num_threads), bool(self.verbose))
        self.cluster_centers_ = r["centroids"]
        self.labels_ = r["labels"]
        self.inertia_ = float(r["inertia"])
        self.n_iter_ = int(r["n_iter"])
        self.objective_history_ = np.asarray(r["objective"], dtype=np.float64)
        self.iteration_seconds_ = np.asarray(r["iteration_seconds"], dtype=np.float64)
        self.n_features_in_ = update.shape[1]
        return self

    # -- estimator API --------------------------------------------------------------------------
    def fit(self, x, y=None):
        """Fits on x (n, d); returns self."""
        x = as_matrix(x, name="x")
        return self._run(x, None, x)

    def predict(self, x) -> np.ndarray:
        """Index of the nearest centroid (inner product when spherical) of every row, int64."""
        self._check_fitted()
        x = as_matrix(x, name="x", dim=self.n_features_in_, allow_1d=True, allow_empty=True)
        labels, _ = _core.kmeans_assign(x, self.cluster_centers_, bool(self.spherical),
                                        resolve_threads(self.num_threads))
        return labels

    def fit_predict(self, x, y=None) -> np.ndarray:
        return self.fit(x).labels_

    def _check_fitted(self):
        if not hasattr(self, "cluster_centers_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit() first")

    def __repr__(self):
        return f"{type(self).__name__}(n_clusters={self.n_clusters}, max_iter={self.max_iter}, seed={self.seed})"


class PairedKMeans(KMeans):
    """Paired k-means (SPEC §1): centroids in caption space for cross-modal IVF search.

    ``fit(images, captions, pairing)``: every caption ``p_i`` is represented in the assignment step
    by an image ``q(p_i)`` and contributes ``p_i`` itself to its centroid, which is L2-normalised.

    pairing="nearest": ``q(p_i)`` is the image with the highest inner product with ``p_i`` over all
    images (exact search; an image may serve several captions). pairing="given": ``images[i]`` is
    the partner of ``captions[i]``.

    Extra attribute ``pairs_``: int64 (n_captions,), the image index used for each caption.
    ``labels_[i]`` is the cluster of caption i (via its image ``q(p_i)``).
    """

    def fit(self, images, captions=None, pairing: str = "nearest"):
        if captions is None:
            raise TypeError("PairedKMeans.fit needs images and captions: fit(images, captions, pairing=...)")
        images = as_matrix(images, name="images")
        captions = as_matrix(captions, name="captions", dim=images.shape[1])
        if pairing == "nearest":
            _, ids = knn(captions, images, 1, num_threads=self.num_threads)
            pairs = np.ascontiguousarray(ids[:, 0])
        elif pairing == "given":
            if images.shape[0] != captions.shape[0]:
                raise ValueError(f"pairing='given' needs one image per caption, got {images.shape[0]} images "
                                 f"and {captions.shape[0]} captions")
            pairs = np.arange(captions.shape[0], dtype=np.int64)
        else:
            raise ValueError(f"pairing must be 'nearest' or 'given', got {pairing!r}")
        self.pairs_ = pairs
        return self._run(images, pairs, captions)

    def fit_predict(self, images, captions=None, pairing: str = "nearest"):
        return self.fit(images, captions, pairing).labels_


def kmeans(x, n_clusters: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Functional form: returns (cluster_centers, labels). Keyword arguments as for KMeans."""
    est = KMeans(n_clusters, **kwargs).fit(x)
    return est.cluster_centers_, est.labels_


def paired_kmeans(images, captions, n_clusters: int, *, pairing: str = "nearest", **kwargs):
    """Functional form of PairedKMeans: returns (cluster_centers, labels, pairs)."""
    est = PairedKMeans(n_clusters, **kwargs).fit(images, captions, pairing=pairing)
    return est.cluster_centers_, est.labels_, est.pairs_
