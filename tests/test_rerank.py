"""mudg_fast.rerank and IVFIndex.search(rerank=, source=): exact re-ranking of shortlists.

Checked against a plain numpy reference (distinct valid candidates, best k by score then lower
id): bit-exact on integer-valued data (every summation order gives the same float32, with many
ties), and on real-valued data with the scores of the exact search (mudg_fast.knn, the same fma
chain) for the same pairs. Sources: float32 / float16 arrays, memory maps, shard folders (mixed
dtypes, empty shards), EmbeddingShards, callables, and "auto" from build_index's metadata.
"""

import re

import numpy as np
import pytest
from conftest import available_simd_levels
from shard_helpers import make_collection

import mudg_fast
from mudg_fast import IVFIndex
from mudg_fast.shards import EmbeddingShards, write_collection


def reference(q, cand, k, rows, scores_of=None):
    """numpy: per query the distinct ids >= 0 of its row, scored (float64 dot unless scores_of),
    sorted by (score desc, id asc), first k, padded with (-inf, -1)."""
    nq = q.shape[0]
    out_s = np.full((nq, k), -np.inf, np.float32)
    out_i = np.full((nq, k), -1, np.int64)
    for i in range(nq):
        ids = np.unique(cand[i][cand[i] >= 0])
        if scores_of is None:
            s = (rows[ids].astype(np.float64) @ q[i].astype(np.float64)).astype(np.float32)
        else:
            s = scores_of(q[i], ids)
        order = np.lexsort((ids, -s.astype(np.float64)))[:k]
        out_s[i, :len(order)] = s[order]
        out_i[i, :len(order)] = ids[order]
    return out_s, out_i


def knn_scores(rows):
    """The exact search's score of (query, id) for each id: the fma chain every kernel uses."""
    def scores(q, ids):
        if not len(ids):
            return np.zeros(0, np.float32)
        s, pos = mudg_fast.knn(q[None], rows[ids].astype(np.float32), len(ids))
        out = np.empty(len(ids), np.float32)
        out[pos[0]] = s[0]
        return out
    return scores


def shortlists(rng, nq, length, n, *, pad=0.15, repeat=0.15):
    """Random candidate rows over [0, n): some -1 padding, some repeated ids, one row all padding."""
    c = rng.integers(0, n, (nq, length))
    c[rng.random((nq, length)) < pad] = -1
    for i in range(nq):
        rep = rng.random(length) < repeat
        c[i, rep] = rng.choice(c[i], rep.sum())
    c[nq // 2] = -1
    return c


def assert_same(got, want):
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0].view(np.uint32), want[0].view(np.uint32))  # bit for bit


@pytest.fixture
def int_data():
    """Integer-valued rows and queries: all products and sums exact in float32, many ties."""
    rng = np.random.default_rng(7)
    x = rng.integers(-3, 4, (500, 20)).astype(np.float32)
    q = rng.integers(-3, 4, (37, 20)).astype(np.float32)
    return x, q, shortlists(rng, 37, 60, 500)


SOURCES = ["array", "memmap", "folder", "shards", "callable"]


def make_source(kind, x, dtype, tmp_path):
    """The rows of x (exactly representable in dtype) as a source of the given kind."""
    a = np.ascontiguousarray(x, dtype=dtype)
    if kind == "array":
        return a
    if kind == "memmap":
        np.save(tmp_path / "x.npy", a)
        return np.load(tmp_path / "x.npy", mmap_mode="r")
    if kind in ("folder", "shards"):
        write_collection(tmp_path / "col", a, shard_rows=70, dtype=dtype)
        return tmp_path / "col" / "img_emb" if kind == "folder" else EmbeddingShards(tmp_path / "col" / "img_emb")
    return lambda ids: a[ids]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("kind", SOURCES)
