"""Property-based fuzzing of rank voting (combine_retrievals) and of the selection stage
(similarity_to_prototypes, filter_by_similarity, select_by_clustering).

Every call goes through ``fuzzing.attempt``: it returns a result that is checked against a plain
numpy/python reference or an invariant, or it raises a clear TypeError/ValueError.
"""

from __future__ import annotations

import numpy as np
from fuzzing import (
    JUNK_SEEDS,
    JUNK_THREADS,
    VALID_SEEDS,
    VALID_THREADS,
    arguments,
    attempt,
    examples,
    hostile_arrays,
    layouts,
    matrices,
    mostly,
    raised,
)
from hypothesis import given
from hypothesis import strategies as st
from mudg_fast.retrieve import combine_retrievals
from mudg_fast.select import filter_by_similarity, select_by_clustering, similarity_to_prototypes

THREADS = mostly(VALID_THREADS, JUNK_THREADS, 0.8)
VALID_THRESHOLDS = st.one_of(st.floats(-1.5, 1.5), st.sampled_from([np.float32(0.1), 0, 1e308, -1e308]))
JUNK_THRESHOLDS = st.sampled_from([float("nan"), float("inf"), -float("inf"), None, "0.2", 1j, np.array([0.1, 0.2]),
                                   True, np.array(0.2)])


