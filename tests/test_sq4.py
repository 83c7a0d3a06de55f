"""The sq4 codec: the residual form (codes of (x - c_l) / s_l against per-dimension Lloyd-Max
levels), its file record, the direct form of older files, and recall against faiss QT_4bit."""

from pathlib import Path

import numpy as np
import pytest

import corrupt_helpers as ch
import mudg_fast
from mudg_fast import IVFIndex


def recall(ids, gt):
    return np.mean([len(set(a[a >= 0]) & set(b)) / len(b) for a, b in zip(ids, gt)])


@pytest.fixture(scope="module")
def clustered():
    xb = mudg_fast.datasets.clustered_unit_vectors(20_000, 256, n_clusters=300, seed=11)
    xq = mudg_fast.datasets.clustered_unit_vectors(200, 256, n_clusters=300, seed=12, centre_seed=11)
    _, gt = mudg_fast.knn(xq, xb, 10)
    centroids = IVFIndex(256, 64).train(xb, seed=0, max_iter=10).centroids
    return xb, xq, gt, centroids


def sq4(centroids, xb, residual=True):
    ix = IVFIndex(centroids.shape[1], len(centroids), codec="sq4").set_centroids(centroids)
    ix.train_codec(xb, seed=0, sq4_residual=residual)
    return ix.add(xb)


@pytest.fixture(scope="module")
def small():
    x = mudg_fast.datasets.clustered_unit_vectors(3000, 24, n_clusters=30, seed=5)
    q = mudg_fast.datasets.clustered_unit_vectors(60, 24, n_clusters=30, seed=6, centre_seed=5)
    ix = IVFIndex(24, 8, codec="sq4").train(x, seed=2, max_iter=5)
    return x, q, ix.add(x)


def test_residual_form_beats_the_direct_form_and_faiss_4bit(clustered):
    """Same data, same centroids, 4 bits per dimension for every codec, nprobe 16 of 64 lists."""
    faiss = pytest.importorskip("faiss")
    xb, xq, gt, centroids = clustered
    res, direct = sq4(centroids, xb), sq4(centroids, xb, residual=False)
    assert res.sq4_residual and not direct.sq4_residual
    r_res = recall(res.search(xq, 10, nprobe=16)[1], gt)
    r_direct = recall(direct.search(xq, 10, nprobe=16)[1], gt)
    quantizer = faiss.IndexFlatIP(256)
    quantizer.add(centroids)
    fx = faiss.IndexIVFScalarQuantizer(quantizer, 256, 64, faiss.ScalarQuantizer.QT_4bit, faiss.METRIC_INNER_PRODUCT)
    fx.train(xb)  # faiss's default: residual encoding, its codec trained on the residuals
    fx.add(xb)
    fx.nprobe = 16
    r_faiss = recall(fx.search(xq, 10)[1], gt)
    # measured: residual 0.74, direct 0.65, faiss 0.63
    assert r_res > r_direct + 0.05, (r_res, r_direct)
    assert r_res > r_faiss + 0.08, (r_res, r_faiss)


def test_scores_are_the_documented_arithmetic(small):
    """score = fma(s_l, <q, level codes>, <q, c_l>) in float32: equal, up to the rounding of the
    two sums, to a float64 numpy reference on the reconstructed vectors, and ranked by it."""
    x, q, ix = small
    levels, scales = ix.codec_params()
    assert scales.shape == (8,) and levels.shape == (24 * 16,)
    cent = ix.centroids
    s, i = ix.search(q, 12, nprobe=3)
    _, probes = ix.probe(q, 3)
    for row in range(len(q)):
        cand = np.concatenate([ix.list_ids(l) for l in probes[row]])
        lists = np.concatenate([np.full(len(ix.list_ids(l)), l) for l in probes[row]])
        rec = ix.reconstruct(cand).astype(np.float64)
        # the residual levels behind each reconstructed value
        r = (rec - cent[lists]) / scales[lists, None]
        ref = (q[row].astype(np.float64) @ cent[lists].T.astype(np.float64)
               + scales[lists] * (r @ q[row].astype(np.float64)))
        order = np.lexsort((cand, -ref))[:12]
        np.testing.assert_allclose(s[row], ref[order], rtol=0, atol=5e-6)
        # ties within rounding aside, the same candidates
        assert len(set(i[row]) ^ set(cand[order])) <= 2


