"""Two-level k-means: numpy references for the allotment, the assignment and the paired update;
equality with flat k-means at one coarse cluster; determinism; parameter errors."""

import numpy as np
import pytest
from conftest import available_simd_levels, unit_rows

import mudg_fast
from mudg_fast import _core


def numpy_allot(sizes, k):
    """Largest-remainder allotment, written out plainly: quota k * n_c / N, floors raised to 1 for
    non-empty clusters, then one more for the largest remainders (never beyond a cluster's size),
    or one fewer for the most over-served (never below 1). Ties: the lower cluster index wins."""
    sizes = [int(s) for s in sizes]
    total = sum(sizes)
    a = [max(1, k * s // total) if s else 0 for s in sizes]
    lack = lambda c: k * sizes[c] - a[c] * total  # noqa: E731  (N times the unmet quota)
    while sum(a) < k:
        c = max((c for c in range(len(sizes)) if sizes[c] and a[c] < sizes[c]), key=lambda c: (lack(c), -c))
        a[c] += 1
    while sum(a) > k:
        c = min((c for c in range(len(sizes)) if a[c] > 1), key=lambda c: (lack(c), -c))
        a[c] -= 1
    return a


def clustered(rng, n, d, centres, spread=0.25):
    c = unit_rows(rng, centres, d)
    x = c[rng.integers(0, centres, n)] + spread * unit_rows(rng, n, d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def groups(km):
    """First centroid row of each coarse cluster (length n_coarse + 1)."""
    return np.concatenate([[0], np.cumsum(km.coarse_counts_)])


def hierarchical_labels(x, km):
    """numpy reference of a two-level fit's labels: nearest coarse centre among those that own
    centroids, then the nearest of its centroids (lowest index on ties)."""
    x64 = x.astype(np.float64)
    first = groups(km)
    live = np.nonzero(km.coarse_counts_)[0]
    coarse = live[np.argmax(x64 @ km.coarse_centers_[live].T.astype(np.float64), axis=1)]
    out = np.empty(len(x), np.int64)
    for c in live:
        m = coarse == c
        sub = km.cluster_centers_[first[c]:first[c + 1]].astype(np.float64)
        out[m] = first[c] + np.argmax(x64[m] @ sub.T, axis=1)
    return out


# --- the allotment -----------------------------------------------------------------------------

@pytest.mark.parametrize("case", range(40))
def test_allotment_matches_numpy_reference(case):
    rng = np.random.default_rng(case)
    m = int(rng.integers(1, 40))
    sizes = rng.integers(0, 60, m) * (rng.random(m) < 0.9)  # some empty clusters
    if case % 5 == 0:
        sizes = rng.zipf(1.5, m).clip(0, 5000)  # very unequal sizes
    if sizes.sum() == 0:
        sizes[0] = 1
    nonempty, total = int((sizes > 0).sum()), int(sizes.sum())
    for k in {nonempty, (nonempty + total) // 2, total, int(rng.integers(nonempty, total + 1))}:
        got = _core.allot_sub_clusters([int(s) for s in sizes], k)
        assert got == numpy_allot(sizes, k), (list(sizes), k)
        assert sum(got) == k
        assert all((g >= 1) == (s > 0) and g <= s for g, s in zip(got, sizes))


def test_allotment_is_proportional_when_it_divides():
    assert _core.allot_sub_clusters([10, 30, 60], 10) == [1, 3, 6]
    assert _core.allot_sub_clusters([5, 5, 5, 5], 6) == [2, 2, 1, 1]  # ties: lower index first
    assert _core.allot_sub_clusters([1000, 1, 1, 0], 4) == [2, 1, 1, 0]  # every non-empty gets one


def test_allotment_refuses_impossible_requests():
    with pytest.raises(ValueError, match="cannot allot"):
        _core.allot_sub_clusters([3, 3, 3], 2)   # fewer centroids than non-empty clusters
    with pytest.raises(ValueError, match="cannot allot"):
        _core.allot_sub_clusters([3, 3], 7)      # more centroids than points


# --- the fit -----------------------------------------------------------------------------------

@pytest.mark.parametrize("spherical", [True, False])
@pytest.mark.parametrize("mppc", [None, 40])
@pytest.mark.parametrize("paired", [False, True])
def test_one_coarse_cluster_equals_flat(rng, spherical, mppc, paired):
    x = clustered(rng, 6000, 24, 30)
    y = clustered(rng, 6000, 24, 30)
    cls = mudg_fast.PairedKMeans if paired else mudg_fast.KMeans
    kw = dict(seed=11, max_iter=8, spherical=spherical, max_points_per_centroid=mppc)
    flat = cls(50, method="flat", **kw)
    two = cls(50, method="two_level", n_coarse=1, **kw)
    if paired:
        flat.fit(x, y, pairing="given")
        two.fit(x, y, pairing="given")
    else:
        flat.fit(x)
        two.fit(x)
    assert two.method_ == "two_level" and two.coarse_counts_.tolist() == [50]
    np.testing.assert_array_equal(two.cluster_centers_, flat.cluster_centers_)
    np.testing.assert_array_equal(two.labels_, flat.labels_)
    assert two.inertia_ == flat.inertia_
    np.testing.assert_array_equal(two.objective_history_, flat.objective_history_)


@pytest.mark.parametrize("n_coarse", [None, 3, 7])
def test_counts_sum_to_k_and_follow_the_coarse_sizes(rng, n_coarse):
    x = clustered(rng, 5000, 16, 40)
    km = mudg_fast.KMeans(97, method="two_level", n_coarse=n_coarse, seed=2, max_iter=6).fit(x)
    nc = n_coarse or round(97 ** 0.5)
    assert km.coarse_centers_.shape == (nc, 16) and km.coarse_counts_.shape == (nc,)
    assert km.coarse_counts_.sum() == 97 and (km.coarse_counts_ >= 1).all()
    assert km.coarse_sizes_.sum() == 5000
    assert km.coarse_counts_.tolist() == numpy_allot(km.coarse_sizes_, 97)
    assert km.cluster_centers_.shape == (97, 16)
    np.testing.assert_allclose(np.linalg.norm(km.cluster_centers_, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(km.coarse_centers_, axis=1), 1, atol=1e-5)
    # the coarse sizes are the coarse centres' shares of the points
    coarse = np.argmax(x.astype(np.float64) @ km.coarse_centers_.T.astype(np.float64), axis=1)
    np.testing.assert_array_equal(np.bincount(coarse, minlength=nc), km.coarse_sizes_)


@pytest.mark.parametrize("mppc", [None, 30])
def test_labels_are_the_hierarchical_nearest(rng, mppc):
    x = clustered(rng, 8000, 20, 60)
    km = mudg_fast.KMeans(120, method="two_level", seed=4, max_iter=10, max_points_per_centroid=mppc).fit(x)
    np.testing.assert_array_equal(km.labels_, hierarchical_labels(x, km))
    inertia = ((x.astype(np.float64) - km.cluster_centers_[km.labels_]) ** 2).sum()
    assert km.inertia_ == pytest.approx(inertia, rel=1e-6)


def test_paired_assigns_by_images_and_updates_by_captions(rng):
    """At the fixed point every centroid is the normalised mean of the captions whose images it
    holds, and every image sits at its hierarchical nearest centroid (numpy reference)."""
    images = clustered(rng, 4000, 16, 64, spread=0.3)
    captions = images + 0.4 * unit_rows(rng, 4000, 16) + 0.3  # an offset, noisier space
    captions /= np.linalg.norm(captions, axis=1, keepdims=True)
    pk = mudg_fast.PairedKMeans(48, method="two_level", seed=1, max_iter=300).fit(images, captions,
                                                                                     pairing="given")
    assert pk.n_iter_ < 300  # every per-cluster fit reached its fixed point
    np.testing.assert_array_equal(pk.labels_, hierarchical_labels(images, pk))
    held = 0
    for j in range(48):
        members = pk.labels_ == j
        if not members.any():  # a caption mean no image is nearest to (paired k-means allows it)
            continue
        held += 1
        mean = captions[members].astype(np.float64).sum(0)
        np.testing.assert_allclose(pk.cluster_centers_[j], mean / np.linalg.norm(mean), atol=2e-6)
    assert held >= 40
    # the coarse level is paired too: its centres are normalised caption means of their points
    coarse = np.argmax(images.astype(np.float64) @ pk.coarse_centers_.T.astype(np.float64), axis=1)
    assert np.bincount(coarse, minlength=len(pk.coarse_sizes_)).tolist() == pk.coarse_sizes_.tolist()
    near_cap = (captions @ pk.cluster_centers_.T).max(1).mean()
    near_img = (images @ pk.cluster_centers_.T).max(1).mean()
    assert near_cap > near_img  # the centroids live in caption space


def test_quality_close_to_flat():
    # Each point only ever meets the centroids of its coarse cluster, so a two-level fit is somewhat
    # worse than a flat one: on the COCO-fitted generated corpus about 4 % in inertia at d=64.
    from mudg_fast.synthetic import make_corpus

    x = make_corpus(20_000, n_concepts=100, dim=64, seed=0, num_threads=2).images
    flat = mudg_fast.KMeans(256, method="flat", seed=0, max_iter=15).fit(x)
    two = mudg_fast.KMeans(256, method="two_level", seed=0, max_iter=15).fit(x)
    coarse_only = mudg_fast.KMeans(16, method="flat", seed=0, max_iter=15).fit(x)
    assert two.inertia_ <= 1.08 * flat.inertia_, (two.inertia_, flat.inertia_)
    assert two.inertia_ < 0.8 * coarse_only.inertia_
    h = two.objective_history_
    assert len(h) == two.n_iter_ and (np.diff(h) >= -1e-6 * np.abs(h[:-1])).all()
    assert set(two.stage_seconds_) == {"coarse", "fine", "labels"}


def test_auto_picks_two_level_for_large_k(rng):
    from mudg_fast.kmeans import TWO_LEVEL_MIN_CLUSTERS

    assert TWO_LEVEL_MIN_CLUSTERS == 4096
    x = unit_rows(rng, 4200, 4)
    small = mudg_fast.KMeans(40, max_iter=1).fit(x)
    assert small.method_ == "flat" and small.coarse_centers_ is None
    big = mudg_fast.KMeans(4096, max_iter=1).fit(x)
    assert big.method_ == "two_level" and big.coarse_counts_.sum() == 4096
    assert mudg_fast.KMeans(4096, method="flat", max_iter=1).fit(x).method_ == "flat"


def test_degenerate_inputs(rng):
    dup = np.repeat(unit_rows(rng, 3, 6), 40, axis=0)  # fewer distinct points than clusters
    km = mudg_fast.KMeans(16, method="two_level", seed=0).fit(dup)
    assert np.isfinite(km.cluster_centers_).all() and km.coarse_counts_.sum() == 16
    same = mudg_fast.KMeans(9, method="two_level").fit(unit_rows(rng, 9, 3))  # n == k
    assert sorted(same.labels_) == list(range(9))
    euclid = mudg_fast.KMeans(30, method="two_level", spherical=False, seed=3).fit(
        rng.standard_normal((2000, 5)).astype(np.float32))
    assert np.isfinite(euclid.inertia_)


@pytest.mark.parametrize("paired", [False, True])
def test_bit_identical_across_threads(rng, paired):
    x = clustered(rng, 12_000, 40, 80)
    y = clustered(rng, 12_000, 40, 80)
    cls = mudg_fast.PairedKMeans if paired else mudg_fast.KMeans
    fits = []
    for t in (1, 2, 3):
        est = cls(300, method="two_level", seed=9, num_threads=t, max_iter=6, max_points_per_centroid=30)
        fits.append(est.fit(x, y) if paired else est.fit(x))
    for f in fits[1:]:
        np.testing.assert_array_equal(f.cluster_centers_, fits[0].cluster_centers_)
        np.testing.assert_array_equal(f.labels_, fits[0].labels_)
        np.testing.assert_array_equal(f.coarse_centers_, fits[0].coarse_centers_)
        assert f.inertia_ == fits[0].inertia_


@pytest.mark.parametrize("level", available_simd_levels())
def test_bit_identical_across_simd_levels(rng, level, simd_level_restored):
    x = clustered(rng, 4000, 37, 30)
    mudg_fast.set_simd_level("scalar")
    ref = mudg_fast.KMeans(64, method="two_level", seed=2, max_iter=6).fit(x)
    mudg_fast.set_simd_level(level)
    got = mudg_fast.KMeans(64, method="two_level", seed=2, max_iter=6).fit(x)
    np.testing.assert_array_equal(ref.cluster_centers_, got.cluster_centers_)
    np.testing.assert_array_equal(ref.labels_, got.labels_)


@pytest.mark.parametrize(
    "kwargs, n, match",
    [
        (dict(n_clusters=20, method="two-level"), 100, "method must be one of"),
        (dict(n_clusters=20, method=None), 100, "method must be one of"),
        (dict(n_clusters=20, method="two_level", n_coarse=0), 100, "n_coarse"),
        (dict(n_clusters=20, method="two_level", n_coarse=21), 100, "n_coarse"),
        (dict(n_clusters=20, method="two_level", n_coarse=2.5), 100, "n_coarse"),
        (dict(n_clusters=20, method="two_level", n_coarse=True), 100, "n_coarse"),
        (dict(n_clusters=3, method="two_level"), 100, "too small for two-level"),
        (dict(n_clusters=20, method="two_level"), 10, "larger than the number of samples"),
        (dict(n_clusters=2, method="two_level", init=np.ones((2, 4))), 100, "init array"),
    ],
)
def test_bad_parameters(rng, kwargs, n, match):
    with pytest.raises(ValueError, match=match):
        mudg_fast.KMeans(**kwargs).fit(unit_rows(rng, n, 4))


def test_core_refuses_what_python_would(rng):
    """The native checks stand on their own (C++ callers, a future binding)."""
    x = unit_rows(rng, 50, 4)
    with pytest.raises(ValueError, match="too small for two-level"):
        _core.kmeans_fit(x, None, x, 3, 5, True, "k-means++", None, 0, 0, 1, False, "two_level", 0)
    with pytest.raises(ValueError, match="n_coarse"):
        _core.kmeans_fit(x, None, x, 8, 5, True, "k-means++", None, 0, 0, 1, False, "two_level", 9)
    with pytest.raises(ValueError, match="method='flat'"):
        _core.kmeans_fit(x, None, x, 8, 5, True, "given", x[:8].copy(), 0, 0, 1, False, "two_level", 0)
