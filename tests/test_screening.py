"""int8 screening must return exactly what the plain fp32 search returns."""

import numpy as np
import pytest
from conftest import available_simd_levels, unit_rows

import mudg_fast
from mudg_fast import _core


@pytest.fixture
def screening():
    before = _core.screening_mode()

    def set_mode(mode):
        _core.set_screening(mode)

    yield set_mode
    _core.set_screening(before)


def both(fn, screening):
    screening(0)
    plain = fn()
    screening(1)
    screened = fn()
    return plain, screened


@pytest.mark.parametrize("level", available_simd_levels())
@pytest.mark.parametrize("k", [1, 5, 64])
@pytest.mark.parametrize("kind", ["random", "clustered", "duplicates", "ties"])
def test_screened_knn_equals_plain(rng, screening, simd_level_restored, level, k, kind):
    mudg_fast.set_simd_level(level)
    d = 40
    if kind == "random":
        xb, xq = unit_rows(rng, 3000, d), unit_rows(rng, 500, d)
    elif kind == "clustered":
        xb = mudg_fast.datasets.clustered_unit_vectors(3000, d, n_clusters=30, seed=1)
        xq = mudg_fast.datasets.clustered_unit_vectors(500, d, n_clusters=30, seed=2, centre_seed=1)
    elif kind == "duplicates":
        xb = np.repeat(unit_rows(rng, 300, d), 10, axis=0)
        xq = np.repeat(unit_rows(rng, 50, d), 10, axis=0)
    else:  # small integers: many exactly equal scores
        xb = rng.integers(-2, 3, (3000, d)).astype(np.float32)
        xq = rng.integers(-2, 3, (500, d)).astype(np.float32)
    plain, screened = both(lambda: mudg_fast.knn(xq, xb, k), screening)
    np.testing.assert_array_equal(plain[0], screened[0])
    np.testing.assert_array_equal(plain[1], screened[1])


def test_screened_large_database_path(rng, screening):
    xb = mudg_fast.datasets.clustered_unit_vectors(70_000, 256, n_clusters=200, seed=3)
    xq = mudg_fast.datasets.clustered_unit_vectors(300, 256, n_clusters=200, seed=4, centre_seed=3)
    for k in (1, 10):
        plain, screened = both(lambda: mudg_fast.knn(xq, xb, k), screening)
        np.testing.assert_array_equal(plain[1], screened[1])
        np.testing.assert_array_equal(plain[0], screened[0])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_screened_kmeans_with_repeated_pairs(rng, screening, threads):
    """Paired k-means assigns through q(p): many captions share an image (repeated query rows)."""
    images = unit_rows(rng, 4000, 48)
    captions = unit_rows(rng, 12_000, 48)
    plain, screened = both(lambda: mudg_fast.PairedKMeans(60, seed=3, max_iter=6, num_threads=threads)
                           .fit(images, captions), screening)
    assert len(np.unique(plain.pairs_)) < len(plain.pairs_)
    np.testing.assert_array_equal(plain.cluster_centers_, screened.cluster_centers_)
    np.testing.assert_array_equal(plain.labels_, screened.labels_)
    np.testing.assert_array_equal(plain.objective_history_, screened.objective_history_)


def test_screened_ivf_add_and_coarse_search(rng, screening):
    xb = mudg_fast.datasets.clustered_unit_vectors(20_000, 64, n_clusters=100, seed=5)
    xq = mudg_fast.datasets.clustered_unit_vectors(400, 64, n_clusters=100, seed=6, centre_seed=5)
    cent = mudg_fast.KMeans(128, seed=0, max_iter=5).fit(xb).cluster_centers_

    def build_and_search():
        ix = mudg_fast.IVFIndex(64, 128).set_centroids(cent)
        ix.add(xb)
        return ix.list_sizes(), ix.search(xq, 10, nprobe=7)

    (sz0, (s0, i0)), (sz1, (s1, i1)) = both(build_and_search, screening)
    np.testing.assert_array_equal(sz0, sz1)
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_array_equal(s0, s1)
