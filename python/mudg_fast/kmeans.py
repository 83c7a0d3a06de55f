"""k-means and paired k-means estimators (scikit-learn estimators, native core).

With scikit-learn installed they are scikit-learn estimators (``clone``, ``Pipeline``,
``GridSearchCV``, ``check_estimator``); without it they keep the same protocol on numpy alone
(see ``_sklearn_protocol``).
"""

from __future__ import annotations

import numbers

import numpy as np

from . import _core
from ._arrays import INT32_MAX, as_matrix, resolve_threads
from ._sklearn_protocol import (BaseEstimator, ClusterMixin, TransformerMixin, check_fitted, check_input,
                                record_features)
from .search import knn

__all__ = ["KMeans", "PairedKMeans", "kmeans", "paired_kmeans"]

# Rows per block when transform/score compute float64 distances (bounds their temporary memory).
_DIST_BLOCK = 4096


class KMeans(ClusterMixin, TransformerMixin, BaseEstimator):
    """Lloyd k-means on the fused GEMM + argmax kernel; a scikit-learn estimator.

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

    The constructor only stores its arguments (scikit-learn's rule); ``fit`` checks them.

    Attributes
    ----------
    cluster_centers_ : float32 (n_clusters, d)
    labels_ : int64 (n,) nearest centroid of every training point for the final centroids.
    inertia_ : float, sum of squared distances of points to their centroid.
    n_iter_ : int, iterations run.
    objective_history_ : float64 of shape ``(n_iter_,)``: sum of assignment scores per iteration
        (spherical: sum of cosines); non-decreasing.
    iteration_seconds_ : float64 of shape ``(n_iter_,)``, seconds per iteration
    n_features_in_ : int, the dimension seen by ``fit``.
    feature_names_in_ : object array of shape ``(n_features_in_,)``, the column names when ``fit``
        was given a data frame with string column names.

    Methods other than ``fit`` raise ``NotFittedError`` (scikit-learn's when it is installed; also a
    ``RuntimeError``) before ``fit``.
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
            raise ValueError(f"n_clusters={k} is larger than the number of samples (n_samples={n}); "
                             f"use at most {n}")
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

    def _run(self, x, assign, assign_ids, update):
        k, init, init_centroids, seed, mppc = self._check_params(update.shape[0], update.shape[1])
        r = _core.kmeans_fit(assign, assign_ids, update, k, int(self.max_iter), bool(self.spherical), init,
                             init_centroids, seed, mppc, resolve_threads(self.num_threads), bool(self.verbose))
        self.cluster_centers_ = r["centroids"]
        self.labels_ = r["labels"]
        self.inertia_ = float(r["inertia"])
        self.n_iter_ = int(r["n_iter"])
        self.objective_history_ = np.asarray(r["objective"], dtype=np.float64)
        self.iteration_seconds_ = np.asarray(r["iteration_seconds"], dtype=np.float64)
        record_features(self, x, update.shape[1])
        return self

    # -- estimator API --------------------------------------------------------------------------
    def fit(self, x, y=None):
        """Fits on x (n, d); y is ignored. Returns self."""
        xm = check_input(self, x, fitting=True)
        return self._run(x, xm, None, xm)

    def _assign(self, x):
        xm = check_input(self, x, fitting=False)
        labels, scores = _core.kmeans_assign(xm, self.cluster_centers_, bool(self.spherical),
                                             resolve_threads(self.num_threads))
        return xm, labels, scores

    def predict(self, x) -> np.ndarray:
        """Index of the nearest centroid (inner product when spherical) of every row of x (n, d),
        int64."""
        return self._assign(x)[1]

    def fit_predict(self, x, y=None) -> np.ndarray:
        """``fit(x).labels_``."""
        return self.fit(x).labels_

    def transform(self, x) -> np.ndarray:
        """float32 (n, n_clusters): for every row of x and every centroid, the score the clustering
        uses. Spherical: the inner product (the largest marks the row's cluster; the same values
        ``predict`` compares). Euclidean: the distance (the smallest marks the cluster; computed in
        float64, then rounded)."""
        xm = check_input(self, x, fitting=False)
        c = self.cluster_centers_
        out = np.empty((xm.shape[0], c.shape[0]), dtype=np.float32)
        if self.spherical:
            # The exact search lists every centroid's inner product; put them back in centroid order.
            scores, ids = knn(xm, c, c.shape[0], num_threads=self.num_threads)
            np.put_along_axis(out, ids, scores, axis=1)
            return out
        c64 = c.astype(np.float64)
        c_sq = np.einsum("ij,ij->i", c64, c64)
        for start in range(0, xm.shape[0], _DIST_BLOCK):
            xb = xm[start:start + _DIST_BLOCK].astype(np.float64)
            d2 = np.einsum("ij,ij->i", xb, xb)[:, None] - 2.0 * (xb @ c64.T) + c_sq[None, :]
            out[start:start + _DIST_BLOCK] = np.sqrt(np.maximum(d2, 0.0))
        return out

    def score(self, x, y=None) -> float:
        """The clustering objective of x (n, d) for the fitted centroids, as a number where higher is
        better (scikit-learn's convention; y is ignored). Spherical: the sum over rows of the inner
        product with the assigned centroid (what spherical k-means maximises). Euclidean: minus the
        sum of squared distances to the assigned centroid (minus the inertia of x)."""
        xm, labels, scores = self._assign(x)
        if self.spherical:
            return float(scores.astype(np.float64).sum())
        total = 0.0
        for start in range(0, xm.shape[0], _DIST_BLOCK):
            xb = xm[start:start + _DIST_BLOCK].astype(np.float64)
            diff = xb - self.cluster_centers_[labels[start:start + _DIST_BLOCK]].astype(np.float64)
            total += float(np.einsum("ij,ij->", diff, diff))
        return -total

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Names of the ``transform`` columns: "<class name in lower case><centroid index>"."""
        check_fitted(self, "cluster_centers_")
        if input_features is not None:
            given = np.asarray(input_features, dtype=object)
            fitted = getattr(self, "feature_names_in_", None)
            if fitted is not None and (len(given) != len(fitted) or not (given == fitted).all()):
                raise ValueError("input_features is not equal to feature_names_in_")
            if len(given) != self.n_features_in_:
                raise ValueError(f"input_features should have length equal to number of features "
                                 f"({self.n_features_in_}), got {len(given)}")
        prefix = type(self).__name__.lower()
        return np.asarray([f"{prefix}{i}" for i in range(self.cluster_centers_.shape[0])], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]  # the core computes in float32
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"preserves_dtype": [np.float32]}