def test_list_scales_follow_the_lists_spread():
    """A list whose vectors lie farther from its centroid gets a larger scale (relative to 1)."""
    rng = np.random.default_rng(0)
    cent = np.eye(2, 16, dtype=np.float32)
    tight = cent[0] + 0.01 * rng.standard_normal((500, 16)).astype(np.float32)
    loose = cent[1] + 0.1 * rng.standard_normal((500, 16)).astype(np.float32)
    ix = IVFIndex(16, 2, codec="sq4").set_centroids(cent).train_codec(np.vstack([tight, loose]))
    s = ix.codec_params()[1]
    assert s[0] < 0.3 < 1.2 < s[1]
    # an index trained on one tight list only: a list without sample rows keeps scale 1
    one = IVFIndex(16, 2, codec="sq4").set_centroids(cent).train_codec(tight)
    assert one.codec_params()[1][1] == 1.0


def test_residual_record_round_trips_and_is_required(tmp_path, small):
    x, q, ix = small
    ix.save(tmp_path / "a.ivf")
    raw = (tmp_path / "a.ivf").read_bytes()
    recs = {tag: (flags, payload) for tag, flags, payload in ch.records(raw)}
    flags, payload = recs[b"SQ4R"]
    assert flags == 1  # required: a reader without the residual form refuses the file
    scales = np.frombuffer(payload, np.float32, offset=8)
    np.testing.assert_array_equal(scales, ix.codec_params()[1])
    assert ch.extensions_valid(raw)
    for mmap in (True, False):
        back = IVFIndex.load(tmp_path / "a.ivf", mmap=mmap)
        assert back.sq4_residual and back.fingerprint == ix.fingerprint
        for a, b in zip(back.codec_params(), ix.codec_params()):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(back.search(q, 7, nprobe=3), ix.search(q, 7, nprobe=3)):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(back.reconstruct(np.arange(100)), ix.reconstruct(np.arange(100)))
    # a reader that does not know the record stops at it (simulated: the tag renamed)
    (tmp_path / "b.ivf").write_bytes(ch.reseal(raw.replace(b"SQ4R", b"SQ4Z")))
    with pytest.raises(ValueError, match="needs a newer mudg_fast.*'SQ4Z'"):
        IVFIndex.load(tmp_path / "b.ivf")


def test_forms_are_part_of_the_fingerprint_and_of_merging(small):
    x, q, ix = small
    levels, scales = ix.codec_params()
    same = IVFIndex(24, 8, codec="sq4").set_centroids(ix.centroids).set_codec_params(levels, scales)
    assert same.fingerprint == ix.fingerprint and same.sq4_residual
    direct = IVFIndex(24, 8, codec="sq4").set_centroids(ix.centroids).set_codec_params(levels)
    assert not direct.sq4_residual and direct.fingerprint != ix.fingerprint
    other = IVFIndex(24, 8, codec="sq4").set_centroids(ix.centroids).set_codec_params(levels, scales * 2)
    assert other.fingerprint != ix.fingerprint
    # shards sharing the codec merge into the index built in one go, also off block boundaries
    a = IVFIndex(24, 8, codec="sq4").set_centroids(ix.centroids).set_codec_params(levels, scales)
    b = IVFIndex(24, 8, codec="sq4").set_centroids(ix.centroids).set_codec_params(levels, scales)
    a.add(x[:1001])
    b.add(x[1001:], np.arange(1001, len(x)))
    a.merge(b)
    for l in range(8):
        np.testing.assert_array_equal(a.list_ids(l), ix.list_ids(l))
    np.testing.assert_array_equal(a.reconstruct(np.arange(len(x))), ix.reconstruct(np.arange(len(x))))
    for r, w in zip(a.search(q, 9, nprobe=4), ix.search(q, 9, nprobe=4)):
        np.testing.assert_array_equal(r, w)
    direct.add(x[:10])
    with pytest.raises(ValueError, match="codec parameters"):
        a.merge(direct)


