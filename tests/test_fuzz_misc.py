"""Property-based fuzzing of the evaluation and data-generation helpers: recall@k, exact ground
truth, evaluate_recall, modality gaps and plots; the synthetic corpus and text encoder; the
benchmark vector generators; the SIMD switch; the CLIP encoder's input checks.

Every call goes through ``fuzzing.attempt``: a returned result is checked against a plain numpy
reference or an invariant; anything else must be a clear TypeError/ValueError.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import mudg_fast
import numpy as np
import pytest
from fuzzing import (
    NUMERIC_DTYPES,
    VALID_SEEDS,
    VALID_THREADS,
    arguments,
    attempt,
    examples,
    hostile_arrays,
    layouts,
    matrices,
    mostly,
    numpy_topk_ip,
    raised,
)
from hypothesis import given
from hypothesis import strategies as st
from mudg_fast import datasets, synthetic
from mudg_fast.recall import (
    RecallResult,
    evaluate_recall,
    exact_ground_truth,
    modality_gap,
    plot_recall,
    recall_at_k,
)

_counter = itertools.count()
#: seeds of numpy generators: any non-negative integer (no 2**64 bound), and junk
NUMPY_JUNK_SEEDS = st.sampled_from([-1, 1.5, float("nan"), None, "0", True, np.float64(2.0)])
POSITIVE = st.one_of(st.integers(1, 12), st.sampled_from([np.int64(3), np.uint8(2)]))
FLOATS_MOSTLY = mostly(st.sampled_from([np.float32, np.float64, np.float16]), st.sampled_from(NUMERIC_DTYPES), 0.8)
NOT_POSITIVE = st.sampled_from([0, -1, 1.5, float("nan"), True, None, "3", np.float64(2.0)])


def _finite(a) -> bool:
    return bool(np.isfinite(np.asarray(a, dtype=np.float64)).all())


def _clean(a) -> bool:
    a = np.asarray(a, dtype=np.float64)
    return bool(np.isfinite(a).all() and (a.size == 0 or np.abs(a).max() < 1e15))


# ---------------------------------------------------------------------------------------------
# recall_at_k


def reference_recall(found, truth, k):
    """Per query: the share of its true-neighbour slots (ids >= 0) whose id the index found."""
    out = []
    for f, t in zip(found, truth):
        t = [x for x in t[:k] if x >= 0]
        f = set(f[:k].tolist())
        out.append(sum(x in f for x in t) / len(t) if t else np.nan)
    return np.array(out, dtype=np.float64)


@st.composite
def id_tables(draw):
    n, c = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    found = rng.integers(-1, 8, (n, c))
    truth = rng.integers(-1, 8, (n, draw(st.sampled_from([c, c, c + 1, max(c - 1, 0)]))))
    kind = draw(st.sampled_from(["ok"] * 8 + ["float", "object", "rows", "1d", "bool"]))
    if kind == "float":
        found = found.astype(np.float64)
    elif kind == "object":
        truth = truth.astype(object)
    elif kind == "rows":
        truth = truth[: max(n - 1, 0)] if n else np.zeros((1, c), np.int64)
    elif kind == "1d":
        found = found.reshape(-1)
    elif kind == "bool":
        found = found > 0
    dtype = draw(st.sampled_from([np.int64, np.int32, np.int16]))
    if kind == "ok":
        found, truth = found.astype(dtype), draw(layouts(truth.astype(dtype)))
    return found, truth, kind == "ok"


@examples(400)
@given(id_tables(), st.one_of(st.none(), POSITIVE, POSITIVE, NOT_POSITIVE, st.just(2**31)))
def test_recall_at_k_matches_reference(tables, k):
    found, truth, ok = tables
    out = attempt(recall_at_k, found, truth, k)
    k_ok = k is None or (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1)
    if not (ok and k_ok):
        assert raised(out) or k == 2**31, (tables, k)     # 2**31: allowed or "too large"
        return
    if raised(out):
        assert k == 2**31
        return
    kk = min(found.shape[1], truth.shape[1]) if k is None else int(k)
    np.testing.assert_array_equal(out, reference_recall(found, truth, kk))
    if k is None and kk >= 1:   # recall@k for the default k equals the explicit one
        np.testing.assert_array_equal(attempt(recall_at_k, found, truth, kk), out)


# ---------------------------------------------------------------------------------------------
# exact_ground_truth


@examples(300)
@given(st.data(), arguments({"k": (st.integers(1, 12), NOT_POSITIVE),
                             "batch_rows": (st.integers(1, 9), NOT_POSITIVE)}, valid_share=0.7))
def test_exact_ground_truth_matches_numpy(data, args):
    kwargs, broken = args
    d = data.draw(st.integers(1, 6))
    n = data.draw(st.integers(0, 14))
    db = data.draw(matrices(n, d, dtype=np.float64, specials=0.05)) if n else np.zeros((0, d))
    q = data.draw(matrices(None, d, max_n=5, specials=0.05))
    dtype = data.draw(mostly(st.sampled_from([np.float32, np.float64, np.float16, np.int32, "list"]),
                             st.sampled_from([bool, object]), 0.85))
    with np.errstate(over="ignore", invalid="ignore"):
        dbx = db.tolist() if dtype == "list" else np.ascontiguousarray(db, dtype=dtype)
    out = attempt(exact_ground_truth, q, dbx, **kwargs)
    x32 = np.asarray(dbx, dtype=np.float64).astype(np.float32) if dtype not in (bool, object) else None
    if broken or dtype in (bool, object) or n == 0 or not (_finite(x32) and _finite(q)):
        assert raised(out), (broken, dtype, n)
        return
    if raised(out):
        assert not (_clean(x32) and _clean(q)), out
        return
    k = kwargs["k"]
    scores, ids = out
    assert scores.shape == ids.shape == (q.shape[0], k) and ids.dtype == np.int64
    pad = ids < 0
    assert (pad.sum(axis=1) == max(k - n, 0)).all() and np.isneginf(scores[pad]).all()
    q32 = q.astype(np.float32)
    ref = numpy_topk_ip(q32, x32, k)
    with np.errstate(over="ignore", invalid="ignore"):
        got = np.einsum("qd,qkd->qk", q32.astype(np.float64), x32[np.where(pad, 0, ids)].astype(np.float64))
    tol = 1e-4 * max(1.0, float(np.abs(q32).max()) * float(np.abs(x32).max()) * d)
    if np.isfinite(ref).all():
        np.testing.assert_allclose(scores[~pad], ref[:, : min(k, n)].ravel(), rtol=1e-5, atol=tol)
        np.testing.assert_allclose(scores[~pad], got[~pad], rtol=1e-5, atol=tol)
    for row in ids:
        real = row[row >= 0]
        assert len(set(real.tolist())) == len(real)
    # the batched path (any dtype, any batch size) and the one-shot float32 path agree exactly
    one = attempt(exact_ground_truth, q, np.ascontiguousarray(x32), k)
    np.testing.assert_array_equal(one[1], ids)
    np.testing.assert_array_equal(one[0], scores)


# ---------------------------------------------------------------------------------------------
# evaluate_recall on a tiny index


@pytest.fixture(scope="module")
def small_index():
    x = datasets.clustered_unit_vectors(300, 8, n_clusters=12, seed=5)
    index = mudg_fast.IVFIndex(8, 6, codec="f32").train(x, seed=0)
    index.add(x)
    return index, x


NPROBES = mostly(st.one_of(st.lists(st.integers(1, 8), min_size=1, max_size=3), st.integers(1, 6)),
                 st.sampled_from([[], [0], [1, -1], 2.5, "1", [True], None]), 0.85)


@examples(80)
@given(st.data())
def test_evaluate_recall_properties(small_index, data):
    index, x = small_index
    q = data.draw(mostly(st.one_of(matrices(None, 8, max_n=6, specials=0.05), st.just(x[3])),
                         st.one_of(hostile_arrays(), matrices(None, 5, max_n=3))))
    k = data.draw(mostly(st.integers(1, 12), NOT_POSITIVE, 0.85))
    nprobes = data.draw(NPROBES)
    use_gt = data.draw(st.booleans())
    gt = None
    qa = np.asarray(q)
    if use_gt and qa.ndim == 2 and qa.shape[1] == 8 and qa.dtype.kind == "f" and _clean(qa):
        gt = exact_ground_truth(qa, x, 12)[1]
        gt = data.draw(mostly(st.just(gt), st.sampled_from([gt[:, :2], gt.astype(np.float64), gt[:-1]])))
    before = index.search(x[:4], 3, nprobe=2)
    r = attempt(evaluate_recall, index, q, None if gt is not None else x, gt, k, nprobes, min_seconds=0)
    after = index.search(x[:4], 3, nprobe=2)
    np.testing.assert_array_equal(before[1], after[1])   # searching never changes the index
    if raised(r):
        return
    assert isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1
    assert r.k == k and r.n_queries == (1 if qa.ndim == 1 else qa.shape[0])
    assert len(r.recall) == len(r.nprobes) == len(r.qps) == len(r.seconds) == r.per_query.shape[0]
    for rec in r.recall:
        assert math.isnan(rec) or 0.0 <= rec <= 1.0
    if gt is None and all(p >= index.nlist for p in r.nprobes) and _clean(qa):
        # every list probed with exact (f32) codes: the index finds the exact neighbours, unless
        # the k-th and (k+1)-th exact scores tie (then either may be returned)
        s = -np.sort(-(np.atleast_2d(qa).astype(np.float32).astype(np.float64) @ x.astype(np.float64).T), axis=1)
        if (s[:, k - 1] - s[:, k] > 1e-5 * np.abs(s).max(axis=1)).all():
            assert all(rec == 1.0 for rec in r.recall), r.recall
    assert r.nprobes == ([int(nprobes)] if isinstance(nprobes, (int, np.integer)) else [int(p) for p in nprobes])


@examples(5)
@given(st.sampled_from(["one", "two", "empty", "junk", "nan recall"]))
def test_plot_recall(tmp_path_factory, kind):
    r = RecallResult(k=10, n_queries=5, nprobes=[1, 2, 4], recall=[0.5, 0.7, 0.9], qps=[100.0, 50.0, 20.0],
                     seconds=[0.05, 0.1, 0.25], nlist=8)
    results = {"one": {"a": r}, "two": {"a": r, "b": dataclasses.replace(r, k=5)}, "empty": {},
               "junk": {"a": r, "b": {"recall": [1]}},
               "nan recall": {"a": dataclasses.replace(r, recall=[float("nan")] * 3)}}[kind]
    path = tmp_path_factory.getbasetemp() / "fuzz_plots" / f"p{next(_counter)}.png"
    out = attempt(plot_recall, results, path)
    if kind in ("empty", "junk"):
        assert raised(out) and not path.exists()
    else:
        assert out == path and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# modality gaps


def reference_gap(x, p):
    x = x.astype(np.float32).astype(np.float64)
    p = p.astype(np.float32).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    n = len(x)
    sims = p @ x.T
    matched = np.diag(sims)
    return {"matched_cosine": matched.mean(), "random_cosine": (sims.sum() - matched.sum()) / (n * (n - 1)),
            "mean_distance": np.linalg.norm(x.mean(0) - p.mean(0))}


@examples(300)
@given(st.data(), arguments({"sample": (st.integers(2, 20), NOT_POSITIVE), "seed": (VALID_SEEDS, NUMPY_JUNK_SEEDS)},
                            valid_share=0.7))
def test_modality_gap_matches_numpy(data, args):
    kwargs, broken = args
    n, d = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 6))
    x = data.draw(matrices(n, d, specials=0.05, dtype=data.draw(FLOATS_MOSTLY)))
    p = data.draw(matrices(data.draw(mostly(st.just(n), st.just(n + 1), 0.85)), d, specials=0.05))
    out = attempt(modality_gap, x, p, **kwargs)
    zero_rows = bool((np.abs(np.asarray(x, np.float64)).sum(1) == 0).any()
                     or (np.abs(p.astype(np.float64)).sum(1) == 0).any())
    if broken or len(p) != n or n < 2 or not (_finite(x) and _finite(p)) or (zero_rows and kwargs["sample"] >= n):
        assert raised(out), (broken, n, len(p))
        return
    if raised(out):                 # the sample held a zero row, or the magnitudes are extreme
        assert zero_rows or not (_clean(x) and _clean(p)), out
        return
    if kwargs["sample"] < n:        # a seeded sample (zero rows outside it do not matter)
        assert out["n_pairs"] == kwargs["sample"]
        again = attempt(modality_gap, x, p, **kwargs)
        assert again == out                                   # the seeded sample is reproducible
        return
    ref = reference_gap(np.asarray(x), p)
    assert out["n_pairs"] == n
    for key, v in ref.items():
        assert out[key] == pytest.approx(v, abs=1e-6), key
    gap = attempt(synthetic.modality_gap, x, p, chunk_rows=data.draw(st.integers(1, 5)))
    if raised(gap):
        return
    ref_gap = np.linalg.norm(np.asarray(x, np.float32).mean(0, dtype=np.float64)
                             - p.astype(np.float32).mean(0, dtype=np.float64))
    assert gap == pytest.approx(ref_gap, rel=1e-9, abs=1e-12)


@examples(200)
@given(st.data(), st.one_of(st.integers(1, 7), NOT_POSITIVE))
def test_synthetic_modality_gap_and_statistics(data, chunk_rows):
    d = data.draw(st.integers(1, 6))
    x = data.draw(matrices(None, d, max_n=15, specials=0.05))
    n_p = data.draw(mostly(st.just(len(x)), st.integers(1, 15), 0.7))
    p = data.draw(matrices(n_p, d, specials=0.05, dtype=data.draw(st.sampled_from(NUMERIC_DTYPES))))
    gap = attempt(synthetic.modality_gap, x, p, chunk_rows=chunk_rows)
    chunk_ok = isinstance(chunk_rows, (int, np.integer)) and not isinstance(chunk_rows, bool) and chunk_rows >= 1
    if not chunk_ok or not (_finite(x) and _finite(p)):
        assert raised(gap)
        return
    if raised(gap):
        assert not (_clean(x) and _clean(p))
        return
    with np.errstate(over="ignore", invalid="ignore"):
        ref = np.linalg.norm(x.astype(np.float32).mean(0, dtype=np.float64)
                             - np.asarray(p).astype(np.float32).mean(0, dtype=np.float64))
    assert gap == pytest.approx(ref, rel=1e-9, abs=1e-12)
    sample = data.draw(mostly(st.one_of(st.none(), st.integers(2, 20)), NOT_POSITIVE, 0.8))
    stats = attempt(synthetic.cross_modal_statistics, x, p, sample=sample, seed=data.draw(st.integers(0, 5)))
    if raised(stats):
        return
    assert len(x) == len(p) and len(x) >= 2
    assert stats["recall_at_1"] <= stats["recall_at_5"] <= stats["recall_at_10"] <= 1.0
    shares = ("image_variance_in_caption_pcs", "caption_variance_in_image_pcs")
    assert all(np.isfinite(v) for key, v in stats.items() if key not in shares)
    for key in shares:             # NaN only when that modality has no variance in the sample
        assert np.isnan(stats[key]) or -1e-9 <= stats[key] <= 1 + 1e-9
    assert stats["n_pairs"] == (len(x) if sample is None or sample >= len(x) else sample)
    if stats["n_pairs"] == len(x):
        x64, p64 = x.astype(np.float32).astype(np.float64), np.asarray(p).astype(np.float32).astype(np.float64)
        assert stats["matched_cosine"] == pytest.approx(np.einsum("nd,nd->n", x64, p64).mean(), rel=1e-9, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# the synthetic corpus and text encoder

ENCODER = synthetic.SyntheticTextEncoder(dim=16, seed=2, concept_names=["zebra crossing", "Mr. Whiskers"])
PROBE = ["a photo of a zebra crossing, at night.", "mr whiskers"]
PROBE_EMBEDDING = ENCODER.encode_text(PROBE)
NASTY = ["", " ", "{}", "\x00", "日本語", "ÄÖÜ ß", "🙂", "\ud800", "a photo of a dog.", "A PHOTO OF A DOG!",
         "a photo of a zebra crossing, at night.", "mr whiskers", "x" * 3000, "dog " * 300, "the of a",
         "striped tiger", "hot-dog's", "1234", "\n\t"]
TEXTS = st.one_of(st.sampled_from(NASTY), st.text(max_size=20), st.from_regex(r"[A-Za-z ,.!-]{0,30}", fullmatch=True))


@examples(250)
@given(st.one_of(st.lists(TEXTS, max_size=6), st.lists(st.one_of(TEXTS, st.sampled_from([None, 3, b"x"])),
                                                          min_size=1, max_size=3),
                 TEXTS, st.none()),
       mostly(POSITIVE, NOT_POSITIVE))
def test_synthetic_text_encoder(texts, batch_size):
    out = attempt(ENCODER.encode_text, texts, batch_size=batch_size)
    # whatever happened, the encoder (and its caches) still give the same embeddings
    np.testing.assert_array_equal(ENCODER.encode_text(PROBE), PROBE_EMBEDDING)
    if raised(out):
        assert (texts is None or isinstance(texts, str) or any(not isinstance(t, str) for t in texts)
                or not (isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool)
                        and batch_size >= 1)), out
        return
    assert out.shape == (len(texts), 16) and out.dtype == np.float32
    if len(texts):
        np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64), axis=1), 1.0, atol=1e-5)
        # a row depends only on its own text: batching and neighbours never change it
        alone = attempt(ENCODER.encode_text, texts[-1:])
        np.testing.assert_array_equal(alone[0], out[-1])
        ascii_text = texts[0]
        if ascii_text.isascii():                  # case and punctuation do not matter
            shout = attempt(ENCODER.encode_text, [ascii_text.upper() + "!"])
            np.testing.assert_array_equal(shout[0], out[0])


PARAM_FIELDS = [f.name for f in dataclasses.fields(synthetic.SyntheticParams)]
PARAM_JUNK = st.sampled_from([float("nan"), float("inf"), None, "0.5", True, 1j, -0.5, 1.5, 10**9, "offset"])


def param_values(field):
    """Values in (or just around) a field's documented range."""
    if field == "model":
        return st.sampled_from(["nuisance", "offset", "Offset", ""])
    if field.endswith("_dim"):
        return st.one_of(st.integers(-1, 300), st.just(np.int64(12)))
    if "decay" in field or "jitter" in field or field == "prompt_context":
        return st.one_of(st.floats(0, 3), st.sampled_from([0, 50, np.float32(0.5)]))
    if field == "mean_cosine":
        return st.floats(-1, 1)
    return st.one_of(st.floats(0, 1), st.sampled_from([0, 1, 0.999999]))