def _is_seed(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and 0 <= v < 2**64


def _clean(a) -> bool:
    """Finite values far from float32's overflow: every call on them must succeed."""
    a = np.asarray(a, dtype=np.float64)
    return bool(np.isfinite(a).all() and (a.size == 0 or np.abs(a).max() < 1e15))


# ---------------------------------------------------------------------------------------------
# combine_retrievals


def reference_combine(ids: np.ndarray, scores: np.ndarray | None):
    """Plain python rank voting: id -> {class: (vote, best score)}."""
    m, C, K = ids.shape
    out: dict = {}
    for a in range(m):
        for c in range(C):
            for r in range(K):
                i = int(ids[a, c, r])
                if i < 0:
                    continue
                vote, best = out.setdefault(i, {}).get(c, (0, -np.inf))
                s = float(scores[a, c, r]) if scores is not None else 0.0
                out[i][c] = (vote + K - r, max(best, s))
    return out


@st.composite
def retrievals(draw):
    m, C, K = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([np.int64, np.int32, np.int8, np.uint8, np.uint64, np.int16]))
    lo = 0 if np.dtype(dtype).kind == "u" else -2
    top = draw(st.sampled_from([3, 12, 40]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ids = rng.integers(lo, top, size=(m, C, K)).astype(dtype)
    if dtype in (np.int64, np.uint64) and draw(st.integers(0, 9)) == 0:   # the extremes of the type
        ids.flat[0] = np.iinfo(dtype).max
    ids = draw(layouts(ids))
    scores = None
    if draw(st.booleans()):
        sdtype = draw(st.sampled_from([np.float32, np.float64, np.float16, np.int32]))
        scores = rng.standard_normal((m, C, K))
        if draw(st.integers(0, 4)) == 0:
            scores.flat[rng.integers(0, scores.size)] = draw(st.sampled_from(
                [np.nan, np.inf, -np.inf, 1e30, -3e38, 0.0]))
        with np.errstate(over="ignore", invalid="ignore"):
            scores = draw(layouts(scores.astype(sdtype)))
    return ids, scores


@examples(500)
@given(retrievals(), arguments({"seed": (VALID_SEEDS, JUNK_SEEDS), "num_threads": (VALID_THREADS, JUNK_THREADS)}))
def test_combine_matches_rank_voting(data, args):
    ids, scores = data
    kwargs, broken = args
    out = attempt(combine_retrievals, ids, scores, return_details=True, **kwargs)
    too_big = ids.dtype == np.uint64 and ids.max() > np.iinfo(np.int64).max
    nan_scores = scores is not None and np.isnan(np.asarray(scores, dtype=np.float64)).any()
    if too_big or nan_scores or broken:
        assert raised(out), (ids.dtype, kwargs)
        return
    assert not raised(out), out
    s32 = None if scores is None else np.asarray(scores).astype(np.float32)
    ref = reference_combine(np.asarray(ids).astype(np.int64), s32)
    assert out.ids.tolist() == sorted(ref)
    assert out.ids.dtype == np.int64 and out.labels.dtype == np.int64 and len(out) == len(ref)
    for i, lab, vote, best, tied in zip(out.ids, out.labels, out.votes, out.best_score, out.n_tied):
        votes = ref[int(i)]
        top = max(v for v, _ in votes.values())
        winners = [c for c, (v, _) in votes.items() if v == top]
        assert vote == top and int(lab) in winners and tied == len(winners)
        assert best == np.float32(votes[int(lab)][1])
    # reproducible: the same seed gives the same labels with any thread count, and the labels do
    # not depend on the scores (they are only reported)
    for threads, sc in ((1, scores), (2, None)):
        again = attempt(combine_retrievals, ids, sc, kwargs["seed"], num_threads=threads)
        for x, y in zip(again, (out.ids, out.labels, out.votes)):
            np.testing.assert_array_equal(x, y)
    # scores that do not match the ids one to one are refused
    mismatched = np.zeros(ids.shape[:2] + (ids.shape[2] + 1,), np.float32)
    assert raised(attempt(combine_retrievals, ids, mismatched, kwargs["seed"]))


@examples(300)
@given(hostile_arrays(), st.one_of(st.none(), hostile_arrays()), mostly(VALID_SEEDS, JUNK_SEEDS))
def test_combine_hostile_arrays(ids, scores, seed):
    out = attempt(combine_retrievals, ids, scores, seed)
    a = np.asarray(ids)
    if raised(out):
        return
    # it may only succeed on integer (m, C, K) ids with no empty axis and a valid seed
    assert a.dtype.kind in "iu" and a.ndim == 3 and 0 not in a.shape and _is_seed(seed)
    ref = reference_combine(a.astype(np.int64), None)
    assert out[0].tolist() == sorted(ref)


# ---------------------------------------------------------------------------------------------
# similarity_to_prototypes / filter_by_similarity


@st.composite
def labelled(draw, n: int, n_classes: int):
    """Labels for n rows: mostly valid, sometimes out of range, of a wrong dtype or length."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    labels = rng.integers(0, max(n_classes, 1), n)
    kind = draw(st.sampled_from(["ok"] * 20 + ["neg", "high", "float", "short", "2d", "uint64", "bool", "list"]))
    if kind == "neg" and n:
        labels[rng.integers(0, n)] = -1
        return labels, False
    if kind == "high" and n:
        labels[rng.integers(0, n)] = n_classes + draw(st.sampled_from([0, 1, 10**12]))
        return labels, False
    if kind == "float":
        return labels.astype(np.float64), False
    if kind == "short":
        return (labels[:-1] if n else np.zeros(1, np.int64)), False
    if kind == "2d":
        return labels[:, None], False
    if kind == "bool":
        return labels.astype(bool), False
    if kind == "list":               # an empty list becomes a float64 array: refused
        return labels.tolist(), n > 0
    dtype = draw(st.sampled_from([np.int64, np.int32, np.uint8, np.int8, np.uint64]))
    return draw(layouts(labels.astype(dtype))), True


@examples(400)
@given(st.data())
def test_similarity_and_filter_match_numpy(data):
    n = data.draw(st.integers(0, 20))
    d = data.draw(st.integers(1, 8))
    C = data.draw(st.integers(1, 5))
    dtype = data.draw(st.sampled_from([np.float32, np.float32, np.float64, np.float16, np.int32]))
    x = data.draw(matrices(n, d, dtype=dtype)) if n else np.zeros((0, d), dtype)
    p = data.draw(matrices(C, d, dtype=data.draw(st.sampled_from([np.float32, np.float64]))))
    if data.draw(st.integers(0, 14)) == 0:  # prototypes of another dimension
        p = np.ascontiguousarray(p[:, : d - 1]) if d > 1 else np.ones((C, 2), np.float32)
    labels, labels_ok = data.draw(labelled(n, C))
    threads = data.draw(THREADS)
    sim = attempt(similarity_to_prototypes, x, labels, p, num_threads=threads)
    threads_ok = threads is None or (isinstance(threads, (int, np.integer)) and not isinstance(threads, bool)
                                     and 1 <= threads <= 1 << 16)
    ok = labels_ok and p.shape[1] == d and threads_ok
    if not ok or not (np.isfinite(np.asarray(x, np.float64)).all() and np.isfinite(p).all()):
        assert raised(sim), (labels_ok, p.shape, threads)
        return
    if not (_clean(x) and _clean(p)):
        if raised(sim):
            return                       # extreme magnitudes: either refused or computed
    else:
        assert not raised(sim), sim
    lab = np.asarray(labels).astype(np.int64)
    x32, p32 = np.asarray(x).astype(np.float32), p.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        ref = np.einsum("nd,nd->n", x32.astype(np.float64), p32[lab].astype(np.float64))
        scale = 1e-5 * max(1.0, float(np.abs(x32).max(initial=0)) * float(np.abs(p32).max()) * d)
        np.testing.assert_allclose(sim.astype(np.float64), ref.astype(np.float32).astype(np.float64),
                                   rtol=1e-5, atol=scale)
    assert sim.dtype == np.float32 and sim.shape == (n,)
    # the same values in another layout or a wider dtype give the same similarities, bit for bit
    for x2, p2 in ((x32[::-1][::-1] if n else x32, np.asfortranarray(p)),
                   (np.asfortranarray(x32.astype(np.float64)), p32.astype(np.float64)[::-1][::-1])):
        np.testing.assert_array_equal(attempt(similarity_to_prototypes, x2, labels, p2), sim)
    for thr in (data.draw(mostly(VALID_THRESHOLDS, JUNK_THRESHOLDS)), 0.25):
        keep = attempt(filter_by_similarity, x, labels, p, thr, num_threads=threads)
        real = isinstance(thr, (int, float, np.floating)) and not isinstance(thr, bool) and np.isfinite(thr)
        if not real:
            assert raised(keep), thr
            continue
        assert not raised(keep), keep
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(keep, sim > thr)


# ---------------------------------------------------------------------------------------------
# select_by_clustering


SELECT_ARGS = {
    "k_per_class": (st.one_of(st.integers(1, 12), st.sampled_from([np.int64(3), np.uint8(2), 2**31, 2**63 - 1])),
                    st.sampled_from([0, -1, 1.5, float("nan"), True, None, "3", np.float64(2.0)])),
    "strategy": (st.sampled_from(["random", "nearest"]), st.sampled_from(["best", "", None, 0, ["random"], "Random"])),
    "seed": (VALID_SEEDS, JUNK_SEEDS),
    "max_iter": (st.integers(0, 15), st.sampled_from([-1, 1.5, "3", None, 2**31, True])),
    "num_threads": (st.sampled_from([1, 2, None]), JUNK_THREADS),
}


@examples(300)
@given(st.data(), arguments(SELECT_ARGS, valid_share=0.6))
def test_select_by_clustering_invariants(data, args):
    kwargs, broken = args
    n = data.draw(st.integers(0, 40))
    d = data.draw(st.integers(1, 6))
    x = data.draw(matrices(n, d, dtype=data.draw(st.sampled_from([np.float32, np.float64, np.float16])),
                           specials=0.05)) if n else np.zeros((0, d), np.float32)
    values = data.draw(st.lists(st.sampled_from([0, 1, 2, 3, 7, 1000, 10**12, 2**62]), min_size=1,
                                max_size=4, unique=True))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    labels = np.asarray(values, dtype=np.int64)[rng.integers(0, len(values), n)]
    bad_labels = broken is None and n > 0 and data.draw(st.integers(0, 14)) == 0
    if bad_labels:
        labels = labels.astype(np.float64) if data.draw(st.booleans()) else -labels - 1
    spherical = data.draw(st.booleans())
    sel = attempt(select_by_clustering, x, labels, spherical=spherical, **kwargs)
    if broken or bad_labels or not np.isfinite(np.asarray(x, np.float64)).all():
        assert raised(sel), (broken, bad_labels)
        return
    if raised(sel):
        assert not _clean(x), sel       # only extreme magnitudes may be refused
        return
    k = kwargs["k_per_class"]
    assert sel.dtype == np.int64 and (np.diff(sel) > 0).all()
    assert sel.size == 0 or (sel.min() >= 0 and sel.max() < n)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        picked = np.intersect1d(sel, members)
        if len(members) <= k:
            np.testing.assert_array_equal(picked, members)   # small classes keep everything
        else:
            assert 1 <= len(picked) <= k
    # reproducible whatever the thread count and the memory layout of the same values
    other = dict(kwargs, num_threads=2 if kwargs["num_threads"] == 1 else 1)
    again = attempt(select_by_clustering, x, labels, spherical=spherical, **other)
    np.testing.assert_array_equal(again, sel)
    x64 = np.asfortranarray(np.asarray(x, dtype=np.float32).astype(np.float64))
    again = attempt(select_by_clustering, x64, labels.astype(np.int32) if labels.max(initial=0) < 2**31
                    else labels, spherical=spherical, **kwargs)
    np.testing.assert_array_equal(again, sel)