def test_equals_numpy_reference_on_exact_integer_data(int_data, tmp_path, kind, dtype):
    x, q, cand = int_data
    src = make_source(kind, x, dtype, tmp_path)
    for k in (1, 10, 60, 75):  # 75 > the shortlist: padded
        got = mudg_fast.rerank(q, cand, k, src)
        assert got[0].dtype == np.float32 and got[1].dtype == np.int64 and got[0].shape == (37, k)
        assert_same(got, reference(q, cand, k, x))
    assert (got[1][37 // 2] == -1).all() and np.isneginf(got[0][37 // 2]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("kind", SOURCES)
def test_scores_equal_the_exact_search_on_real_data(rng, tmp_path, kind, dtype):
    x = rng.standard_normal((400, 33)).astype(dtype).astype(np.float32)
    q = rng.standard_normal((25, 33)).astype(np.float32)
    cand = shortlists(rng, 25, 50, 400)
    got = mudg_fast.rerank(q, cand, 12, make_source(kind, x, dtype, tmp_path))
    assert_same(got, reference(q, cand, 12, x, scores_of=knn_scores(x)))
    want = reference(q, cand, 12, x)  # and the float64 numpy scores to rounding
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)


def test_a_folder_of_mixed_shards(rng, tmp_path):
    """float16 and float32 shards, an empty shard, a collection root instead of img_emb/."""
    x = rng.standard_normal((300, 16)).astype(np.float16).astype(np.float32)
    folder = tmp_path / "root" / "img_emb"
    folder.mkdir(parents=True)
    np.save(folder / "img_emb_0.npy", x[:100].astype(np.float16))
    np.save(folder / "img_emb_1.npy", np.zeros((0, 16), np.float32))
    np.save(folder / "img_emb_2.npy", x[100:250].astype(np.float32))
    np.save(folder / "img_emb_3.npy", x[250:].astype(np.float16))
    q = rng.standard_normal((20, 16)).astype(np.float32)
    cand = shortlists(rng, 20, 40, 300)
    want = reference(q, cand, 8, x, scores_of=knn_scores(x))
    assert_same(mudg_fast.rerank(q, cand, 8, folder), want)
    assert_same(mudg_fast.rerank(q, cand, 8, tmp_path / "root"), want)


def test_one_query_and_empty_inputs(int_data):
    x, q, cand = int_data
    s, i = mudg_fast.rerank(q[0], cand[0], 5, x)  # 1-D query and shortlist
    assert_same((s, i), reference(q[:1], cand[:1], 5, x))
    s, i = mudg_fast.rerank(q[:0], cand[:0], 5, x)
    assert s.shape == i.shape == (0, 5)
    s, i = mudg_fast.rerank(q, np.full((37, 0), 0), 3, x)  # empty shortlists
    assert (i == -1).all() and np.isneginf(s).all()
    s, i = mudg_fast.rerank(q, np.full((37, 4), -1), 3, np.zeros((0, 20), np.float32))  # empty source
    assert (i == -1).all()


@pytest.mark.parametrize("kind", ["array", "folder", "shards"])
def test_ids_beyond_the_source_are_named(int_data, tmp_path, kind):
    x, q, cand = int_data
    cand = cand.copy()
    cand[3, 7] = 500
    with pytest.raises(ValueError, match=re.escape("candidates[3, 7] = 500 is out of range: the source holds 500 rows")):
        mudg_fast.rerank(q, cand, 5, make_source(kind, x, np.float16, tmp_path))
    cand[3, 7] = -2
    with pytest.raises(ValueError, match=re.escape("candidates[3, 7] = -2: ids must be >= 0 (-1 marks an empty slot)")):
        mudg_fast.rerank(q, cand, 5, x)


def test_a_callable_sees_ascending_distinct_ids_and_its_errors_propagate(int_data):
    x, q, cand = int_data
    calls = []

    def fetch(ids):
        calls.append(ids.copy())
        return x[ids]

    assert_same(mudg_fast.rerank(q, cand, 9, fetch), reference(q, cand, 9, x))
    for ids in calls:
        assert ids.dtype == np.int64 and (np.diff(ids) > 0).all() and ids.min() >= 0
    assert np.array_equal(np.unique(np.concatenate(calls)), np.unique(cand[cand >= 0]))

    def broken(ids):
        raise KeyError(f"no row {ids[0]}")

    with pytest.raises(KeyError, match="no row"):
        mudg_fast.rerank(q, cand, 3, broken)
    cand_out = cand.copy()
    cand_out[0, 0] = 10**6  # a callable decides itself what is in range
    with pytest.raises(IndexError):
        mudg_fast.rerank(q, cand_out, 3, lambda ids: x[ids])


def test_bad_sources_and_arguments_raise_clear_errors(int_data, tmp_path):
    x, q, cand = int_data
    with pytest.raises(TypeError, match="float64 values; re-ranking reads float32 or float16"):
        mudg_fast.rerank(q, cand, 5, x.astype(np.float64))
    with pytest.raises(TypeError, match="int32"):
        mudg_fast.rerank(q, cand, 5, x.astype(np.int32))
    with pytest.raises(ValueError, match="the queries have 20 dimensions but the source has 19"):
        mudg_fast.rerank(q, cand, 5, x[:, :19])
    with pytest.raises(ValueError, match="not contiguous"):
        mudg_fast.rerank(q, cand, 5, np.asfortranarray(x))
    with pytest.raises(TypeError, match="float64"):
        mudg_fast.rerank(q, cand, 5, lambda ids: x[ids].astype(np.float64))
    with pytest.raises(ValueError, match=re.escape("source returned shape")):
        mudg_fast.rerank(q, cand, 5, lambda ids: x[ids][:, :5])
    with pytest.raises(ValueError, match=re.escape("source returned shape")):
        mudg_fast.rerank(q, cand, 5, lambda ids: x[ids][:-1])
    with pytest.raises(TypeError, match=re.escape("the rows source(ids) returned must hold float32 or float16")):
        mudg_fast.rerank(q, cand, 5, lambda ids: None)
    write_collection(tmp_path / "c64", x, shard_rows=200, dtype=np.float64)
    with pytest.raises(TypeError, match="img_emb_0.npy holds float64"):
        mudg_fast.rerank(q, cand, 5, tmp_path / "c64" / "img_emb")
    write_collection(tmp_path / "c8", x[:, :8], shard_rows=200, dtype=np.float16)
    with pytest.raises(ValueError, match="the queries have 20 dimensions but the source has 8"):
        mudg_fast.rerank(q, cand, 5, tmp_path / "c8")
    with pytest.raises(ValueError, match="c8/img_emb have 8 dimensions but the queries have 20"):
        IVFIndex(20, 4).set_centroids(x[:4]).add(x).search(q, 5, rerank=10, source=tmp_path / "c8")
    with pytest.raises(ValueError, match="the source has 19 dimensions but the queries have 20"):
        IVFIndex(20, 4).set_centroids(x[:4]).add(x).search(q, 5, rerank=10, source=x[:, :19])
    with pytest.raises(FileNotFoundError):
        mudg_fast.rerank(q, cand, 5, tmp_path / "missing")
    with pytest.raises(TypeError, match="source must be"):
        mudg_fast.rerank(q, cand, 5, 3.5)
    with pytest.raises(ValueError, match="IVFIndex.search"):
        mudg_fast.rerank(q, cand, 5, "auto")
    with pytest.raises(TypeError, match="integer array of ids"):
        mudg_fast.rerank(q, cand.astype(np.float32), 5, x)
    with pytest.raises(ValueError, match="one row per query"):
        mudg_fast.rerank(q, cand[:5], 5, x)
    with pytest.raises(ValueError, match="k must be >= 1"):
        mudg_fast.rerank(q, cand, 0, x)
    with pytest.raises(ValueError, match="the queries have 3 dimensions but the source has 20"):
        mudg_fast.rerank(q[:, :3], cand, 5, x)
    bad = x.copy()
    bad[123, 4] = np.nan
    with pytest.raises(ValueError, match="source row 123 is nan: that row holds NaN or infinite values"):
        mudg_fast.rerank(q, np.full((37, 3), 123), 5, bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_identical_at_every_simd_level_and_thread_count(rng, simd_level_restored, dtype):
    x = rng.standard_normal((3000, 77)).astype(dtype)
    q = rng.standard_normal((700, 77)).astype(np.float32)  # several blocks of queries
    cand = shortlists(rng, 700, 90, 3000)
    runs = {}
    for level in available_simd_levels():
        mudg_fast.set_simd_level(level)
        for threads in (1, 2, 3):
            runs[(level, threads)] = mudg_fast.rerank(q, cand, 20, x, num_threads=threads)
            runs[(level, threads, "callable")] = mudg_fast.rerank(q, cand, 20, lambda ids: x[ids], num_threads=threads)
    first = runs[("scalar", 1)]
    assert_same(first, reference(q, cand, 20, x.astype(np.float32), scores_of=knn_scores(x.astype(np.float32))))
    for key, r in runs.items():
        assert_same(r, first)


# -- through the index -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """A paired collection as float16 shards and indexes built from it by build_index."""
    tmp = tmp_path_factory.mktemp("rerank")
    root, images, captions = make_collection(tmp / "col", n=6000, d=32, shard_rows=1500)
    indexes = {codec: mudg_fast.build_index(root / "img_emb", root / "text_emb", nlist=32, codec=codec,
                                            out=tmp / f"{codec}.bin", progress=False, max_iter=5)
               for codec in ("f32", "sq4")}
    return root, images, captions, indexes


def test_build_index_records_its_source(collection):
    root, images, _, indexes = collection
    # build_index returns the index loaded back from its file: the metadata went through it
    meta = indexes["sq4"].metadata["source"]
    assert meta == {"img_emb": str((root / "img_emb").resolve()), "ntotal": 6000, "dim": 32, "dtype": "float16"}


def test_search_rerank_from_every_source_equals_rerank_of_the_shortlist(collection, tmp_path):
    root, images, captions, indexes = collection
    ix = indexes["sq4"]
    q = captions[:300]
    _, shortlist = ix.search(q, 50, nprobe=4)
    want = mudg_fast.rerank(q, shortlist, 10, images)
    np.save(tmp_path / "img.npy", images.astype(np.float16))
    for source in (images, images.astype(np.float16), np.load(tmp_path / "img.npy", mmap_mode="r"),
                   root / "img_emb", root, str(root / "img_emb"), "auto", lambda ids: images[ids]):
        assert_same(ix.search(q, 10, nprobe=4, rerank=50, source=source), want)
    # re-ranking recovers recall lost to the 4-bit codes
    _, gt = mudg_fast.knn(q, images, 10)
    rec = lambda ids: np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, gt)])  # noqa: E731
    assert rec(want[1]) > rec(ix.search(q, 10, nprobe=4)[1]) + 0.05