@st.composite
def synthetic_params(draw):
    field = draw(st.sampled_from(PARAM_FIELDS))
    value = draw(mostly(param_values(field), PARAM_JUNK, 0.7))
    return field, value


@examples(150)
@given(synthetic_params(), mostly(st.integers(6, 24), st.sampled_from([8.5, float("nan"), "16", None, True]), 0.85))
def test_synthetic_params_validation_admits_only_workable_params(field_value, dim):
    field, value = field_value
    params = dataclasses.replace(synthetic.SyntheticParams(), **{field: value})
    ok = attempt(params.validate, dim)
    if raised(ok):
        return
    assert isinstance(dim, int) and not isinstance(dim, bool) and dim >= 8
    corpus = attempt(synthetic.make_corpus, 12, n_concepts=3, dim=dim, params=params, seed=1)
    assert not raised(corpus), corpus        # validated parameters always generate a corpus
    for a in (corpus.images, corpus.captions):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(np.linalg.norm(a.astype(np.float64), axis=1), 1.0, atol=1e-4)
    e = attempt(corpus.text_encoder.encode_text, ["a photo of a dog.", corpus.concept_names[0]])
    assert np.isfinite(e).all()


CORPUS_ARGS = {
    "n_images": (st.integers(1, 40), st.sampled_from([0, -3, 2.0, None, "10"])),
    "n_concepts": (st.one_of(st.none(), st.integers(1, 8)), st.sampled_from([0, -1, 1.5, "3", 10**7])),
    "dim": (st.integers(8, 24), st.sampled_from([7, 0, 16.0, None, "16", True])),
    "background_fraction": (st.floats(0, 0.99), st.sampled_from([1.0, -0.1, float("nan"), None, "x", [0.5]])),
    "concept_imbalance": (st.floats(0, 5), st.sampled_from([-1.0, float("inf"), float("nan"), None])),
    "seed": (st.integers(0, 2**70), NUMPY_JUNK_SEEDS),
    "num_threads": (VALID_THREADS, st.sampled_from([0, -1, 1.5, "2", True])),
}


