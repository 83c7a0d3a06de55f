"""IVFIndex: exactness against knn, list-major == per-query, codecs, persistence, merge."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import available_simd_levels
from make_golden import build as build_golden
from make_golden import GOLDEN, GOLDEN_METADATA, golden_inputs

import mudg_fast
from mudg_fast import IVFIndex

CODECS = ["f32", "f16", "sq8", "sq4"]
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def corpus():
    xb = mudg_fast.datasets.clustered_unit_vectors(6000, 40, n_clusters=60, seed=3)
    xq = mudg_fast.datasets.clustered_unit_vectors(150, 40, n_clusters=60, seed=4, centre_seed=3)
    return xb, xq


@pytest.fixture(scope="module")
def trained(corpus):
    xb, _ = corpus
    out = {}
    for codec in CODECS:
        ix = IVFIndex(40, 24, codec=codec).train(xb, seed=1)
        ix.add(xb)
        out[codec] = ix
    return out


def recall(ids, gt):
    return np.mean([len(set(a[a >= 0]) & set(b)) / len(b) for a, b in zip(ids, gt)])


def test_full_probe_f32_equals_exact_search(trained, corpus):
    xb, xq = corpus
    ix = trained["f32"]
    for k in (1, 10, 37):
        s, i = ix.search(xq, k, nprobe=ix.nlist)
        es, ei = mudg_fast.knn(xq, xb, k)
        np.testing.assert_array_equal(i, ei)
        np.testing.assert_array_equal(s, es)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("nprobe", [1, 3, 24])
def test_list_major_equals_per_query(trained, corpus, codec, nprobe):
    _, xq = corpus
    ix = trained[codec]
    a = ix.search(xq, 12, nprobe=nprobe, mode="list_major")
    b = ix.search(xq, 12, nprobe=nprobe, mode="per_query")
    c = ix.search(xq, 12, nprobe=nprobe)  # auto
    for x in (b, c):
        np.testing.assert_array_equal(a[0], x[0])
        np.testing.assert_array_equal(a[1], x[1])


@pytest.mark.parametrize("codec", CODECS)
def test_results_score_the_decoded_vectors(trained, corpus, codec):
    """Every returned score is the inner product with the stored (decoded) vector."""
    _, xq = corpus
    ix = trained[codec]
    s, i = ix.search(xq[:20], 8, nprobe=4)
    for row in range(20):
        dec = ix.reconstruct(i[row])
        np.testing.assert_allclose(dec @ xq[row], s[row], rtol=1e-4, atol=2e-5)
        assert (np.diff(s[row]) <= 0).all()


@pytest.mark.parametrize("codec", CODECS)
def test_probed_lists_are_scanned_exactly(trained, corpus, codec):
    """Against a brute-force numpy scan of the decoded vectors of each query's probed lists."""
    xb, xq = corpus
    ix = trained[codec]
    nprobe = 3
    cent = ix.centroids
    lists = [ix.list_ids(l) for l in range(ix.nlist)]
    decoded = [ix.reconstruct(ids) if len(ids) else np.zeros((0, 40), np.float32) for ids in lists]
    s, i = ix.search(xq, 10, nprobe=nprobe)
    for row, q in enumerate(xq):
        probe = np.argsort(-(cent @ q), kind="stable")[:nprobe]
        cand_ids = np.concatenate([lists[l] for l in probe])
        cand = np.concatenate([decoded[l] for l in probe]) @ q
        order = np.lexsort((cand_ids, -cand))[:10]
        np.testing.assert_allclose(s[row], cand[order], rtol=1e-4, atol=2e-5)


def test_codec_accuracy_ordering(trained, corpus):
    xb, xq = corpus
    _, gt = mudg_fast.knn(xq, xb, 10)
    r = {c: recall(trained[c].search(xq, 10, nprobe=24)[1], gt) for c in CODECS}
    assert r["f32"] == 1.0
    assert r["f16"] >= 0.99
    assert r["sq8"] >= 0.93
    assert r["sq4"] >= 0.55
    assert r["f32"] >= r["f16"] >= r["sq8"] >= r["sq4"]
    err = {c: np.abs(trained[c].reconstruct(np.arange(500)) - xb[:500]).mean() for c in CODECS}
    assert err["f32"] == 0 and err["f16"] < 1e-3 and err["sq8"] < err["sq4"]