def test_rerank_of_an_f32_index_is_its_plain_search(collection):
    root, images, captions, indexes = collection
    ix = indexes["f32"]
    for k, r in ((10, 10), (10, 40), (7, 1)):
        assert_same(ix.search(captions[:400], k, nprobe=5, rerank=r, source="auto"), ix.search(captions[:400], k, nprobe=5))


def test_search_rerank_in_chunks_of_queries(collection, monkeypatch):
    import mudg_fast.reranking as index_module

    root, images, captions, indexes = collection
    ix = indexes["sq4"]
    whole = ix.search(captions[:500], 10, nprobe=4, rerank=30, source=images)
    monkeypatch.setattr(index_module, "_RERANK_CHUNK_SLOTS", 30 * 64)  # 64 queries per chunk
    assert_same(ix.search(captions[:500], 10, nprobe=4, rerank=30, source=images), whole)
    s, i = ix.search(captions[:0], 10, nprobe=4, rerank=30, source=images)
    assert s.shape == i.shape == (0, 10)


def test_source_auto_refuses_a_missing_or_changed_folder(collection, tmp_path):
    root, images, captions, indexes = collection
    q = captions[:20]
    plain = IVFIndex(32, 8, codec="sq8").train(images[:2000], max_iter=3)
    plain.add(images[:2000])
    with pytest.raises(ValueError, match="records no source"):
        plain.search(q, 5, rerank=20, source="auto")
    with pytest.raises(ValueError, match="rerank needs source="):
        plain.search(q, 5, rerank=20)
    # a copy of the collection, indexed, then changed
    import shutil

    col = tmp_path / "col"
    shutil.copytree(root, col)
    ix = mudg_fast.build_index(col / "img_emb", nlist=16, codec="sq8", out=tmp_path / "ix.bin", progress=False,
                               max_iter=3)
    assert ix.metadata["source"]["img_emb"] == str((col / "img_emb").resolve())
    ix.search(q, 5, rerank=20, source="auto")
    np.save(col / "img_emb" / "img_emb_9.npy", images[:10].astype(np.float16))
    with pytest.raises(ValueError, match="now holds 6010 x 32 vectors, but the index was built from 6000 x 32"):
        ix.search(q, 5, rerank=20, source="auto")
    shutil.rmtree(col)
    with pytest.raises(ValueError, match="cannot be read now"):
        ix.search(q, 5, rerank=20, source="auto")
