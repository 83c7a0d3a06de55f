"""Property-based fuzzing of the native core's public surface: knn, KMeans / PairedKMeans and the
functional forms, and every IVFIndex method (including a stateful machine that interleaves valid
and invalid calls and checks the index against a plain model after each step).

Each call either returns a result that matches a float64 numpy reference, or raises a clear
exception -- and which of the two happens is predicted independently by `input_problem`, so a
spurious rejection fails as surely as a silently accepted bad input.
"""

from __future__ import annotations

import numbers

import mudg_fast
import numpy as np
from fuzzing import attempt, examples, hostile_arrays, int_params, matrices, raised
from hypothesis import given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from mudg_fast._arrays import magnitude_limit

F32_MAX = float(np.finfo(np.float32).max)


# ---------------------------------------------------------------------------------------------
# the independent oracle for "should this input be accepted?"

def input_problem(a, *, dim=None, allow_1d=False, allow_empty=False) -> str | None:
    """Why ``a`` is not a valid vector matrix, or None. Written from the documented contract,
    not from the implementation: a real numeric dtype, 2-D (or 1-D where allowed), at least one
    column, the expected dimension, rows unless empty is allowed, and values that are finite in
    float32 and within the magnitude limit."""
    a = np.asarray(a)
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        return "dtype"
    if a.ndim == 1 and allow_1d:
        a = a[None, :]
    if a.ndim != 2:
        return "ndim"
    if a.shape[1] == 0:
        return "no columns"
    if dim is not None and a.shape[1] != dim:
        return "dim"
    if a.shape[0] == 0:
        return None if allow_empty else "empty"
    with np.errstate(over="ignore", invalid="ignore"):
        f = a.astype(np.float32)
    if not np.isfinite(f).all():
        return "non-finite"
    if np.abs(f).max() > magnitude_limit(a.shape[1]):
        return "magnitude"
    return None


def method_input_problem(a, *, dim) -> str | None:
    """Why ``a`` is not valid input for an estimator's predict/transform/score, or None. These follow
    scikit-learn's conventions: numbers held in an object array count as numbers, a 1-D array is
    refused (one sample or one feature would be a guess), zero rows are fine."""
    a = np.asarray(a)
    if a.dtype == object:
        try:
            a = a.astype(np.float64)
        except (TypeError, ValueError):
            return "dtype"
    return input_problem(a, dim=dim, allow_empty=True)


def int_problem(v, lo=1, hi=2**31 - 1) -> str | None:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        return "type"
    return None if lo <= v <= hi else "range"


def as_f32(a):
    a = np.asarray(a, dtype=np.float32)
    return a[None, :] if a.ndim == 1 else a


def score_tolerance(q, x):
    """Bound on the float32 rounding of a d-term dot product: d * eps * sum |q_i x_i|."""
    d = q.shape[1]
    return d * 2.0**-22 * (np.abs(q.astype(np.float64)) @ np.abs(x.astype(np.float64)).T) + 1e-36