def test_sq4_levels_beat_uniform_4bit_on_reconstruction(corpus):
    """Lloyd-Max levels have lower squared error than a uniform min/max 4-bit grid (faiss QT_4bit)."""
    xb, _ = corpus
    ix = IVFIndex(40, 1, codec="sq4").set_centroids(np.ones((1, 40), np.float32) / np.sqrt(40))
    ix.train_codec(xb)
    ix.add(xb)
    ours = ((ix.reconstruct(np.arange(len(xb))) - xb) ** 2).mean()
    lo, hi = xb.min(0), xb.max(0)
    step = (hi - lo) / 15
    uni = lo + np.clip(np.round((xb - lo) / step), 0, 15) * step
    assert ours < 0.8 * ((uni - xb) ** 2).mean()


def test_add_with_ids_and_incremental_adds(corpus):
    xb, xq = corpus
    a = IVFIndex(40, 16).train(xb, seed=2)
    b = IVFIndex(40, 16).set_centroids(a.centroids)
    a.add(xb)
    for s in range(0, len(xb), 1000):  # chunked adds continue the ids
        b.add(xb[s:s + 1000])
    assert a.ntotal == b.ntotal == len(xb)
    np.testing.assert_array_equal(a.search(xq, 10, nprobe=4)[1], b.search(xq, 10, nprobe=4)[1])
    c = IVFIndex(40, 16).set_centroids(a.centroids)
    c.add(xb, ids=np.arange(len(xb)) * 7 + 3)
    np.testing.assert_array_equal(c.search(xq, 10, nprobe=4)[1], a.search(xq, 10, nprobe=4)[1] * 7 + 3)
    assert a.list_sizes().sum() == len(xb) and a.list_sizes().dtype == np.int64


def test_padding_and_empty_cases(corpus):
    xb, xq = corpus
    ix = IVFIndex(40, 16).train(xb)
    s, i = ix.search(xq[:3], 5)  # empty index
    assert (i == -1).all() and np.isneginf(s).all()
    ix.add(xb[:7])
    s, i = ix.search(xq[:3], 10, nprobe=16)
    assert (i[:, :7] >= 0).all() and (i[:, 7:] == -1).all() and np.isneginf(s[:, 7:]).all()
    s, i = ix.search(np.zeros((0, 40), np.float32), 4)
    assert s.shape == (0, 4)
    s, i = ix.search(xq[0], 2, nprobe=1000)  # nprobe > nlist is clipped; 1-D query
    assert s.shape == (1, 2)


def test_thread_counts_and_simd_levels_agree(corpus, simd_level_restored):
    xb, xq = corpus
    ref = None
    for level in available_simd_levels():
        mudg_fast.set_simd_level(level)
        for t in (1, 2):
            ix = IVFIndex(40, 16, codec="sq8", num_threads=t).train(xb, seed=5)
            ix.add(xb)
            out = ix.search(xq, 10, nprobe=3)
            if ref is None:
                ref = out
            np.testing.assert_array_equal(out[0], ref[0])
            np.testing.assert_array_equal(out[1], ref[1])


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_roundtrip(tmp_path, trained, corpus, codec, mmap):
    _, xq = corpus
    ix = trained[codec]
    path = tmp_path / f"ix_{codec}.ivf"
    ix.save(path)
    j = IVFIndex.load(path, mmap=mmap)
    assert (j.dim, j.nlist, j.codec, j.ntotal) == (ix.dim, ix.nlist, ix.codec, ix.ntotal)
    for nprobe in (1, 5):
        a, b = ix.search(xq, 10, nprobe=nprobe), j.search(xq, 10, nprobe=nprobe)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(ix.reconstruct(np.arange(100)), j.reconstruct(np.arange(100)))
    # saving the loaded index reproduces the file byte for byte
    j.save(tmp_path / "again.ivf")
    assert (tmp_path / "again.ivf").read_bytes() == path.read_bytes()
    # a loaded (memory-mapped) index can keep growing
    j.add(xq)
    assert j.ntotal == ix.ntotal + len(xq)
    assert j.search(xq[:5], 1, nprobe=24)[1][:, 0].tolist() == list(range(ix.ntotal, ix.ntotal + 5))


def test_save_is_atomic_and_keeps_the_old_file_on_failure(tmp_path, trained, monkeypatch):
    path = tmp_path / "ix.ivf"
    trained["f32"].save(path)
    before = path.read_bytes()

    def boom(tmp):
        Path(tmp).write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        mudg_fast.index.atomic_write(path, boom)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ix.ivf"]  # no temporary left behind


