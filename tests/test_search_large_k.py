"""Large k in IVF search: the per-row top-k buffers, their selections and the thresholds that list-major
search shares between threads never change a result.

The reference for a query is the whole candidate set its probed lists hold: ``search`` with k at least
the number of candidates keeps every one (no selection runs, nothing is pruned), and that list is
checked against numpy over the decoded vectors (the ids of the probed lists, scores to rounding,
order by score then lower id). Every smaller k, in both modes, at 1/2/3 threads, at every SIMD
level, over one index and over parts, must then be its first k entries, bit for bit.
"""

import numpy as np
import pytest
from conftest import available_simd_levels

import mudg_fast
from mudg_fast import IVFIndex
from mudg_fast.parts import ShardedIndex

N, D, NLIST, NQ, NPROBE = 5_000, 24, 12, 80, 7
KS = (1, 10, 100, 300, 1000)
CUTS = (0, 1_700, 1_703, 3_900, N)


@pytest.fixture(scope="module", params=["spread", "ties"])
def data(request):
    """Two corpora. "spread": clustered unit vectors with exact duplicates (ties inside one list). "ties":
    small integers, so that scores are integers and equal across lists (and so across threads in
    list-major search), where a threshold shared between threads decides by id."""
    rng = np.random.default_rng(21)
    if request.param == "spread":
        centres = rng.standard_normal((30, D)).astype(np.float32)
        x = centres[rng.integers(0, 30, N)] + 0.7 * rng.standard_normal((N, D)).astype(np.float32)
        x[2_500:3_700] = x[:1_200]  # exact duplicates: equal scores, the lower id first
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q = x[rng.integers(0, N, NQ)] + 0.3 * rng.standard_normal((NQ, D)).astype(np.float32)
        q[:10] = x[:10]  # queries equal to duplicated vectors
    else:
        centres = rng.integers(-3, 4, (30, D))
        x = (centres[rng.integers(0, 30, N)] + rng.integers(-1, 2, (N, D))).astype(np.float32)
        q = rng.integers(-1, 2, (NQ, D)).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(q, dtype=np.float32)


@pytest.fixture(scope="module", params=["f32", "f16", "sq8", "sq4"])
def indexes(request, data, tmp_path_factory):
    x, _ = data
    codec = request.param
    tmp = tmp_path_factory.mktemp(f"largek_{codec}")
    IVFIndex(D, NLIST, codec=codec).train(x[::2], seed=3).save(tmp / "trained.ivf")
    whole = IVFIndex.load(tmp / "trained.ivf", mmap=False).add(x)
    parts = []
    for a, b in zip(CUTS[:-1], CUTS[1:]):
        p = IVFIndex.load(tmp / "trained.ivf", mmap=False)
        parts.append(p.add(x[a:b], ids=np.arange(a, b)))
    return whole, ShardedIndex(parts)


def _full(ix, q):
    """Every candidate of the probed lists, best first (k = all: no selection, no pruning)."""
    s, i = ix.search(q, N, nprobe=NPROBE, mode="per_query")
    return s, i


def test_the_full_candidate_list_matches_numpy(indexes, data):
    whole, _ = indexes
    _, q = data
    s, i = _full(whole, q)
    _, lists = whole.probe(q, NPROBE)
    decoded = whole.reconstruct(np.arange(N))
    for r in range(NQ):
        want_ids = np.concatenate([whole.list_ids(int(lst)) for lst in lists[r] if lst >= 0])
        got = i[r][i[r] >= 0]
        assert np.array_equal(np.sort(got), np.sort(want_ids))
        assert np.all(np.isneginf(s[r][i[r] < 0]))
        ref = decoded[got].astype(np.float64) @ q[r].astype(np.float64)
        np.testing.assert_allclose(s[r][: got.size], ref, rtol=1e-5, atol=2e-5)
        # best first: score descending, equal scores by ascending id. sq8 ranks by the score
        # before a per-query constant is added, after which two scores may round to one value:
        # there only the descending order is checked.
        assert np.all(np.diff(s[r][: got.size]) <= 0)
        if whole.codec != "sq8":
            order = np.lexsort((got, -s[r][: got.size].astype(np.float64)))
            assert np.array_equal(order, np.arange(got.size))
    assert (i[:, 0] >= 0).all() and min((row >= 0).sum() for row in i) > max(KS)  # k = 1000 selects


def _same(got, want, what):
    assert np.array_equal(got[1], want[1]), what
    assert np.array_equal(got[0].view(np.int32), want[0].view(np.int32)), what  # score bits


@pytest.mark.parametrize("level", available_simd_levels())
def test_every_k_is_the_head_of_the_full_list(indexes, data, level, simd_level_restored):
    whole, sharded = indexes
    _, q = data
    full_s, full_i = _full(whole, q)
    mudg_fast.set_simd_level(level)
    for k in KS:
        want = (full_s[:, :k], full_i[:, :k])
        for mode in ("per_query", "list_major"):
            for threads in (1, 2, 3) if level == available_simd_levels()[-1] else (2,):
                for name, ix in (("one index", whole), ("parts", sharded)):
                    ix.num_threads = threads
                    _same(ix.search(q, k, nprobe=NPROBE, mode=mode), want,
                          f"{name}, k={k}, {mode}, {threads} threads, {level}")


def test_k_beyond_the_candidates_pads(indexes, data):
    whole, _ = indexes
    _, q = data
    s, i = whole.search(q[:3], N + 7, nprobe=1, mode="list_major")
    n_cand = whole.list_sizes()[whole.probe(q[:3], 1)[1][:, 0]]
    for r in range(3):
        assert (i[r, : n_cand[r]] >= 0).all() and (i[r, n_cand[r]:] == -1).all()
        assert np.isneginf(s[r, n_cand[r]:]).all()
