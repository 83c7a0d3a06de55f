"""Rank voting, similarity filter and per-class selection against plain numpy references."""

import numpy as np
import pytest
from conftest import unit_rows

import mudg_fast
from mudg_fast.retrieve import combine_retrievals
from mudg_fast.select import filter_by_similarity, select_by_clustering, similarity_to_prototypes


def reference_votes(ids, K):
    """Plain python: votes[id][class] = sum of K - rank."""
    votes = {}
    m, C, _ = ids.shape
    for a in range(m):
        for c in range(C):
            for r in range(K):
                i = int(ids[a, c, r])
                if i < 0:
                    continue
                votes.setdefault(i, {}).setdefault(c, 0)
                votes[i][c] += K - r
    return votes


def test_combine_matches_reference(rng):
    m, C, K = 4, 30, 16
    ids = rng.integers(0, 400, size=(m, C, K))
    ids[rng.random(ids.shape) < 0.05] = -1  # padding
    scores = rng.random((m, C, K)).astype(np.float32)
    out = combine_retrievals(ids, scores, seed=3, return_details=True)
    ref = reference_votes(ids, K)
    assert out.ids.tolist() == sorted(ref)
    for i, lab, v, tied, best in zip(out.ids, out.labels, out.votes, out.n_tied, out.best_score):
        top = max(ref[i].values())
        winners = sorted(c for c, x in ref[i].items() if x == top)
        assert v == top and lab in winners and tied == len(winners)
        mask = (ids == i) & (np.arange(C)[None, :, None] == lab)
        assert best == scores[mask].max()
    ids3, labels3, votes3 = combine_retrievals(ids, scores, seed=3)
    np.testing.assert_array_equal(ids3, out.ids)
    np.testing.assert_array_equal(labels3, out.labels)


def test_combine_ties_are_seeded_and_fair(rng):
    # every id appears once for class 0 and once for class 1 at the same rank: always a tie
    n = 4000
    ids = np.stack([np.arange(n), np.arange(n)])[None].reshape(1, 2, n)
    a = combine_retrievals(ids, None, seed=1)[1]
    b = combine_retrievals(ids, None, seed=1)[1]
    c = combine_retrievals(ids, None, seed=2)[1]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 0.45 < a.mean() < 0.55
    # input order does not matter: swapping the classes swaps the labels of untied ids only
    perm = combine_retrievals(ids[:, ::-1], None, seed=1)[1]
    np.testing.assert_array_equal(perm, a)  # ties draw from the sorted tied classes


def test_combine_thread_independent(rng):
    ids = rng.integers(0, 50_000, size=(16, 200, 64))
    a = combine_retrievals(ids, None, seed=0, num_threads=1)
    b = combine_retrievals(ids, None, seed=0, num_threads=2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("bad, exc", [(np.zeros((2, 3), int), ValueError), (np.zeros((1, 0, 3), int), ValueError),
                                      (np.zeros((1, 2, 3)), TypeError)])
def test_combine_bad_input(bad, exc):
    with pytest.raises(exc):
        combine_retrievals(bad)


def test_similarity_filter_matches_numpy(rng):
    x = unit_rows(rng, 500, 33)
    protos = unit_rows(rng, 7, 33)
    labels = rng.integers(0, 7, 500)
    sim = similarity_to_prototypes(x, labels, protos)
    np.testing.assert_allclose(sim, np.einsum("nd,nd->n", x, protos[labels]), atol=1e-6)
    keep = filter_by_similarity(x, labels, protos, threshold=0.05)
    np.testing.assert_array_equal(keep, sim > 0.05)
    with pytest.raises(ValueError, match="out of range"):
        filter_by_similarity(x, np.full(500, 7), protos)
    with pytest.raises(ValueError, match="shape"):
        filter_by_similarity(x, labels[:10], protos)


def test_select_by_clustering_properties(rng):
    sizes = [3, 48, 49, 400, 0, 120]
    labels = np.concatenate([np.full(s, c) for c, s in enumerate(sizes)])
    rng.shuffle(labels)
    x = unit_rows(rng, len(labels), 24)
    for strategy in ("random", "nearest"):
        sel = select_by_clustering(x, labels, 48, strategy=strategy, seed=5)
        assert sel.dtype == np.int64 and (np.diff(sel) > 0).all()
        counts = np.bincount(labels[sel], minlength=len(sizes))
        for c, s in enumerate(sizes):
            if s <= 48:  # small classes keep everything
                assert counts[c] == s
                assert set(np.flatnonzero(labels == c)) <= set(sel)
            else:         # one per non-empty cluster
                assert 0 < counts[c] <= 48
        again = select_by_clustering(x, labels, 48, strategy=strategy, seed=5, num_threads=1)
        np.testing.assert_array_equal(sel, again)


def test_nearest_strategy_picks_the_member_closest_to_its_centroid(rng):
    # one class, clusters that are tight and far apart: the nearest member of each cluster
    centres = unit_rows(rng, 5, 16)
    x = np.repeat(centres, 20, axis=0) + 0.01 * rng.standard_normal((100, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.zeros(100, np.int64)
    sel = select_by_clustering(x, labels, 5, strategy="nearest", seed=0)
    assert len(sel) == 5
    groups = sel // 20
    assert sorted(groups) == [0, 1, 2, 3, 4]  # one per true cluster
    for i in sel:  # each pick is the member most similar to its group's normalised mean
        g = slice((i // 20) * 20, (i // 20 + 1) * 20)
        mean = x[g].sum(0)
        mean /= np.linalg.norm(mean)
        assert i == (i // 20) * 20 + np.argmax(x[g] @ mean)


def test_select_bad_input(rng):
    x = unit_rows(rng, 10, 4)
    with pytest.raises(ValueError, match="k_per_class"):
        select_by_clustering(x, np.zeros(10, int), 0)
    with pytest.raises(ValueError, match="strategy"):
        select_by_clustering(x, np.zeros(10, int), 2, strategy="best")
    with pytest.raises(ValueError, match=">= 0"):
        select_by_clustering(x, np.full(10, -1), 2)
    with pytest.raises(TypeError):
        select_by_clustering(x, np.zeros(10), 2)


def test_gather_rows_matches_fancy_indexing(rng):
    x = rng.standard_normal((1000, 13)).astype(np.float32)
    ids = rng.integers(0, 1000, 5000)
    np.testing.assert_array_equal(mudg_fast._core.gather_rows(x, ids, 0), x[ids])
    with pytest.raises(ValueError, match="out of range"):
        mudg_fast._core.gather_rows(x, np.array([1000]), 0)