def corrupt(path, offset, value=None):
    data = bytearray(path.read_bytes())
    data[offset] = (data[offset] ^ 0xFF) if value is None else value
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["magic", "header", "centroids", "directory", "codes", "ids", "footer"])
def test_corrupted_files_fail_cleanly(tmp_path, trained, where):
    ix = trained["sq8"]
    path = tmp_path / "ix.ivf"
    ix.save(path)
    size = path.stat().st_size
    header = path.read_bytes()[:128]
    directory_off = struct.unpack_from("<Q", header, 72)[0]
    data_off = struct.unpack_from("<Q", header, 80)[0]
    first_codes, first_size, first_ids = struct.unpack_from("<QqQ", path.read_bytes(), directory_off)
    offset = {"magic": 0, "header": 20, "centroids": 130, "directory": directory_off + 3,
              "codes": data_off + 5, "ids": first_ids + 1, "footer": size - 12}[where]
    corrupt(path, offset)
    with pytest.raises(ValueError, match="corrupted|not a mudg_fast|invalid|inconsistent|damaged"):
        IVFIndex.load(path)


@pytest.mark.parametrize("keep", [0, 7, 100, 127, 128, 500, -17, -1])
def test_truncated_files_fail_cleanly(tmp_path, trained, keep):
    path = tmp_path / "ix.ivf"
    trained["f16"].save(path)
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    with pytest.raises(ValueError, match="truncated|not a mudg_fast|corrupted|damaged"):
        IVFIndex.load(path, mmap=False)


def test_newer_version_is_refused(tmp_path, trained):
    path = tmp_path / "ix.ivf"
    trained["f32"].save(path)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 8, 3)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="version 3 is newer|version 3, newer"):
        IVFIndex.load(path)


def test_other_files_are_refused(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.zeros(10))
    with pytest.raises(ValueError, match="not a mudg_fast IVF index"):
        IVFIndex.load(p)
    with pytest.raises(FileNotFoundError):
        IVFIndex.load(tmp_path / "missing.ivf")


@pytest.mark.parametrize("codec", GOLDEN)
def test_golden_file_pins_the_format(tmp_path, codec):
    expect = json.loads((DATA / "ivf_v2_expected.json").read_text())[codec]
    path = DATA / f"ivf_v2_{codec}.bin"
    ix = IVFIndex.load(path, mmap=False)
    _, q, centroids, _ = golden_inputs()
    np.testing.assert_array_equal(ix.centroids, centroids)
    assert ix.list_sizes().tolist() == expect["list_sizes"]
    assert ix.metadata == GOLDEN_METADATA
    s, i = ix.search(q, 5, nprobe=2)
    assert i.tolist() == expect["ids"]
    np.testing.assert_array_equal(s, np.array(expect["scores"], np.float32))
    # building the same index today writes the same bytes
    build_golden(codec).save(tmp_path / "now.bin")
    assert (tmp_path / "now.bin").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("codec", ["f32", "sq8"])
def test_version_1_files_still_load(tmp_path, codec):
    """Files written before extension records existed load, search as they did, and re-save as
    today's format: the same bytes as the index built today (given the same metadata)."""
    expect = json.loads((DATA / "ivf_v1_expected.json").read_text())[codec]
    ix = IVFIndex.load(DATA / f"ivf_v1_{codec}.bin", mmap=False)
    assert ix.metadata == {}
    assert ix.list_sizes().tolist() == expect["list_sizes"]
    _, q, _, _ = golden_inputs()
    s, i = ix.search(q, 5, nprobe=2)
    assert i.tolist() == expect["ids"]
    np.testing.assert_array_equal(s, np.array(expect["scores"], np.float32))
    ix.save(tmp_path / "old.bin")
    build_golden(codec, metadata=False).save(tmp_path / "now.bin")
    assert (tmp_path / "old.bin").read_bytes() == (tmp_path / "now.bin").read_bytes()
    assert ix.fingerprint == build_golden(codec).fingerprint  # metadata is not part of it


def test_merge_keeps_global_ids(corpus):
    xb, xq = corpus
    full = IVFIndex(40, 16, codec="sq8").train(xb, seed=9)
    a = IVFIndex(40, 16, codec="sq8")
    b = IVFIndex(40, 16, codec="sq8")
    for part in (a, b):
        part.set_centroids(full.centroids)
        part.set_codec_params(*full.codec_params())
    full.add(xb)
    half = len(xb) // 2 + 5  # not a multiple of 16: exercises the unaligned merge path
    a.add(xb[:half])
    b.add(xb[half:], ids=np.arange(half, len(xb)))
    a.merge(b)
    assert a.ntotal == full.ntotal
    sa, ia = a.search(xq, 10, nprobe=16)
    sf, i_f = full.search(xq, 10, nprobe=16)
    np.testing.assert_array_equal(ia, i_f)
    np.testing.assert_array_equal(sa, sf)
    other = IVFIndex(40, 16, codec="sq8").train(xb, seed=10)
    with pytest.raises(ValueError, match="centroids"):
        a.merge(other)
    with pytest.raises(ValueError, match="dim, nlist or codec"):
        a.merge(IVFIndex(40, 8))


