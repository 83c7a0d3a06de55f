"""The two-level coarse quantizer of IVFIndex: a numpy reference of its answer, exactness when it
scans every cell, agreement with exact assignment measured, determinism, the file record, errors."""

import json
import struct

import numpy as np
import pytest
from conftest import available_simd_levels

import corrupt_helpers as ch
import mudg_fast
from mudg_fast import IVFIndex
from mudg_fast.quantizer import TWO_LEVEL_MIN_LISTS, quantizer_agreement, quantizer_defaults, resolve_quantizer

D, NLIST = 24, 400


@pytest.fixture(scope="module")
def data():
    """Clustered unit vectors with a few exact duplicates (ties)."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((60, D))
    x = centres[rng.integers(0, 60, 12_000)] + 0.7 * rng.standard_normal((12_000, D))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    x[50:60] = x[0]
    return x


@pytest.fixture(scope="module")
def centroids(data):
    return mudg_fast.KMeans(NLIST, seed=0, max_iter=6).fit(data).cluster_centers_


def two_level(centroids, probe=3, cells=20, seed=0, **kw):
    return IVFIndex(D, NLIST, quantizer="two_level", quantizer_cells=cells, quantizer_probe=probe,
                    **kw).set_centroids(centroids, seed=seed)


def numpy_two_level(q, centroids, info_state, probe, k):
    """Reference: the probe best cells by inner product with the cell centres (lower cell on ties),
    then the top k of their centroids (lower centroid on ties)."""
    centres, cell_of = info_state["cell_centres"], info_state["cell_of"]
    # the core scores in float32; rank on float32 values so ties match (lower index first)
    cs32 = (q @ centres.T).astype(np.float32)
    out = np.full((len(q), k), -1, np.int64)
    for i in range(len(q)):
        cells = np.lexsort((np.arange(len(centres)), -cs32[i]))[:probe]
        cand = np.nonzero(np.isin(cell_of, cells))[0]
        s = (q[i] @ centroids[cand].T).astype(np.float32)
        order = np.lexsort((cand, -s))[:k]
        out[i, :len(order)] = cand[order]
    return out


def test_matches_numpy_reference(data, centroids):
    ix = two_level(centroids, probe=3)
    state = ix._ix.quantizer_state()
    q = data[:300]
    _, lists = ix.probe(q, 5)
    ref = numpy_two_level(q, centroids, state, 3, 5)
    # float32 rounding may reorder near-equal scores between numpy's and the kernels' sums; they
    # agree on all but a few entries
    assert (lists == ref).mean() > 0.995
    assert (lists[:, 0] == ref[:, 0]).mean() > 0.99


@pytest.mark.parametrize("k", [1, 8])
def test_exact_when_probe_covers_every_cell(data, centroids, k):
    flat = IVFIndex(D, NLIST, quantizer="flat").set_centroids(centroids)
    ix = two_level(centroids, probe=20, cells=20)
    s0, l0 = flat.probe(data, k)
    s1, l1 = ix.probe(data, k)
    np.testing.assert_array_equal(l1, l0)
    np.testing.assert_array_equal(s1, s0)
    ix.quantizer_probe = 10**6  # beyond the number of cells: still every cell
    np.testing.assert_array_equal(ix.probe(data[:500], k)[1], l0[:500])


def test_add_and_search_exact_when_probe_covers_every_cell(data, centroids):
    flat = IVFIndex(D, NLIST, quantizer="flat").set_centroids(centroids).add(data)
    ix = two_level(centroids, probe=20, cells=20).add(data)
    for j in range(0, NLIST, 37):
        np.testing.assert_array_equal(ix.list_ids(j), flat.list_ids(j))
    np.testing.assert_array_equal(ix.search(data[:200], 10, nprobe=4)[1], flat.search(data[:200], 10, nprobe=4)[1])


def test_agreement_is_measured_and_grows_with_probe(data, centroids):
    ix = two_level(centroids, probe=1)
    top1, kept = [], []
    for p in (1, 2, 3, 5, 8, 20):
        ix.quantizer_probe = p
        a = quantizer_agreement(ix, data[:2000], nprobe=8)
        top1.append(a["top1"])
        kept.append(a["cells_kept"])
    assert top1 == sorted(top1) and kept == sorted(kept)  # more cells scan a superset of centroids
    assert top1[-1] == 1.0 and kept[-1] == 1.0            # every cell: exact
    assert top1[0] < 0.99                                 # one cell is not enough on this data
    # the add path decides lists exactly as probe(., 1) does
    ix.quantizer_probe = 2
    added = IVFIndex(D, NLIST, quantizer="two_level", quantizer_cells=20, quantizer_probe=2).set_centroids(centroids)
    added.add(data[:2000])
    _, first = ix.probe(data[:2000], 1)
    for j in range(0, NLIST, 50):
        np.testing.assert_array_equal(added.list_ids(j), np.nonzero(first[:, 0] == j)[0])


def test_flat_agreement_is_exact(data, centroids):
    a = quantizer_agreement(IVFIndex(D, NLIST, quantizer="flat").set_centroids(centroids), data[:500], nprobe=4)
    assert a["quantizer"] == "flat" and a["top1"] == 1.0 and a["cells_kept"] == 1.0


def test_cells_partition_the_centroids(data, centroids):
    ix = two_level(centroids, cells=25)
    info = ix.quantizer_info()
    assert info["quantizer"] == "two_level" and info["cells"] == 25 and info["probe"] == 3
    assert info["cell_sizes"].sum() == NLIST
    st = ix._ix.quantizer_state()
    # every centroid is in the cell of its nearest centre (the cell k-means' final assignment)
    nearest = np.argmax(centroids.astype(np.float64) @ st["cell_centres"].T.astype(np.float64), axis=1)
    assert (nearest == st["cell_of"]).mean() > 0.99
    assert 25 < info["scores_per_vector"] < NLIST * 0.5 + 25


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_bit_identical_across_threads(data, centroids, threads):
    ref = two_level(centroids, probe=2, num_threads=1)
    ix = two_level(centroids, probe=2, num_threads=threads)
    for k in (1, 6):
        s0, l0 = ref.probe(data, k)
        s1, l1 = ix.probe(data, k)
        np.testing.assert_array_equal(l1, l0)
        np.testing.assert_array_equal(s1, s0)
    assert ix.fingerprint == ref.fingerprint


@pytest.mark.parametrize("level", available_simd_levels())
def test_bit_identical_across_simd_levels(data, centroids, level, simd_level_restored):
    mudg_fast.set_simd_level("scalar")
    ref = two_level(centroids, probe=2)
    s0, l0 = ref.probe(data[:3000], 6)
    mudg_fast.set_simd_level(level)
    ix = two_level(centroids, probe=2)
    s1, l1 = ix.probe(data[:3000], 6)
    np.testing.assert_array_equal(l1, l0)
    np.testing.assert_array_equal(s1, s0)
    s2, l2 = ref.probe(data[:3000], 6)  # an index built at another level, searched at this one
    np.testing.assert_array_equal(l2, l0)
    assert ix.fingerprint == ref.fingerprint


def test_save_load_round_trip(tmp_path, data, centroids):
    ix = two_level(centroids, probe=4).add(data)
    ix.save(tmp_path / "q.ivf")
    back = IVFIndex.load(tmp_path / "q.ivf")
    assert back.quantizer == "two_level" and back.quantizer_cells == 20 and back.quantizer_probe == 4
    assert back.fingerprint == ix.fingerprint
    np.testing.assert_array_equal(back.probe(data[:500], 8)[1], ix.probe(data[:500], 8)[1])
    np.testing.assert_array_equal(back.search(data[:100], 10)[1], ix.search(data[:100], 10)[1])
    back.save(tmp_path / "q2.ivf")
    assert (tmp_path / "q2.ivf").read_bytes() == (tmp_path / "q.ivf").read_bytes()
    raw = (tmp_path / "q.ivf").read_bytes()
    assert ch.extensions_valid(raw)
    off = (ch.header(raw)["params_offset"] + 4 * ch.header(raw)["params_count"] + 7) // 8 * 8
    tag, flags = raw[off:off + 4], struct.unpack_from("<I", raw, off + 4)[0]
    assert tag == b"CQTL" and flags == 1  # required: a reader without it refuses the file


def test_reader_without_the_record_refuses(tmp_path, data, centroids):
    """What an older mudg_fast sees: a required record it does not know."""
    two_level(centroids).save(tmp_path / "q.ivf")
    raw = bytearray((tmp_path / "q.ivf").read_bytes())
    off = (ch.header(raw)["params_offset"] + 4 * ch.header(raw)["params_count"] + 7) // 8 * 8
    raw[off:off + 4] = b"CQTM"  # a tag this version does not know, still required
    (tmp_path / "r.ivf").write_bytes(ch.reseal(bytes(raw)))
    with pytest.raises(ValueError, match="needs a newer mudg_fast"):
        IVFIndex.load(tmp_path / "r.ivf")


@pytest.mark.parametrize("field, value, match", [
    (0, 2, "unknown quantizer kind"), (4, 0, "probe"), (8, 0, "cells"), (8, 10**6, "cells"),
    (16, D + 1, "dim"), (24, NLIST + 1, "nlist")])
def test_damaged_record_is_refused(tmp_path, data, centroids, field, value, match):
    two_level(centroids).save(tmp_path / "q.ivf")
    raw = bytearray((tmp_path / "q.ivf").read_bytes())
    off = (ch.header(raw)["params_offset"] + 4 * ch.header(raw)["params_count"] + 7) // 8 * 8 + 16
    struct.pack_into("<I" if field < 8 else "<Q", raw, off + field, value)
    (tmp_path / "d.ivf").write_bytes(ch.reseal(bytes(raw)))
    with pytest.raises(ValueError, match=f"corrupted.*CQTL.*{match}"):
        IVFIndex.load(tmp_path / "d.ivf")


def test_damaged_cell_entry_is_refused(tmp_path, data, centroids):
    two_level(centroids).save(tmp_path / "q.ivf")
    raw = bytearray((tmp_path / "q.ivf").read_bytes())
    h = ch.header(raw)
    off = (h["params_offset"] + 4 * h["params_count"] + 7) // 8 * 8 + 16 + 32 + 20 * D * 4
    struct.pack_into("<I", raw, off + 4 * 7, 20)  # centroid 7 in cell 20 of 20
    (tmp_path / "d.ivf").write_bytes(ch.reseal(bytes(raw)))
    with pytest.raises(ValueError, match="cell 20 out of range"):
        IVFIndex.load(tmp_path / "d.ivf")
    raw2 = bytearray((tmp_path / "q.ivf").read_bytes())
    struct.pack_into("<f", raw2, off - 4, float("nan"))  # a cell centre
    (tmp_path / "n.ivf").write_bytes(ch.reseal(bytes(raw2)))
    with pytest.raises(ValueError, match="NaN"):
        IVFIndex.load(tmp_path / "n.ivf")


def test_fingerprint_and_merge(data, centroids):
    flat = IVFIndex(D, NLIST, quantizer="flat").set_centroids(centroids)
    a = two_level(centroids, probe=3)
    b = two_level(centroids, probe=3)
    assert a.fingerprint == b.fingerprint != flat.fingerprint
    a.add(data[:100])
    b.add(data[100:200], ids=np.arange(100, 200))
    a.merge(b)
    assert a.ntotal == 200
    c = two_level(centroids, probe=3, seed=1)  # other cells
    assert c.fingerprint != b.fingerprint
    with pytest.raises(ValueError, match="trained differently"):
        c.merge(b)
    b.quantizer_probe = 5  # a different assignment rule from now on
    assert b.fingerprint != a.fingerprint


def test_set_quantizer_later_and_back_to_flat(data, centroids):
    ix = IVFIndex(D, NLIST, quantizer="flat").set_centroids(centroids).add(data[:1000])
    fp = ix.fingerprint
    ix.set_quantizer("two_level", cells=20, probe=20)
    assert ix.quantizer == "two_level" and ix.ntotal == 1000 and ix.fingerprint != fp
    ix.set_quantizer("flat")
    assert ix.quantizer == "flat" and ix.fingerprint == fp and ix.quantizer_probe is None


def test_auto_and_defaults():
    assert TWO_LEVEL_MIN_LISTS == 16384
    assert IVFIndex(8, 16383).quantizer == "flat"
    big = IVFIndex(8, 16384)
    assert big.quantizer == "two_level" and (big.quantizer_cells, big.quantizer_probe) == (128, 8)
    assert quantizer_defaults(131072) == (362, 13)
    assert resolve_quantizer(131072, "auto") == ("two_level", 362, 13)
    assert resolve_quantizer(1000, "two_level", cells=300) == ("two_level", 300, 10)
    assert resolve_quantizer(100, "two_level", cells=5, probe=99) == ("two_level", 5, 99)


def test_train_installs_the_quantizer(data):
    ix = IVFIndex(D, 64, quantizer="two_level", quantizer_probe=2).train(data, max_iter=3)
    assert ix.quantizer == "two_level" and ix.quantizer_info()["cells"] == 8
    captions = data[::-1].copy()
    p = IVFIndex(D, 64, quantizer="two_level").train_paired(data, captions, pairing="given", max_iter=3,
                                                             method="two_level")
    assert p.quantizer == "two_level"
    a = quantizer_agreement(p, captions[:1000], nprobe=4)
    assert 0.5 < a["top1"] <= 1.0


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(quantizer="hnsw"), ValueError, "quantizer must be one of"),
    (dict(quantizer="two_level", quantizer_probe=0), ValueError, "quantizer_probe"),
    (dict(quantizer="two_level", quantizer_probe=-3), ValueError, "quantizer_probe"),
    (dict(quantizer="two_level", quantizer_probe=2.0), TypeError, "quantizer_probe"),
    (dict(quantizer="two_level", quantizer_cells=0), ValueError, "quantizer_cells"),
    (dict(quantizer="two_level", quantizer_cells=NLIST + 1), ValueError, "quantizer_cells"),
])
def test_bad_parameters(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        IVFIndex(D, NLIST, **kwargs)


def test_too_few_lists_for_two_levels():
    with pytest.raises(ValueError, match="too small for a two-level quantizer"):
        IVFIndex(D, 3, quantizer="two_level")
    with pytest.raises(ValueError, match="too small for a two-level quantizer"):
        IVFIndex(D, 3, quantizer="flat").set_quantizer("two_level")
    assert IVFIndex(D, 3, quantizer="auto").quantizer == "flat"


def test_probe_setter_errors(data, centroids):
    flat = IVFIndex(D, NLIST, quantizer="flat").set_centroids(centroids)
    with pytest.raises(ValueError, match="flat"):
        flat.quantizer_probe = 4
    ix = two_level(centroids)
    with pytest.raises(ValueError, match="quantizer_probe"):
        ix.quantizer_probe = 0
    assert ix.quantizer_probe == 3  # unchanged by the refused value
    with pytest.raises(ValueError, match="probe must be >= 1"):
        ix._ix.set_quantizer_probe(0)  # the core checks on its own


def test_old_files_load_with_a_flat_quantizer():
    from pathlib import Path

    here = Path(__file__).parent / "data"
    for name in ("ivf_v1_f32.bin", "ivf_v1_sq8.bin", "ivf_v2_f32.bin", "ivf_v2_sq8.bin"):
        ix = IVFIndex.load(here / name)
        assert ix.quantizer == "flat" and ix.quantizer_probe is None


def test_faiss_export_chooses_the_same_lists(data, centroids):
    faiss = pytest.importorskip("faiss")
    ix = two_level(centroids, probe=3).add(data[:3000])
    out = ix.to_faiss()
    out.nprobe = 6
    q = faiss.downcast_index(out.quantizer)
    assert isinstance(q, faiss.IndexIVFFlat) and q.nprobe == 3 and q.nlist == 20 and q.ntotal == NLIST
    x = data[3000:5000]
    _, ours = ix.probe(x, 6)
    _, theirs = q.search(x, 6)
    np.testing.assert_array_equal(theirs[:, 0], ours[:, 0])
    assert (theirs == ours).mean() > 0.999  # exact ties may come out in another order
    s_ours, i_ours = ix.search(data[:200], 10, nprobe=6)
    s_theirs, i_theirs = out.search(data[:200], 10)
    np.testing.assert_allclose(s_theirs, s_ours, rtol=1e-5, atol=1e-5)
    untied = (np.diff(s_ours, axis=1) < -1e-5).all(axis=1)  # the duplicates of data[0] tie
    assert untied.sum() > 150
    np.testing.assert_array_equal(i_theirs[untied], i_ours[untied])
    faiss.write_index(out, str(__import__("tempfile").mkdtemp()) + "/x.faiss")


# --- diagnostics and the build --------------------------------------------------------------------

def test_evaluate_recall_reports_the_quantizer(data, centroids):
    from mudg_fast.recall import RecallResult, evaluate_recall

    q = data[::40]
    flat = IVFIndex(D, NLIST, quantizer="flat").set_centroids(centroids).add(data)
    r = evaluate_recall(flat, q, data, k=10, nprobes=(1, 8), min_seconds=0)
    assert r.quantizer == "flat" and r.quantizer_top1 == 1.0 and r.cells_kept == [1.0, 1.0]
    assert all(np.isfinite(c) and c > 0 for c in r.coarse_share)  # a time ratio: no bound on a shared machine
    ix = two_level(centroids, probe=2).add(data)
    r = evaluate_recall(ix, q, data, k=10, nprobes=(1, 8), min_seconds=0)
    a1 = quantizer_agreement(ix, q, nprobe=1)
    a8 = quantizer_agreement(ix, q, nprobe=8)
    assert r.quantizer == "two_level" and r.quantizer_top1 == a1["top1"] < 1.0
    assert r.cells_kept == pytest.approx([a1["cells_kept"], a8["cells_kept"]])
    assert r.cells_kept[1] < 1.0
    back = RecallResult.from_dict(json_round_trip(r.to_dict()))
    assert back.quantizer_top1 == r.quantizer_top1 and back.cells_kept == r.cells_kept
    assert "top-1 agreement" in r.table() and "coarse share" in r.table()


def json_round_trip(d):
    import json

    return json.loads(json.dumps(d))


def test_eval_index_prints_the_quantizer(tmp_path, data, centroids, capsys):
    import json

    from mudg_fast.cli import main

    two_level(centroids, probe=2).add(data).save(tmp_path / "q.ivf")
    np.save(tmp_path / "db.npy", data)
    np.save(tmp_path / "queries.npy", data[::60])
    rc = main(["eval-index", "--index", str(tmp_path / "q.ivf"), "--queries", str(tmp_path / "queries.npy"),
               "--database", str(tmp_path / "db.npy"), "--nprobes", "1,8", "--report", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "two_level quantizer, top-1 agreement with exact assignment" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    res = rep["results"]["q.ivf"]
    assert res["quantizer"] == "two_level" and 0 < res["quantizer_top1"] < 1
    assert {"cells_kept", "coarse_seconds", "coarse_share"} <= set(res["results"][0])
    assert rep["indexes"]["q.ivf"]["quantizer"] == {"quantizer": "two_level", "cells": 20, "probe": 2,
                                                    "scores_per_vector": pytest.approx(
                                                        two_level(centroids, probe=2).quantizer_info()[
                                                            "scores_per_vector"])}


def test_build_index_passes_method_and_quantizer(tmp_path):
    from shard_helpers import make_collection

    from mudg_fast.build import BuildError, build_index

    root, images, captions = make_collection(tmp_path / "coll", n=6000, d=16, shard_rows=2000)
    kw = dict(nlist=64, train_size=3000, batch_size=1000, progress=False, checkpoint_every=1)
    built = build_index(root / "img_emb", root / "text_emb", out=tmp_path / "a.ivf", kmeans_method="two_level",
                        quantizer="two_level", quantizer_probe=3, **kw)
    assert built.quantizer == "two_level" and built.quantizer_probe == 3 and built.ntotal == 6000
    manifest = json.loads((tmp_path / "a.ivf.build" / "manifest.json").read_text())
    params = manifest["fingerprint"]["params"]
    assert params["kmeans_method"] == "two_level" and params["quantizer"] == "two_level"
    # the same centroids from the library: two-level paired k-means, then the quantizer
    plain = build_index(root / "img_emb", root / "text_emb", out=tmp_path / "b.ivf", **kw)
    assert plain.quantizer == "flat"
    params = json.loads((tmp_path / "b.ivf.build" / "manifest.json").read_text())["fingerprint"]["params"]
    assert "kmeans_method" not in params and "quantizer" not in params  # flat builds record what they did
    assert not np.array_equal(plain.centroids, built.centroids)
    with pytest.raises(BuildError, match="kmeans_method"):
        build_index(root / "img_emb", out=tmp_path / "c.ivf", kmeans_method="fast", **kw)
    with pytest.raises(BuildError, match="quantizer_probe"):
        build_index(root / "img_emb", out=tmp_path / "c.ivf", quantizer="two_level", quantizer_probe=0, **kw)
    with pytest.raises(BuildError, match="too small for a two-level quantizer"):
        build_index(root / "img_emb", out=tmp_path / "c.ivf", quantizer="two_level", **(kw | {"nlist": 3}))