class PairedKMeans(KMeans):
    """Paired k-means: centroids in caption space for cross-modal IVF search.

    ``fit(images, captions, pairing)``: every caption ``p_i`` is represented in the assignment step
    by an image ``q(p_i)`` and contributes ``p_i`` itself to its centroid, which is L2-normalised.

    pairing="nearest": ``q(p_i)`` is the image with the highest inner product with ``p_i`` over all
    images (exact search; an image may serve several captions). pairing="given": ``images[i]`` is
    the partner of ``captions[i]``.

    Extra attribute ``pairs_``: int64 (n_captions,), the image index used for each caption.
    ``labels_[i]`` is the cluster of caption i (via its image ``q(p_i)``). ``predict``,
    ``transform`` and ``score`` take rows of either modality (they share the dimension) and score
    them against the caption-space centroids, like ``KMeans``'s.
    """

    def fit(self, images, captions=None, pairing: str = "nearest"):
        if captions is None:
            raise TypeError("PairedKMeans.fit needs images and captions: fit(images, captions, pairing=...)")
        img = check_input(self, images, fitting=True, name="images")
        cap = captions if hasattr(captions, "toarray") else np.asarray(captions)  # check_input refuses sparse
        if isinstance(cap, np.ndarray) and cap.ndim != 2:
            raise ValueError(f"captions must be a 2-D array of shape (n_captions, {img.shape[1]}), got shape "
                             f"{cap.shape}; PairedKMeans.fit takes the caption embeddings as its second argument")
        cap = check_input(self, cap, fitting=True, name="captions", dim=img.shape[1])
        if pairing == "nearest":
            _, ids = knn(cap, img, 1, num_threads=self.num_threads)
            pairs = np.ascontiguousarray(ids[:, 0])
        elif pairing == "given":
            if img.shape[0] != cap.shape[0]:
                raise ValueError(f"pairing='given' needs one image per caption, got {img.shape[0]} images "
                                 f"and {cap.shape[0]} captions")
            pairs = np.arange(cap.shape[0], dtype=np.int64)
        else:
            raise ValueError(f"pairing must be 'nearest' or 'given', got {pairing!r}")
        self._run(images, img, pairs, cap)
        self.pairs_ = pairs
        return self

    def fit_predict(self, images, captions=None, pairing: str = "nearest"):
        """``fit(images, captions, pairing).labels_`` (one label per caption)."""
        return self.fit(images, captions, pairing).labels_


def kmeans(x, n_clusters: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Functional form: returns (cluster_centers, labels). Keyword arguments as for KMeans."""
    est = KMeans(n_clusters, **kwargs).fit(x)
    return est.cluster_centers_, est.labels_


def paired_kmeans(images, captions, n_clusters: int, *, pairing: str = "nearest", **kwargs):
    """Functional form of PairedKMeans: returns (cluster_centers, labels, pairs)."""
    est = PairedKMeans(n_clusters, **kwargs).fit(images, captions, pairing=pairing)
    return est.cluster_centers_, est.labels_, est.pairs_