def test_reconstruct_errors_and_scalar_id(trained):
    ix = trained["f32"]
    assert ix.reconstruct(3).shape == (40,)
    with pytest.raises(ValueError, match="not in the index"):
        ix.reconstruct([10**9])


def test_progress_callback_and_interrupting_it(corpus):
    xb, _ = corpus
    calls = []
    ix = IVFIndex(40, 16).train(xb)
    ix.add(np.concatenate([xb] * 12), progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (12 * len(xb), 12 * len(xb))
    assert all(a <= b for (a, _), (b, _) in zip(calls, calls[1:]))

    def stop(done, total):
        raise RuntimeError("stop here")

    j = IVFIndex(40, 16).set_centroids(ix.centroids).add(xb[:100])
    before = j.search(xb[:20], 5, nprobe=16)
    with pytest.raises(RuntimeError, match="stop here"):
        j.add(np.concatenate([xb] * 12), progress=stop)
    # all or nothing: the chunks added before the callback raised are rolled back
    assert j.ntotal == j.list_sizes().sum() == 100
    after = j.search(xb[:20], 5, nprobe=16)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    j.add(xb[100:200])
    assert j.ntotal == 200 and sorted(np.concatenate([j.list_ids(i) for i in range(16)])) == list(range(200))


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: IVFIndex(0, 4), ValueError, "dim"),
        (lambda: IVFIndex(4, 0), ValueError, "nlist"),
        (lambda: IVFIndex(4, 2, codec="pq"), ValueError, "codec"),
        (lambda: IVFIndex(4, 2, metric="l2"), ValueError, "metric"),
        (lambda: IVFIndex(4, 2).add(np.ones((3, 4))), RuntimeError, "train"),
        (lambda: IVFIndex(4, 2).search(np.ones((3, 4)), 1), RuntimeError, "train"),
        (lambda: IVFIndex(4, 8).train(np.ones((3, 4))), ValueError, "at least nlist"),
        (lambda: IVFIndex(4, 2, codec="sq8").set_centroids(np.ones((2, 4))).add(np.ones((3, 4))),
         RuntimeError, "codec is trained"),
        (lambda: IVFIndex(4, 2).set_centroids(np.ones((3, 4))), ValueError, "rows"),
        (lambda: IVFIndex(4, 2).set_centroids(np.ones((2, 4))).add(np.ones((3, 5))), ValueError, "dimensions"),
        (lambda: IVFIndex(4, 2).set_centroids(np.ones((2, 4))).add(np.ones((3, 4)), ids=[1, 2]), ValueError,
         "shape"),
        (lambda: IVFIndex(4, 2).set_centroids(np.ones((2, 4))).search(np.ones((3, 4)), 1, nprobe=0), ValueError,
         "nprobe"),
        (lambda: IVFIndex(4, 2).set_centroids(np.ones((2, 4))).search(np.ones((3, 4)), 0), ValueError, "k must"),
        (lambda: IVFIndex(4, 2).set_centroids(np.ones((2, 4))).search(np.full((1, 4), np.nan), 1), ValueError,
         "NaN"),
        (lambda: IVFIndex(4, 2).set_centroids(np.ones((2, 4))).search(np.ones((1, 4)), 1, mode="fast"),
         ValueError, "mode"),
    ],
)
def test_bad_usage(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_train_after_add_is_refused(corpus):
    xb, _ = corpus
    ix = IVFIndex(40, 4).train(xb)
    ix.add(xb[:10])
    with pytest.raises(RuntimeError, match="already holds"):
        ix.train(xb)


def test_paired_training_recall_gain_on_coco(coco500):
    """Paired k-means (docs/method.rst §1) through the index: 16 cells, nprobe 1, caption -> image
    recall@10."""
    images, captions = coco500
    _, gt = mudg_fast.knn(captions, images, 10)
    gains = []
    for seed in range(10):
        std = IVFIndex(512, 16).train(images, seed=seed)
        std.add(images)
        pai = IVFIndex(512, 16).train_paired(images, captions, pairing="nearest", seed=seed)
        pai.add(images)
        gains.append(recall(pai.search(captions, 10, nprobe=1)[1], gt) - recall(std.search(captions, 10, nprobe=1)[1], gt))
    assert np.mean(gains[:3]) >= 0.08, gains
    assert np.mean(gains) >= 0.08, gains


def test_rerank_rescores_the_shortlist_exactly(trained, corpus):
    xb, xq = corpus
    ix = trained["sq4"]
    _, gt = mudg_fast.knn(xq, xb, 10)
    plain = recall(ix.search(xq, 10, nprobe=24)[1], gt)
    s, i = ix.search(xq, 10, nprobe=24, rerank=60, source=xb)
    assert recall(i, gt) > plain + 0.2
    for row in range(len(xq)):  # scores are exact inner products, best first, ids valid
        np.testing.assert_allclose(s[row], xb[i[row]] @ xq[row], rtol=1e-5, atol=1e-6)
    # a callable source and a memory map work the same
    s2, i2 = ix.search(xq, 10, nprobe=24, rerank=60, source=lambda ids: xb[ids])
    np.testing.assert_array_equal(i, i2)
    # with f32 codes, reranking the top k changes nothing but rounding
    f = trained["f32"]
    a, b = f.search(xq, 10, nprobe=3), f.search(xq, 10, nprobe=3, rerank=10, source=xb)
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="source"):
        ix.search(xq, 10, rerank=20)
    with pytest.raises(ValueError, match="source returned shape"):
        ix.search(xq, 10, rerank=20, source=lambda ids: xb[ids][:, :5])