def test_direct_form_files_load_and_search_as_before(tmp_path):
    """ivf_v2_sq4.bin was written before the residual form existed (see make_golden.py)."""
    from make_golden import golden_inputs

    ix = IVFIndex.load(Path(__file__).parent / "data" / "ivf_v2_sq4.bin")
    assert not ix.sq4_residual and ix.codec_params()[1].shape == (0,)
    x, q, _, ids = golden_inputs()
    levels = ix.codec_params()[0].reshape(8, 16)
    mids = 0.5 * (levels[:, 1:] + levels[:, :-1])
    want = np.take_along_axis(levels[None].repeat(len(x), 0), (x[:, :, None] > mids[None]).sum(-1)[..., None], 2)
    np.testing.assert_array_equal(ix.reconstruct(ids), want[..., 0])
    # adding to it keeps the direct form (and the file keeps no residual record)
    ix.add(x[:3], ids[:3] + 100)
    ix.save(tmp_path / "more.ivf")
    assert b"SQ4R" not in (tmp_path / "more.ivf").read_bytes()
    assert not IVFIndex.load(tmp_path / "more.ivf").sq4_residual


@pytest.mark.parametrize("scales, match", [
    (np.ones(3), "one value per list"),
    (np.r_[np.ones(7), 0.0], "invalid SQ4 list scale"),
    (np.r_[np.ones(7), -1.0], "invalid SQ4 list scale"),
    (np.r_[np.ones(7), np.nan], "invalid SQ4 list scale"),
    (np.r_[np.ones(7), 2.0 ** 40], "invalid SQ4 list scale"),
    (np.r_[np.ones(7), 2.0 ** -40], "invalid SQ4 list scale"),
])
def test_bad_list_scales_are_refused(small, scales, match):
    _, _, ix = small
    fresh = IVFIndex(24, 8, codec="sq4")
    with pytest.raises(ValueError, match=match):
        fresh.set_codec_params(ix.codec_params()[0], scales)
    assert not fresh._ix.codec_trained  # nothing half-set


def test_scale_times_levels_must_stay_within_the_magnitude_limit(small):
    _, _, ix = small
    levels = ix.codec_params()[0].astype(np.float64)
    limit = mudg_fast._arrays.magnitude_limit(24)
    big = levels / np.abs(levels).max() * limit  # |level| up to the limit: allowed with scale <= 2
    IVFIndex(24, 8, codec="sq4").set_codec_params(big, np.full(8, 2.0))
    with pytest.raises(ValueError, match="invalid SQ4 list scale"):
        IVFIndex(24, 8, codec="sq4").set_codec_params(big, np.full(8, 2.5))
    with pytest.raises(ValueError, match="invalid SQ4 level"):  # the direct form allows |level| <= limit
        IVFIndex(24, 8, codec="sq4").set_codec_params(big * 1.5)


def test_training_needs_centroids_for_the_residual_form(small):
    x, _, _ = small
    ix = IVFIndex(24, 8, codec="sq4")
    with pytest.raises(RuntimeError, match="set_centroids"):
        ix.train_codec(x)
    with pytest.raises(TypeError, match="sq4_residual must be a bool"):
        ix.train_codec(x, sq4_residual="yes")
    ix.train_codec(x, sq4_residual=False)  # the direct form needs none
    assert ix._ix.codec_trained and not ix.sq4_residual
    # other codecs ignore the flag
    IVFIndex(24, 8, codec="sq8").train_codec(x, sq4_residual=False)


def test_extreme_magnitudes_train_to_valid_parameters():
    """Residuals of inputs near the magnitude limit still train (levels and scales clipped)."""
    limit = mudg_fast._arrays.magnitude_limit(4)
    rng = np.random.default_rng(1)
    x = (rng.uniform(-1, 1, (200, 4)) * 0.99 * limit).astype(np.float32)
    cent = np.array([[0.99 * limit, 0, 0, 0], [-0.99 * limit, 0, 0, 0]], np.float32)
    ix = IVFIndex(4, 2, codec="sq4").set_centroids(cent).train_codec(x)
    ix.add(x)
    s, i = ix.search(x[:5], 3, nprobe=2)
    assert np.isfinite(s).all() and (i >= 0).all()
    assert np.isfinite(ix.reconstruct(np.arange(200))).all()
