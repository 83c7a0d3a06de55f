"""File format version 2: extension records, user metadata and the training fingerprint."""

import struct

import numpy as np
import pytest

import corrupt_helpers as ch
from mudg_fast import IVFIndex


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((600, 12)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def trained(x, codec="sq8", seed=0):
    return IVFIndex(12, 6, codec=codec).train(x, seed=seed, max_iter=5)


def record_offset(raw: bytes) -> int:
    h = ch.header(raw)
    return (h["params_offset"] + 4 * h["params_count"] + 7) // 8 * 8


def test_metadata_round_trip(tmp_path, data):
    ix = trained(data)
    meta = {"part": 7, "ids": [0, 600], "source": "img_emb/", "nested": {"a": [1.5, None, True]},
            "text": "caf\u00e9 \u2603"}
    assert ix.set_metadata(meta) is ix
    assert ix.metadata == meta
    ix.add(data)
    ix.save(tmp_path / "a.ivf")
    for mmap in (True, False):
        back = IVFIndex.load(tmp_path / "a.ivf", mmap=mmap)
        assert back.metadata == meta
    # the copy returned is not the stored value
    got = ix.metadata
    got["part"] = 8
    assert ix.metadata["part"] == 7
    # empty metadata writes no record: the file is the one of an index without metadata
    ix.set_metadata({})
    assert ix.metadata == {}
    ix.save(tmp_path / "b.ivf")
    assert ch.header((tmp_path / "b.ivf").read_bytes())["ext_bytes"] == 0


def test_metadata_is_validated(data):
    ix = trained(data)
    with pytest.raises(TypeError, match="mapping"):
        ix.set_metadata([("a", 1)])
    with pytest.raises(ValueError, match="keys must be str"):
        ix.set_metadata({1: "a"})
    with pytest.raises(ValueError, match="finite JSON"):
        ix.set_metadata({"a": float("nan")})
    with pytest.raises(ValueError, match="finite JSON"):
        ix.set_metadata({"a": object()})
    with pytest.raises(ValueError, match="at most"):
        ix.set_metadata({"a": "x" * (1 << 20)})
    assert ix.metadata == {}  # nothing half-set


def test_fingerprint_tracks_training_not_contents(data):
    a, b = trained(data), trained(data)
    assert len(a.fingerprint) == 16 and int(a.fingerprint, 16) >= 0
    assert a.fingerprint == b.fingerprint  # same seed, same training
    b.add(data[:100]).set_metadata({"x": 1})
    assert a.fingerprint == b.fingerprint  # vectors and metadata do not enter it
    assert trained(data, seed=1).fingerprint != a.fingerprint  # other centroids
    c = IVFIndex(12, 6, codec="sq8").set_centroids(a.centroids)
    c.set_codec_params(*a.codec_params())
    assert c.fingerprint == a.fingerprint
    va, vb = a.codec_params()
    c2 = IVFIndex(12, 6, codec="sq8").set_centroids(a.centroids)
    c2.set_codec_params(va, vb * 1.5)
    assert c2.fingerprint != a.fingerprint  # other codec parameters
    f16 = IVFIndex(12, 6, codec="f16").set_centroids(a.centroids)
    f32 = IVFIndex(12, 6, codec="f32").set_centroids(a.centroids)
    assert f16.fingerprint != f32.fingerprint  # other codec
    with pytest.raises(ValueError, match="no fingerprint"):
        IVFIndex(12, 6).fingerprint


def _retag(raw: bytes, tag: bytes, flags: int) -> bytes:
    b = bytearray(raw)
    off = record_offset(raw)
    assert bytes(b[off:off + 4]) == b"META"
    b[off:off + 4] = tag
    struct.pack_into("<I", b, off + 4, flags)
    return ch.reseal(bytes(b))


def test_unknown_optional_records_are_kept(tmp_path, data):
    ix = trained(data).set_metadata({"k": "v"})
    ix.add(data)
    ix.save(tmp_path / "a.ivf")
    raw = _retag((tmp_path / "a.ivf").read_bytes(), b"ZZZZ", 0)  # a record of a newer version
    (tmp_path / "b.ivf").write_bytes(raw)
    back = IVFIndex.load(tmp_path / "b.ivf")
    assert back.metadata == {}  # not ours to read
    assert back.fingerprint == ix.fingerprint  # optional records do not enter it
    s0, i0 = ix.search(data[:20], 5, nprobe=2)
    s1, i1 = back.search(data[:20], 5, nprobe=2)
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_array_equal(s0, s1)
    back.save(tmp_path / "c.ivf")  # written back as it was read
    assert (tmp_path / "c.ivf").read_bytes() == raw
    # adding our own metadata keeps the unknown record, in tag order
    back.set_metadata({"k": "v"}).save(tmp_path / "d.ivf")
    d = (tmp_path / "d.ivf").read_bytes()
    off = record_offset(d)
    assert d[off:off + 4] == b"META" and b"ZZZZ" in d[off:ch.header(d)["directory_offset"]]
    assert ch.extensions_valid(d)


def test_unknown_required_record_is_refused(tmp_path, data):
    ix = trained(data).set_metadata({"k": "v"})
    ix.save(tmp_path / "a.ivf")
    raw = _retag((tmp_path / "a.ivf").read_bytes(), b"ZZZZ", 1)
    (tmp_path / "b.ivf").write_bytes(raw)
    with pytest.raises(ValueError, match="needs a newer mudg_fast.*'ZZZZ'"):
        IVFIndex.load(tmp_path / "b.ivf")
    # the metadata record may not claim to be required
    (tmp_path / "c.ivf").write_bytes(_retag((tmp_path / "a.ivf").read_bytes(), b"META", 1))
    with pytest.raises(ValueError, match="corrupted.*'META'"):
        IVFIndex.load(tmp_path / "c.ivf")


def test_merge_refuses_other_training(data):
    a = trained(data).add(data[:300])
    b = trained(data)
    b.add(data[300:], ids=np.arange(300, 600))
    a.merge(b)
    assert a.ntotal == 600
    with pytest.raises(ValueError, match="different centroids"):
        a.merge(trained(data, seed=3).add(data[:10]))


# ---------------------------------------------------------------------------------------------
# probe() + search_probed(): the two stages of search(), used by indexes made of parts


@pytest.mark.parametrize("codec", ["f32", "f16", "sq8", "sq4"])
@pytest.mark.parametrize("mode", ["list_major", "per_query"])
def test_probe_then_search_probed_equals_search(data, codec, mode):
    ix = trained(data, codec).add(data)
    q = data[::7] + 0.01
    for nprobe in (1, 3, 6, 9):
        s0, i0 = ix.search(q, 10, nprobe=nprobe, mode=mode)
        ps, pl = ix.probe(q, nprobe)
        assert pl.shape == (len(q), nprobe)
        # probes are the exact nearest centroids, best first (ties to the lower list)
        ref = q.astype(np.float64) @ ix.centroids.T.astype(np.float64)
        top = np.argsort(-ref, axis=1, kind="stable")[:, :min(nprobe, 6)]
        np.testing.assert_array_equal(pl[:, :min(nprobe, 6)], top)
        if nprobe > 6:
            assert (pl[:, 6:] == -1).all() and np.isneginf(ps[:, 6:]).all()
        s1, i1 = ix.search_probed(q, 10, pl, mode=mode)
        np.testing.assert_array_equal(i0, i1)
        np.testing.assert_array_equal(s0, s1)


def test_parts_sharing_probes_merge_to_the_whole(data):
    """Three indexes with the same training hold disjoint slices; one probe() + per-part scans,
    merged under (score, then lower id), give exactly the whole index's answer."""
    whole = trained(data, "sq8").add(data)
    parts = []
    for lo, hi in ((0, 150), (150, 151), (151, 600)):
        p = trained(data, "sq8")
        p.add(data[lo:hi], ids=np.arange(lo, hi))
        parts.append(p)
    q = data[::5] * 0.9
    k = 12
    _, lists = whole.probe(q, 3)
    res = [p.search_probed(q, k, lists) for p in parts]
    s = np.concatenate([r[0] for r in res], axis=1)
    i = np.concatenate([r[1] for r in res], axis=1)
    order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), -s.astype(np.float64)), axis=1)[:, :k]
    s0, i0 = whole.search(q, k, nprobe=3)
    np.testing.assert_array_equal(np.take_along_axis(i, order, 1), i0)
    np.testing.assert_array_equal(np.take_along_axis(s, order, 1), s0)


def test_search_probed_rejects_bad_probes(data):
    ix = trained(data).add(data)
    q = data[:4]
    with pytest.raises(ValueError, match="shape"):
        ix.search_probed(q, 5, np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match="in \\[-1, 6\\)"):
        ix.search_probed(q, 5, np.full((4, 2), 6))
    with pytest.raises(ValueError, match="in \\[-1, 6\\)"):
        ix.search_probed(q, 5, np.full((4, 2), -2))
    with pytest.raises(ValueError, match="integers"):
        ix.search_probed(q, 5, np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="more than once"):
        ix.search_probed(q, 5, np.array([[1, 1]] * 4))
    s, i = ix.search_probed(q, 5, np.full((4, 2), -1))  # nothing probed: all padding
    assert (i == -1).all() and np.isneginf(s).all()
    s, i = ix.search_probed(q, 5, np.array([[-1, 2, -1]] * 4))  # -1 repeats are fine
    assert (i[:, 0] >= 0).all()