@examples(80)
@given(arguments(CORPUS_ARGS, valid_share=0.6))
def test_make_corpus_properties(args):
    kwargs, broken = args
    corpus = attempt(synthetic.make_corpus, **kwargs)
    if broken:
        assert raised(corpus), (broken, kwargs[broken])
        return
    assert not raised(corpus), corpus
    n, dim = kwargs["n_images"], kwargs["dim"]
    C = 100 if kwargs["n_concepts"] is None else kwargs["n_concepts"]
    assert corpus.images.shape == corpus.captions.shape == (n, dim)
    assert len(corpus.concept_names) == C and len(set(corpus.concept_names)) == C
    assert ((corpus.labels >= -1) & (corpus.labels < C)).all()
    for a in (corpus.images, corpus.captions):
        np.testing.assert_allclose(np.linalg.norm(a.astype(np.float64), axis=1), 1.0, atol=1e-4)
    # the same seed gives the same corpus whatever the thread count
    again = attempt(synthetic.make_corpus, **dict(kwargs, num_threads=1))
    np.testing.assert_array_equal(again.images, corpus.images)
    np.testing.assert_array_equal(again.labels, corpus.labels)


# ---------------------------------------------------------------------------------------------
# benchmark vectors

VECTOR_ARGS = {
    "n": (st.integers(0, 30), st.sampled_from([-1, 2.5, None, "4"])),
    "d": (st.integers(1, 12), st.sampled_from([0, -2, 3.0, None])),
    "n_clusters": (st.integers(1, 9), st.sampled_from([0, -1, 2.0, None])),
    "spread": (st.one_of(st.floats(0, 5), st.sampled_from([1e6, 1e12])),
               st.sampled_from([float("nan"), float("inf"), -0.5, 1e300, "0.5", None])),
    "seed": (st.integers(0, 2**32), st.sampled_from([-1, 1.5, None, "1"])),
    "centre_seed": (st.one_of(st.none(), st.integers(0, 50)), st.sampled_from([-1, 0.5, "2"])),
    "dtype": (st.sampled_from([np.float32, np.float64, np.float16, "float32"]),
              st.sampled_from([np.int32, bool, object, "U3", "int8", np.complex64])),
}