def check_topk(scores, ids, q, x, k, candidates=None, tol_x=None):
    """scores/ids are the exact top-k of q against rows of x (restricted to ``candidates`` ids when
    given): descending, no repeated id, each score the true inner product, and the multiset of
    scores that of the reference's k best."""
    nq, n = q.shape[0], x.shape[0]
    assert scores.shape == ids.shape == (nq, k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    ref = q.astype(np.float64) @ x.astype(np.float64).T
    tol = score_tolerance(q, x if tol_x is None else tol_x)
    allowed = np.arange(n) if candidates is None else np.asarray(candidates)
    kk = min(k, len(allowed))
    for i in range(nq):
        real = ids[i, :kk]
        assert np.all(real >= 0), (ids[i], kk)
        assert len(set(real.tolist())) == kk, f"repeated id in {real}"
        assert np.isin(real, allowed).all()
        assert np.all(np.abs(scores[i, :kk] - ref[i, real]) <= tol[i, real]), (scores[i], ref[i, real])
        assert np.all(np.diff(scores[i, :kk].astype(np.float64)) <= 0), "not sorted best first"
        if kk:
            best = np.sort(ref[i, allowed])[::-1][:kk]
            assert np.all(np.abs(np.sort(scores[i, :kk])[::-1] - best) <= 2 * tol[i].max()), "not the top k"
        assert np.all(ids[i, kk:] == -1) and np.all(scores[i, kk:] == -np.inf), "bad padding"


# ---------------------------------------------------------------------------------------------
# knn

@examples(900)
@given(data=st.data(), d=st.integers(1, 12), nq=st.integers(0, 6), n=st.integers(1, 24))
def test_knn_matches_numpy_or_refuses(data, d, nq, n):
    q = data.draw(matrices(nq, d, specials=0.15)) if nq else np.zeros((0, d), np.float32)
    x = data.draw(matrices(n, d, specials=0.15))
    if nq == 1 and data.draw(st.booleans()):
        q = q[0]  # a single 1-D query
    k = data.draw(int_params(-2, 30))
    threads = data.draw(st.sampled_from([None, 1, 2]))
    out = attempt(mudg_fast.knn, q, x, k, num_threads=threads)
    problem = (int_problem(k) and "k") or input_problem(x) or \
        input_problem(q, dim=d, allow_1d=True, allow_empty=True)
    note(f"problem={problem} outcome={out!r:.200}")
    if problem:
        assert raised(out), f"accepted bad input ({problem})"
        return
    assert not raised(out), out
    check_topk(*out, as_f32(q), as_f32(x), k)


@examples(700)
@given(q=hostile_arrays(), x=hostile_arrays(), k=int_params(-1, 8))
def test_knn_hostile_arrays(q, x, k):
    out = attempt(mudg_fast.knn, q, x, k)
    dx = np.asarray(x).shape[-1] if np.asarray(x).ndim == 2 else None
    problem = (int_problem(k) and "k") or input_problem(x) or \
        input_problem(q, dim=dx, allow_1d=True, allow_empty=True)
    if problem:
        assert raised(out), f"accepted bad input ({problem})"
    else:
        assert not raised(out), out
        check_topk(*out, as_f32(q), as_f32(x), k)


# ---------------------------------------------------------------------------------------------
# k-means

def check_kmeans(est, x, k, spherical):
    c, labels = est.cluster_centers_, est.labels_
    x = as_f32(x)
    assert c.shape == (k, x.shape[1]) and c.dtype == np.float32 and np.isfinite(c).all()
    assert labels.shape == (x.shape[0],) and labels.min() >= 0 and labels.max() < k
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    if spherical:
        norms = np.linalg.norm(c64, axis=1)
        assert np.all((np.abs(norms - 1) < 1e-4) | (norms == 0)), norms
        s = x64 @ c64.T  # every label is (within rounding) a best inner product
        tol = score_tolerance(x, c) * 4
        assert np.all(s[np.arange(len(x)), labels] >= s.max(axis=1) - tol.max(axis=1))
    else:
        dist = ((x64[:, None, :] - c64[None, :, :]) ** 2).sum(-1)
        scale = (np.abs(x64).max() + np.abs(c64).max()) ** 2 * x.shape[1]
        assert np.all(dist[np.arange(len(x)), labels] <= dist.min(axis=1) + 1e-5 * scale + 1e-30)
    assert np.isfinite(est.inertia_) and est.inertia_ >= 0
    assert 1 <= est.n_iter_ <= est.max_iter


@examples(450)
@given(data=st.data(), n=st.integers(1, 30), d=st.integers(1, 8))
def test_kmeans_is_a_valid_clustering_or_refuses(data, n, d):
    x = data.draw(matrices(n, d, specials=0.1))
    k = data.draw(int_params(-1, 12))
    init = data.draw(st.sampled_from(["k-means++", "random", "array", "bad-array", "bogus", None]))
    spherical = data.draw(st.booleans())
    max_iter = data.draw(st.one_of(st.integers(1, 6), st.sampled_from([0, -1, 2.5, 2**40])))
    mppc = data.draw(st.sampled_from([None, None, 1, 3, 2**62, 0, -2]))
    seed = data.draw(st.sampled_from([0, 1, 2**70, -1, 1.5]))
    k_ok = not int_problem(k)
    if init == "array":
        init_arg = as_f32(x)[: int(k) if k_ok and k <= n else 1].copy()
    elif init == "bad-array":
        init_arg = np.full((int(k) if k_ok and k < 40 else 1, d + 1), 0.5)
    else:
        init_arg = init
    est = mudg_fast.KMeans(k, max_iter=max_iter, init=init_arg, seed=seed, spherical=spherical,
                           max_points_per_centroid=mppc)
    out = attempt(est.fit, x)
    problem = (input_problem(x) or int_problem(k) or (k > n and "k > n")
               or int_problem(max_iter) or int_problem(seed, 0, float("inf"))
               or (mppc is not None and int_problem(mppc, 1, float("inf")))
               or (init == "bad-array" and "init shape") or (init in ("bogus", None) and "init"))
    note(f"problem={problem} outcome={out!r:.200}")
    if problem:
        assert raised(out), f"accepted bad input ({problem})"
        return
    assert not raised(out), out
    check_kmeans(est, x, k, spherical)
    # predict agrees with labels_ on the training points, and refuses hostile inputs cleanly
    np.testing.assert_array_equal(est.predict(x), est.labels_)
    junk = data.draw(hostile_arrays())
    got = attempt(est.predict, junk)
    if method_input_problem(junk, dim=d):
        assert raised(got)
    else:
        assert not raised(got) and got.shape == (as_f32(junk).shape[0],)


@examples(250)
@given(data=st.data(), n=st.integers(1, 20), m=st.integers(1, 20), d=st.integers(1, 6))
def test_paired_kmeans_or_refuses(data, n, m, d):
    images = data.draw(matrices(n, d, specials=0.1))
    captions = data.draw(matrices(m, data.draw(st.sampled_from([d, d, d, d + 1])), specials=0.1))
    k = data.draw(int_params(-1, 8))
    pairing = data.draw(st.sampled_from(["nearest", "given", "bogus"]))
    est = mudg_fast.PairedKMeans(k, max_iter=4) if not int_problem(k) else None
    fit = (lambda: est.fit(images, captions, pairing)) if est else \
        (lambda: mudg_fast.paired_kmeans(images, captions, k, pairing=pairing, max_iter=4))
    out = attempt(fit, name="PairedKMeans.fit")
    problem = (input_problem(images) or input_problem(captions, dim=d) or int_problem(k)
               or (k > m and "k > n") or (pairing == "bogus" and "pairing")
               or (pairing == "given" and n != m and "unpaired"))
    if problem:
        assert raised(out), f"accepted bad input ({problem})"
        return
    assert not raised(out), out
    c, labels, pairs = est.cluster_centers_, est.labels_, est.pairs_
    cap = as_f32(captions)
    assert c.shape == (k, d) and labels.shape == pairs.shape == (m,)
    assert pairs.min() >= 0 and pairs.max() < n and labels.min() >= 0 and labels.max() < k
    if pairing == "given":
        np.testing.assert_array_equal(pairs, np.arange(m))
    # every label is the best centroid for the caption's image partner
    img = as_f32(images)[pairs]
    s = img.astype(np.float64) @ c.astype(np.float64).T
    tol = 4 * score_tolerance(img, c)
    assert np.all(s[np.arange(m), labels] >= s.max(axis=1) - tol.max(axis=1))
    # at a fixed point every centroid is the normalised mean of its captions
    for j in range(k if est.n_iter_ < est.max_iter else 0):
        members = cap[labels == j].astype(np.float64)
        if len(members):
            mean = members.sum(0)
            norm = np.linalg.norm(mean)
            if norm > 1e-3 * np.abs(members).sum():  # away from cancellation
                np.testing.assert_allclose(c[j], mean / norm, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# IVFIndex: construction and single calls

@examples(400)
@given(dim=int_params(-1, 40), nlist=int_params(-1, 40),
       codec=st.sampled_from(["f32", "f16", "sq8", "sq4", "pq", "", None, 3]),
       metric=st.sampled_from(["ip", "ip", "l2", None]))
def test_ivf_constructor(dim, nlist, codec, metric):
    out = attempt(mudg_fast.IVFIndex, dim, nlist, codec=codec, metric=metric)
    problem = (int_problem(dim, 1, 1 << 20) or int_problem(nlist, 1, 1 << 24)
               or codec not in ("f32", "f16", "sq8", "sq4") or metric != "ip")
    if problem:
        assert raised(out)
        return
    assert not raised(out), out
    assert (out.dim, out.nlist, out.codec, out.ntotal, out.is_trained) == (dim, nlist, codec, 0, False)
    assert out.list_sizes().tolist() == [0] * nlist
    for call in (lambda: out.add(np.ones((1, dim))), lambda: out.search(np.ones((1, dim)), 1)):
        assert raised(attempt(call, allowed=(RuntimeError,), name="IVFIndex untrained")), \
            "an untrained index must refuse add/search"


@examples(300)
@given(data=st.data(), n=st.integers(1, 30), d=st.integers(1, 6), nlist=st.integers(1, 12),
       codec=st.sampled_from(["f32", "f16", "sq8", "sq4"]))
def test_ivf_train_or_refuses(data, n, d, nlist, codec):
    x = data.draw(matrices(n, data.draw(st.sampled_from([d, d, d, d + 1])), specials=0.1))
    ix = mudg_fast.IVFIndex(d, nlist, codec=codec)
    paired = data.draw(st.booleans())
    if paired:
        caps = data.draw(matrices(n, d, specials=0.05))
        out = attempt(ix.train_paired, x, caps, max_iter=3)
        problem = input_problem(x, dim=d) or input_problem(caps, dim=d) or (n < nlist and "nlist > n")
    else:
        out = attempt(ix.train, x, max_iter=3)
        problem = input_problem(x, dim=d) or (n < nlist and "nlist > n")
    if problem:
        assert raised(out), f"accepted bad input ({problem})"
        assert not ix.is_trained, "a failed train must leave the index untrained"
        return
    if raised(out):  # the one legitimate extra refusal: a quantiser needs >= 2 training rows
        assert codec in ("sq8", "sq4") and n < 2, out
        return
    assert ix.is_trained and ix.centroids.shape == (nlist, d)
    norms = np.linalg.norm(ix.centroids.astype(np.float64), axis=1)
    assert np.all((np.abs(norms - 1) < 1e-4) | (norms == 0))


@examples(300)
@given(data=st.data(), codec=st.sampled_from(["sq8", "sq4", "f32"]), d=st.integers(1, 5))
def test_ivf_codec_params_roundtrip_or_refuses(data, codec, d):
    ix = mudg_fast.IVFIndex(d, 2, codec=codec)
    kind = data.draw(st.sampled_from(["good", "nan", "short", "huge", "negative-step", "unsorted",
                                      "strings", "none"]))
    limit = magnitude_limit(d)
    if codec == "sq8":
        a, b = np.full(d, -1.0), np.full(d, 2.0 / 255)
    elif codec == "sq4":
        a, b = np.tile(np.linspace(-1, 1, 16), d), np.zeros(0)
    else:
        a, b = np.zeros(0), np.zeros(0)
    bad = kind != "good"
    if kind == "nan" and a.size:
        a[0] = np.nan
    elif kind == "short":
        a = np.concatenate([a, [0.5]])
    elif kind == "huge" and a.size:
        a[-1] = 2 * limit
    elif kind == "negative-step" and codec == "sq8":
        b[0] = -b[0]
    elif kind == "unsorted" and codec == "sq4":
        a[:16] = a[:16][::-1].copy()
    elif kind == "strings":
        a = np.array(["x"] * max(1, a.size))
    elif kind == "none":
        a = None
    else:
        bad = False
    out = attempt(ix.set_codec_params, a, b)
    if bad:
        assert raised(out), f"accepted bad codec parameters ({kind})"
        return
    assert not raised(out), out
    got_a, got_b = ix.codec_params()
    np.testing.assert_array_equal(got_a, np.asarray(a, np.float32).reshape(-1))
    np.testing.assert_array_equal(got_b, np.asarray(b, np.float32).reshape(-1))


# ---------------------------------------------------------------------------------------------
# IVFIndex: a stateful machine against a plain model

D, NLIST = 5, 4


class IndexMachine(RuleBasedStateMachine):
    """Interleaves valid and invalid adds, searches, reconstructs, saves/loads and merges. After
    every step the index must agree with ``self.vectors`` / ``self.ids``: a failed call changes
    nothing."""

    @initialize(codec=st.sampled_from(["f32", "f16", "sq8", "sq4"]), seed=st.integers(0, 2**16),
                threads=st.sampled_from([None, 1, 2]))
    def setup(self, codec, seed, threads):
        rng = np.random.default_rng(seed)
        train = rng.standard_normal((64, D)).astype(np.float32)
        train /= np.linalg.norm(train, axis=1, keepdims=True)
        self.codec = codec
        self.index = mudg_fast.IVFIndex(D, NLIST, codec=codec, num_threads=threads)
        self.index.train(train, max_iter=4, seed=seed)
        self.empty_twin = None
        self.vectors = np.zeros((0, D), np.float32)  # as added
        self.ids = np.zeros(0, np.int64)
        self.next_id = 0
        self.tmp = None

    # -- helpers -------------------------------------------------------------------------------
    def decoded(self):
        """The stored (decoded) vectors of every id, in model order."""
        if not len(self.ids):
            return self.vectors
        return np.stack([self.index.reconstruct(int(i)) for i in self.ids]) if \
            len(np.unique(self.ids)) == len(self.ids) else None

    def rounding_scale(self, stored):
        """Magnitudes to bound the search kernels' rounding by: quantised codecs score as
        q . (offset + code * step), so their terms are as large as the quantiser's range."""
        a, b = self.index.codec_params()
        if self.codec == "sq8":
            return np.broadcast_to(2 * (np.abs(a) + 255 * b), stored.shape)
        if self.codec == "sq4":
            return np.broadcast_to(2 * np.abs(a.reshape(D, 16)).max(axis=1), stored.shape)
        return stored

    def expected_decode(self, v):
        """What the codec must return for vectors v, and the allowed error per value: values are
        clamped to the quantiser's range, then rounded to the nearest level."""
        a, b = self.index.codec_params()
        if self.codec == "f32":
            return v, np.zeros_like(v)
        if self.codec == "f16":
            return v, np.abs(v) * 2.0**-11 + 2.0**-24
        if self.codec == "sq8":
            lo, hi = a, a + 255 * b
            return np.clip(v, lo, hi), b / 2 * (1 + 1e-5) + 1e-7
        levels = a.reshape(D, 16)
        gap = np.diff(levels, axis=1).max(axis=1)
        if len(b) == 0:  # direct form: codes of x itself
            return np.clip(v, levels[:, 0], levels[:, -1]), gap / 2 * (1 + 1e-5) + 1e-7
        # residual form: codes of (x - c_l) / s_l for the list l the quantizer gives x
        lists = self.index.probe(v, 1)[1][:, 0]
        c = self.index.centroids[lists]
        scale = np.asarray(b, np.float64)[lists][:, None]
        r = np.clip((v - c) / scale, levels[:, 0], levels[:, -1])
        want = c + scale * r
        return want, scale * gap / 2 * (1 + 1e-5) + 1e-6 * (1 + np.abs(c) + np.abs(want))

    # -- rules ---------------------------------------------------------------------------------
    @rule(data=st.data(), n=st.integers(0, 12), with_ids=st.booleans())
    def add_valid(self, data, n, with_ids):
        x = data.draw(matrices(n, D, specials=0, scale=1.0)) if n else np.zeros((0, D), np.float32)
        ids = np.arange(self.next_id, self.next_id + n) + 1000 if with_ids else None
        out = attempt(self.index.add, x, ids)
        assert not raised(out), out
        self.vectors = np.concatenate([self.vectors, as_f32(x).reshape(-1, D)])
        self.ids = np.concatenate([self.ids, ids if with_ids else
                                   np.arange(self.next_id, self.next_id + n)]).astype(np.int64)
        self.next_id += n

    @rule(data=st.data())
    def add_invalid(self, data):
        kind = data.draw(st.sampled_from(["dim", "nan", "huge", "ids-length", "ids-negative",
                                          "ids-float", "dtype", "3d"]))
        x = np.full((3, D), 0.5, np.float32)
        ids = None
        if kind == "dim":
            x = np.ones((3, D + 1), np.float32)
        elif kind == "nan":
            x[1, 2] = np.nan
        elif kind == "huge":
            x[0, 0] = 1e30
        elif kind == "ids-length":
            ids = np.arange(2)
        elif kind == "ids-negative":
            ids = np.array([5, -1, 6])
        elif kind == "ids-float":
            ids = np.array([1.0, 2.0, 3.0])
        elif kind == "dtype":
            x = x.astype(object)
        elif kind == "3d":
            x = x[None]
        before = self.index.ntotal
        assert raised(attempt(self.index.add, x, ids)), f"accepted a bad add ({kind})"
        assert self.index.ntotal == before

    @rule(data=st.data(), nq=st.integers(0, 5), k=st.integers(1, 30),
          mode=st.sampled_from(["auto", "list_major", "per_query"]))
    def search_everything(self, data, nq, k, mode):
        q = data.draw(matrices(nq, D, specials=0)) if nq else np.zeros((0, D), np.float32)
        out = attempt(self.index.search, q, k, nprobe=NLIST, mode=mode)
        assert not raised(out), out
        stored = self.decoded()
        if stored is None:  # duplicate ids: only check ids/scores are consistent
            return
        scores, ids = out
        # exact over the stored (decoded) vectors when every list is probed
        pos = {int(i): j for j, i in enumerate(self.ids)}
        remap = np.vectorize(lambda i: pos.get(int(i), -1) if i >= 0 else -1, otypes=[np.int64])
        check_topk(scores, remap(ids) if ids.size else ids, as_f32(q), stored, k,
                   tol_x=self.rounding_scale(stored))

    @rule(data=st.data(), nprobe=int_params(-1, 6), k=int_params(-1, 10),
          mode=st.sampled_from(["auto", "list_major", "per_query", "bogus"]))
    def search_partial(self, data, nprobe, k, mode):
        q = data.draw(matrices(3, D, specials=0.2))
        out = attempt(self.index.search, q, k, nprobe=nprobe, mode=mode)
        problem = int_problem(k) or int_problem(nprobe) or mode == "bogus" or input_problem(q, dim=D)
        if problem:
            assert raised(out), f"accepted a bad search ({problem})"
            return
        assert not raised(out), out
        scores, ids = out
        known = set(self.ids.tolist())
        for i in range(3):
            real = ids[i][ids[i] >= 0]
            assert set(real.tolist()) <= known
            assert np.all(np.diff(scores[i][: len(real)].astype(np.float64)) <= 0)
            if len(real) and len(np.unique(self.ids)) == len(self.ids):
                vec = np.stack([self.index.reconstruct(int(j)) for j in real])
                ref = vec.astype(np.float64) @ q[i].astype(np.float64)
                assert np.allclose(scores[i][: len(real)], ref, atol=1e-5)

    @rule(data=st.data())
    def reconstruct(self, data):
        if len(self.ids) and data.draw(st.booleans()):
            j = data.draw(st.integers(0, len(self.ids) - 1))
            got = attempt(self.index.reconstruct, self.ids[j])
            assert not raised(got), got
            same = self.ids == self.ids[j]
            want, tol = self.expected_decode(self.vectors[same])
            assert np.min((np.abs(want - got) - tol).max(axis=1)) <= 1e-6
        else:
            bad = data.draw(st.sampled_from([-1, 10**9, 2**62, "x", 1.5, None]))
            assert raised(attempt(self.index.reconstruct, bad))

    @rule(data=st.data())
    def list_calls(self, data):
        no = data.draw(int_params(-2, NLIST + 2))
        got = attempt(self.index.list_ids, no)
        if int_problem(no, 0, NLIST - 1):
            assert raised(got)
        else:
            assert not raised(got), got
            assert len(got) == self.index.list_sizes()[no]

    @rule()
    def save_and_load(self):
        import os
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "ix.bin")
            attempt(self.index.save, path)
            q = np.eye(D, dtype=np.float32)
            before = self.index.search(q, 5, nprobe=2)
            for mmap in (False, True):
                loaded = attempt(mudg_fast.IVFIndex.load, path, mmap=mmap)
                assert not raised(loaded), loaded
                after = loaded.search(q, 5, nprobe=2)
                np.testing.assert_array_equal(before[1], after[1])
                np.testing.assert_array_equal(before[0], after[0])
                del loaded
            self.index = mudg_fast.IVFIndex.load(path, mmap=False)

    @rule(data=st.data())
    def merge(self, data):
        other = mudg_fast.IVFIndex(D, NLIST, codec=self.codec)
        kind = data.draw(st.sampled_from(["same", "other-centroids", "other-dim", "not-index"]))
        if kind == "not-index":
            assert raised(attempt(self.index.merge, "index")), "merged a string"
            return
        if kind == "other-dim":
            other = mudg_fast.IVFIndex(D + 1, NLIST, codec=self.codec)
            other.train(np.eye(D + 1, dtype=np.float32)[np.arange(8) % (D + 1)] + 0.1, max_iter=2)
        elif kind == "other-centroids":
            c = self.index.centroids.copy()
            c[0] = -c[0] if np.any(c[0]) else 1.0
            other.set_centroids(c)
        else:
            other.set_centroids(self.index.centroids)
        if kind != "other-dim":
            a, b = self.index.codec_params()
            if a.size:
                other.set_codec_params(a, b)
        x = data.draw(matrices(4, D, specials=0)) if kind != "other-dim" else np.ones((4, D + 1))
        new_ids = np.arange(4) + 10**6 + self.next_id
        other.add(x, new_ids)
        before = self.index.ntotal
        out = attempt(self.index.merge, other)
        if kind == "same":
            assert not raised(out), out
            self.vectors = np.concatenate([self.vectors, as_f32(x)])
            self.ids = np.concatenate([self.ids, new_ids])
            self.next_id += 4
        else:
            assert raised(out), f"merged an incompatible index ({kind})"
            assert self.index.ntotal == before

    @rule()
    def refuse_retraining(self):
        if self.index.ntotal:
            for call in (lambda: self.index.train(np.ones((8, D))),
                         lambda: self.index.set_centroids(self.index.centroids),
                         lambda: self.index.train_codec(np.ones((8, D)))):
                assert raised(attempt(call, allowed=(RuntimeError, ValueError), name="IVFIndex retrain"))

    # -- invariants ----------------------------------------------------------------------------
    @invariant()
    def agrees_with_model(self):
        if not hasattr(self, "index"):
            return
        ix = self.index
        assert ix.ntotal == len(self.ids) == len(ix)
        sizes = ix.list_sizes()
        assert sizes.sum() == ix.ntotal and sizes.shape == (NLIST,)
        stored = np.sort(np.concatenate([ix.list_ids(j) for j in range(NLIST)]))
        np.testing.assert_array_equal(stored, np.sort(self.ids))


TestIndexMachine = IndexMachine.TestCase
TestIndexMachine.settings = settings(examples(60), stateful_step_count=25)


@examples(200)
@given(data=st.data(), codec=st.sampled_from(["f32", "sq8"]))
def test_ivf_rerank_source_or_refuses(data, codec):
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    x = rng.standard_normal((40, D)).astype(np.float32)
    ix = mudg_fast.IVFIndex(D, 3, codec=codec)
    ix.train(x, max_iter=3)
    ix.add(x)
    q = x[:3] + 0.01
    kind = data.draw(st.sampled_from(["array", "callable", "none", "short-callable", "wrong-dim"]))
    rerank = data.draw(int_params(-1, 20))
    k = data.draw(st.integers(1, 8))
    source = {"array": x, "callable": lambda ids: x[ids], "none": None,
              "short-callable": lambda ids: x[ids][:-1], "wrong-dim": np.ones((40, D + 1))}[kind]
    out = attempt(ix.search, q, k, nprobe=3, rerank=rerank, source=source)
    if rerank is None or (rerank == 0 and not int_problem(rerank, 0)):
        assert not raised(out), out  # no re-ranking asked for: source is ignored
        return
    problem = int_problem(rerank) or kind in ("none", "short-callable", "wrong-dim")
    if problem:
        assert raised(out), f"accepted a bad rerank ({kind}, {rerank!r})"
        return
    assert not raised(out), out
    if codec == "f32":  # every list probed, exact codes: the re-ranked results are the true top k
        check_topk(*out, q, x, k)
        return
    # quantised codes: the exact top k among the shortlist the codes produced
    _, shortlist = ix.search(q, max(k, rerank), nprobe=3)
    for i in range(len(q)):
        check_topk(out[0][i:i + 1], out[1][i:i + 1], q[i:i + 1], x, k, candidates=shortlist[i])
