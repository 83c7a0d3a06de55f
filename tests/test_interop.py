"""Export to faiss: the same lists, ids and decoded vectors, so faiss search matches ours."""

import sys

import numpy as np
import pytest

import mudg_fast
from mudg_fast import IVFIndex
from mudg_fast.interop import faiss_sq8_params, ivf_to_faiss

faiss = pytest.importorskip("faiss")

D, NLIST = 33, 16  # odd dim: exercises the kernels' tails on both sides


@pytest.fixture(scope="module")
def data():
    x = mudg_fast.datasets.clustered_unit_vectors(12_000, D, n_clusters=60, seed=1)
    q = mudg_fast.datasets.clustered_unit_vectors(300, D, n_clusters=60, seed=2)
    return x, q


def _built(codec, x, ids=None):
    ix = IVFIndex(D, NLIST, codec=codec)
    ix.train(x, seed=0)
    ix.add(x, ids)
    return ix


def _faiss_search(f, q, k, nprobe):
    f.nprobe = nprobe
    return f.search(q, k)


@pytest.mark.parametrize("codec", ["f32", "f16", "sq8", "sq4"])
def test_export_has_our_lists_and_vectors(codec, data):
    x, _ = data
    ix = _built(codec, x)
    f = ivf_to_faiss(ix)
    assert f.ntotal == ix.ntotal and f.nlist == NLIST and f.d == D
    assert f.metric_type == faiss.METRIC_INNER_PRODUCT and f.is_trained
    kind = {
        "f32": faiss.IndexIVFFlat,
        "sq4": faiss.IndexIVFFlat,
        "f16": faiss.IndexIVFScalarQuantizer,
        "sq8": faiss.IndexIVFScalarQuantizer,
    }[codec]
    assert isinstance(f, kind)
    if isinstance(f, faiss.IndexIVFScalarQuantizer):
        assert not f.by_residual
    np.testing.assert_array_equal(
        faiss.downcast_index(f.quantizer).reconstruct_n(0, NLIST), ix.centroids
    )
    for j in range(NLIST):
        n = f.invlists.list_size(j)
        assert n == ix.list_sizes()[j]
        got = faiss.rev_swig_ptr(f.invlists.get_ids(j), n).copy() if n else np.zeros(0, np.int64)
        np.testing.assert_array_equal(got, ix.list_ids(j))  # same ids, same order
    f.make_direct_map()
    ids = np.random.default_rng(0).choice(len(x), 300, replace=False)
    rec = np.stack([f.reconstruct(int(i)) for i in ids])
    ours = ix.reconstruct(ids)
    if codec == "sq8":  # vmin' + (c + 0.5) / 255 * vdiff == vmin + c * step up to float rounding
        np.testing.assert_allclose(rec, ours, rtol=0, atol=1e-6)
    else:
        np.testing.assert_array_equal(rec, ours)


@pytest.mark.parametrize("codec", ["f32", "f16", "sq8", "sq4"])
@pytest.mark.parametrize("nprobe", [1, 3, NLIST])
def test_faiss_search_matches_ours(codec, nprobe, data):
    x, q = data
    ix = _built(codec, x)
    f = ivf_to_faiss(ix)
    dist, ids = _faiss_search(f, q, 10, nprobe)
    s, i = ix.search(q, 10, nprobe=nprobe)
    # scores are sums over the same decoded values in another order: equal up to rounding
    np.testing.assert_allclose(dist, s, rtol=0, atol=2e-6)
    same = (ids == i).all(axis=1)
    assert same.mean() >= (1.0 if codec == "f32" else 0.98)
    # where ids differ it can only be a near tie: faiss's ids point to our scores
    if not same.all():
        rows = np.flatnonzero(~same)
        full = q[rows] @ ix.reconstruct(np.arange(len(x))).T
        np.testing.assert_allclose(np.take_along_axis(full, ids[rows], 1), s[rows], atol=2e-6)
    if codec == "f32" and nprobe == NLIST:  # all lists probed, no quantisation: exact search
        ks, ki = mudg_fast.knn(q, x, 10)
        np.testing.assert_array_equal(ids, ki)


def test_sq8_mapping_gives_faiss_our_encoder(data):
    x, _ = data
    ix = _built("sq8", x)
    vmin, step = ix.codec_params()
    params = faiss_sq8_params(vmin, step)
    np.testing.assert_allclose(params[:D], vmin - step / 2, rtol=1e-6)
    np.testing.assert_allclose(params[D:], 255 * step, rtol=1e-6)
    f = ivf_to_faiss(ix)
    # faiss encodes fresh vectors to the codes we stored for them (but for values that sit exactly on
    # a decision boundary, where the two float formulas may round apart)
    ours = np.rint((ix.reconstruct(np.arange(4000)) - vmin) / step).astype(np.uint8)
    theirs = f.sq.compute_codes(x[:4000]).reshape(4000, D)
    assert (ours == theirs).mean() > 0.9999
    assert np.abs(ours.astype(int) - theirs).max() <= 1


def test_round_trip_through_faiss_files(data, tmp_path):
    x, q = data
    ix = _built("sq8", x)
    f = ivf_to_faiss(ix, nprobe=4)
    assert f.nprobe == 4
    path = str(tmp_path / "x.faiss")
    faiss.write_index(f, path)
    g = faiss.read_index(path)
    assert g.ntotal == ix.ntotal and g.nprobe == 4
    np.testing.assert_array_equal(g.search(q, 10)[1], f.search(q, 10)[1])
    np.testing.assert_allclose(g.search(q, 10)[0], ix.search(q, 10, nprobe=4)[0], atol=2e-6)
    # the exported index is a normal faiss index: it keeps working after more adds
    g.add(x[:100])
    assert g.ntotal == ix.ntotal + 100
    del f  # the quantizer belongs to the exported index
    assert faiss.downcast_index(g.quantizer).ntotal == NLIST


def test_to_faiss_method_and_custom_ids(data):
    x, q = data
    ids = np.arange(len(x), dtype=np.int64) * 7 + 1_000_000_000_000
    ix = _built("f16", x, ids)
    f = ix.to_faiss()
    got = _faiss_search(f, q, 5, 2)[1]
    np.testing.assert_array_equal(got, ix.search(q, 5, nprobe=2)[1])
    assert np.isin(got, ids).all()


def test_empty_lists_and_empty_index(data):
    x, q = data
    ix = IVFIndex(D, NLIST, codec="sq8").train(x)
    f = ivf_to_faiss(ix)
    assert f.ntotal == 0
    dist, ids = f.search(q[:3], 4)
    assert (ids == -1).all()
    ix.add(x[:5])  # most lists stay empty
    assert ivf_to_faiss(ix).ntotal == 5


def test_errors(data, monkeypatch):
    x, _ = data
    with pytest.raises(ValueError, match="untrained"):
        ivf_to_faiss(IVFIndex(D, NLIST))
    with pytest.raises(TypeError):
        ivf_to_faiss("index")
    dup = _built("f32", x[:200], np.zeros(200, dtype=np.int64))
    with pytest.raises(ValueError, match="more than once"):
        ivf_to_faiss(dup)
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        ivf_to_faiss(_built("f32", x[:200]))