@examples(250)
@given(arguments(VECTOR_ARGS, valid_share=0.6))
def test_clustered_unit_vectors(args):
    kwargs, broken = args
    n, d = kwargs.pop("n"), kwargs.pop("d")
    out = attempt(datasets.clustered_unit_vectors, n, d, return_labels=True, **kwargs)
    if broken:
        assert raised(out), (broken, kwargs.get(broken))
        return
    assert not raised(out), out
    x, labels = out
    dtype = np.dtype(kwargs["dtype"])
    assert x.shape == (n, d) and x.dtype == dtype and labels.shape == (n,)
    assert ((labels >= 0) & (labels < kwargs["n_clusters"])).all()
    tol = 2e-3 if dtype == np.float16 else 1e-5
    np.testing.assert_allclose(np.linalg.norm(x.astype(np.float64), axis=1), 1.0, atol=tol)
    centre_seed = kwargs["seed"] if kwargs["centre_seed"] is None else kwargs["centre_seed"]
    centres = attempt(datasets.cluster_centres, d, kwargs["n_clusters"], seed=centre_seed)
    np.testing.assert_allclose(np.linalg.norm(centres.astype(np.float64), axis=1), 1.0, atol=1e-5)
    if kwargs["spread"] == 0 and n:                  # no spread: every vector is its centre
        np.testing.assert_allclose(x.astype(np.float64), centres[labels], atol=tol)
    again = attempt(datasets.clustered_unit_vectors, n, d, return_labels=True, **kwargs)
    np.testing.assert_array_equal(again[0], x)