@pytest.mark.parametrize("level", available_simd_levels())
def test_f16_codes_round_like_numpy(rng, level, simd_level_restored):
    """Both half conversions (the SIMD block path and the scalar slot path) round to nearest
    even, with subnormals, overflow to inf excluded by validation, exactly like numpy."""
    mudg_fast.set_simd_level(level)
    d = 16
    mags = 2.0 ** rng.uniform(-26, 15.9, size=(4000, d))  # half subnormals ... max finite
    x = (mags * rng.choice([-1, 1], size=mags.shape)).astype(np.float32)
    x[0, :] = [0.0, -0.0, 65504.0, -65504.0, 6.1e-5, 5.96e-8, 2.98e-8, 1e-9, 1.0, 1.5, 0.1, 1 / 3, 2049, 4097,
               65519.0, 3e-8]
    # ties: values exactly halfway between two halves must go to the even one
    x[1, :] = (np.arange(16, dtype=np.float32) * 2 + 1) * 2.0 ** -11 + 1.0
    ix = IVFIndex(d, 1, codec="f16").set_centroids(np.ones((1, d), np.float32))
    ix.add(x[:7])   # slot by slot (an open block)
    ix.add(x[7:])   # then whole blocks
    got = ix.reconstruct(np.arange(len(x)))
    np.testing.assert_array_equal(got, x.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("level", available_simd_levels())
def test_sq4_and_sq8_codes_match_a_numpy_encoder(corpus, level, simd_level_restored):
    """Block path (SIMD) and slot path (scalar) encode exactly like a plain numpy quantiser: sq8,
    sq4 in the direct form (codes of x) and in the residual form (codes of (x - c_l) / s_l)."""
    mudg_fast.set_simd_level(level)
    xb, _ = corpus
    cent = xb[[0, 1000, 2000]]
    for codec, residual in (("sq4", False), ("sq4", True), ("sq8", False)):
        ix = IVFIndex(40, 3, codec=codec).set_centroids(cent)
        ix.train_codec(xb, seed=0, sq4_residual=residual)
        assert ix.sq4_residual == residual
        ix.add(xb[:5])      # slot by slot
        ix.add(xb[5:997])   # whole blocks, then a tail
        got = ix.reconstruct(np.arange(997))
        a, b = ix.codec_params()
        x = xb[:997]
        if codec == "sq4":
            levels = a.reshape(40, 16)
            mids = (np.float32(0.5) * (levels[:, :-1] + levels[:, 1:])).astype(np.float32)
            lists = np.argmax(x @ cent.T, axis=1)
            if residual:
                assert b.shape == (3,) and (b > 0).all()
                x = ((x - cent[lists]) / b[lists, None]).astype(np.float32)
            else:
                assert b.shape == (0,)
            code = (x[:, :, None] > mids[None]).sum(-1)
            want = np.take_along_axis(levels[None].repeat(len(x), 0), code[..., None], 2)[..., 0]
            if residual:
                want = cent[lists] + b[lists, None] * want
        else:
            code = np.clip(np.floor((x - a) * (np.float32(1) / b) + np.float32(0.5)), 0, 255)
            want = a + code.astype(np.float32) * b
        np.testing.assert_array_equal(got, want.astype(np.float32))