# ---------------------------------------------------------------------------------------------
# the SIMD switch


@examples(60)
@given(st.one_of(st.sampled_from(["scalar", "avx2", "avx512", "avx2+vnni", "avx512+vnni", "neon", "neon+dotprod", "", "AVX2",
                                  " scalar", "scalar\x00", "sse4", "avx512+", "+vnni", "avx512+vnni+vnni", None, 3,
                                  b"scalar", ["scalar"]]), st.text(max_size=8)))
def test_set_simd_level(level):
    before = mudg_fast.simd_level()
    try:
        out = attempt(mudg_fast.set_simd_level, level)
        supported = mudg_fast.available_simd_levels()
        if level in supported:
            assert not raised(out) and mudg_fast.simd_level() == level
        else:
            assert raised(out) and mudg_fast.simd_level() == before   # a refused level changes nothing
    finally:
        mudg_fast.set_simd_level(before)


# ---------------------------------------------------------------------------------------------
# ClipEncoder input checks (a tiny random open_clip model)


@pytest.fixture(scope="module")
def clip_encoder():
    torch = pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    from clip_helpers import tiny_parts
    from mudg_fast.clip import ClipEncoder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, _, pre, tok = tiny_parts(0)
    enc = ClipEncoder.from_model(model, tok, pre, batch_size=3, progress=False)
    enc.probe = enc.encode_text(["a photo of a dog."])
    yield enc
    torch.set_num_threads(threads)


def _clip_unchanged(enc):
    """A failed (or any) call leaves the encoder usable and its output unchanged."""
    np.testing.assert_allclose(enc.encode_text(["a photo of a dog."]), enc.probe, atol=1e-6)


@examples(30)
@given(st.one_of(st.lists(TEXTS, max_size=5), st.lists(st.one_of(TEXTS, st.sampled_from([None, 7, b"a"])),
                                                          min_size=1, max_size=3), TEXTS, st.none()))
def test_clip_encode_text(clip_encoder, texts):
    out = attempt(clip_encoder.encode_text, texts)
    _clip_unchanged(clip_encoder)
    if raised(out):
        assert texts is None or isinstance(texts, str) or any(not isinstance(t, str) for t in texts)
        return
    assert out.shape == (len(texts), clip_encoder.dim) and out.dtype == np.float32
    if len(texts):
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
        alone = attempt(clip_encoder.encode_text, texts[-1:])
        np.testing.assert_allclose(alone[0], out[-1], atol=1e-5)   # batching does not change a row


@st.composite
def images(draw, folder):
    from PIL import Image

    kind = draw(mostly(st.sampled_from(["rgb", "mode", "path"]),
                       st.sampled_from(["empty", "missing", "junk file", "folder", "array", "int"]), 0.85))
    if kind in ("rgb", "mode", "empty", "path"):
        w, h = (0, draw(st.integers(0, 5))) if kind == "empty" else (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
        mode = draw(st.sampled_from(["L", "RGBA", "I;16", "F", "1", "P", "CMYK"])) if kind == "mode" else "RGB"
        im = Image.new(mode, (w, h))
        if kind != "path":
            return im, kind != "empty"
        path = folder / f"im{next(_counter)}.png"
        im.save(path)
        return str(path), True
    if kind == "missing":
        return folder / "no such image.png", False
    if kind == "junk file":
        path = folder / f"junk{next(_counter)}.png"
        path.write_bytes(draw(st.binary(max_size=40)))
        return path, False
    return {"folder": folder, "array": np.zeros((4, 4, 3), np.uint8), "int": 3}[kind], False


@examples(30)
@given(st.data())
def test_clip_encode_images(clip_encoder, tmp_path_factory, data):
    folder = tmp_path_factory.getbasetemp() / "fuzz_images"
    folder.mkdir(exist_ok=True)
    items = data.draw(st.lists(images(folder), max_size=4))
    out = attempt(clip_encoder.encode_images, [im for im, _ in items], allowed=(TypeError, ValueError, OSError))
    _clip_unchanged(clip_encoder)
    if all(ok for _, ok in items):
        assert not raised(out), out
        assert out.shape == (len(items), clip_encoder.dim) and np.isfinite(out).all()
        if len(items):
            np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    else:
        assert raised(out)
