"""Exact search against a numpy brute-force oracle."""

import numpy as np
import pytest
from conftest import available_simd_levels, unit_rows

import mudg_fast

DIMS = [1, 3, 15, 16, 17, 100, 513]


def check_against_numpy(xq, xb, k, scores, ids):
    full = xq.astype(np.float64) @ xb.astype(np.float64).T
    kk = min(k, xb.shape[0])
    expect = -np.sort(-full, axis=1)[:, :kk]
    atol = 1e-5 * max(1.0, np.abs(full).max())
    np.testing.assert_allclose(scores[:, :kk], expect, rtol=1e-5, atol=atol)
    # the ids point to those scores (robust to ties)
    np.testing.assert_allclose(np.take_along_axis(full, ids[:, :kk], 1), scores[:, :kk], rtol=1e-5, atol=atol)
    assert (ids[:, :kk] >= 0).all()
    for row in ids[:, :kk]:
        assert len(set(row.tolist())) == kk  # no duplicates
    assert (ids[:, kk:] == -1).all() and np.isneginf(scores[:, kk:]).all()
    assert (np.diff(scores[:, :kk], axis=1) <= 0).all()  # best first


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("k", [1, 5, 64, 300])
def test_knn_matches_numpy(rng, dim, k):
    xb = rng.standard_normal((257, dim)).astype(np.float32)
    xq = rng.standard_normal((13, dim)).astype(np.float32)
    scores, ids = mudg_fast.knn(xq, xb, k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert scores.shape == (13, k) and ids.shape == (13, k)
    check_against_numpy(xq, xb, k, scores, ids)


def test_knn_large_database_streamed(rng):
    # Above the "pack everything" threshold the database is streamed per thread and merged.
    xb = unit_rows(rng, 40_000, 520)
    xq = unit_rows(rng, 50, 520)
    s, i = mudg_fast.knn(xq, xb, 10)
    check_against_numpy(xq, xb, 10, s, i)
    s1, i1 = mudg_fast.knn(xq, xb, 1)
    np.testing.assert_array_equal(i1[:, 0], i[:, 0])


@pytest.mark.parametrize("n", [1, 15, 16, 17, 95, 97])
def test_knn_small_and_ragged_sizes(rng, n):
    xb = rng.standard_normal((n, 33)).astype(np.float32)
    xq = rng.standard_normal((n + 5, 33)).astype(np.float32)
    for k in (1, 7, n + 3):
        s, i = mudg_fast.knn(xq, xb, k)
        check_against_numpy(xq, xb, k, s, i)


def test_ties_go_to_lower_id(rng):
    base = rng.standard_normal((5, 8)).astype(np.float32)
    xb = np.repeat(base, 40, axis=0)  # every vector 40 times: ids 0..39 equal, 40..79 equal, ...
    xq = base[[2, 4]]
    s, i = mudg_fast.knn(xq, xb, 10)
    np.testing.assert_array_equal(i[0], np.arange(80, 90))
    np.testing.assert_array_equal(i[1], np.arange(160, 170))
    s1, i1 = mudg_fast.knn(xq, xb, 1)
    np.testing.assert_array_equal(i1[:, 0], [80, 160])
    xb_big = np.repeat(base, 6000, axis=0)  # streamed path, ties across threads
    s, i = mudg_fast.knn(base[[1]], xb_big, 5)
    np.testing.assert_array_equal(i[0], np.arange(6000, 6005))


def test_appending_zero_columns_changes_nothing(rng):
    xb = rng.integers(-4, 5, (200, 19)).astype(np.float32)
    xq = rng.integers(-4, 5, (9, 19)).astype(np.float32)
    s, i = mudg_fast.knn(xq, xb, 12)
    pad = lambda a: np.hstack([a, np.zeros((a.shape[0], 13), np.float32)])  # noqa: E731
    s2, i2 = mudg_fast.knn(pad(xq), pad(xb), 12)
    np.testing.assert_array_equal(s, s2)
    np.testing.assert_array_equal(i, i2)


@pytest.mark.parametrize("level", available_simd_levels())
def test_every_simd_level_is_bit_identical_to_scalar(rng, level, simd_level_restored):
    xb = rng.standard_normal((3001, 77)).astype(np.float32)
    xq = rng.standard_normal((40, 77)).astype(np.float32)
    mudg_fast.set_simd_level("scalar")
    ref = mudg_fast.knn(xq, xb, 9)
    mudg_fast.set_simd_level(level)
    assert mudg_fast.simd_level() == level
    got = mudg_fast.knn(xq, xb, 9)
    np.testing.assert_array_equal(ref[0], got[0])
    np.testing.assert_array_equal(ref[1], got[1])


def test_thread_count_does_not_change_results(rng):
    xb = unit_rows(rng, 30_000, 96)
    xq = unit_rows(rng, 300, 96)
    a = mudg_fast.knn(xq, xb, 20, num_threads=1)
    b = mudg_fast.knn(xq, xb, 20, num_threads=2)
    c = mudg_fast.knn(xq, xb, 20, num_threads=3)
    for x in (b, c):
        np.testing.assert_array_equal(a[0], x[0])
        np.testing.assert_array_equal(a[1], x[1])


def test_inputs_are_converted(rng):
    xb = rng.standard_normal((50, 12))
    xq = rng.standard_normal(12)  # one query as a vector, float64
    s, i = mudg_fast.knn(xq, xb, 3)
    assert s.shape == (1, 3)
    check_against_numpy(xq[None].astype(np.float32), xb.astype(np.float32), 3, s, i)
    s16, i16 = mudg_fast.knn(xq.astype(np.float16), xb.astype(np.float16), 3)
    assert i16.shape == (1, 3)
    s_f, i_f = mudg_fast.knn(np.asfortranarray(xq[None]), np.asfortranarray(xb), 3)
    np.testing.assert_array_equal(i_f, i)


def test_empty_queries_give_empty_results(rng):
    s, i = mudg_fast.knn(np.zeros((0, 4), np.float32), rng.standard_normal((10, 4)), 3)
    assert s.shape == (0, 3) and i.shape == (0, 3)


@pytest.mark.parametrize(
    "queries, database, k, exc, match",
    [
        (np.zeros((2, 3)), np.zeros((5, 4)), 1, ValueError, "dimensions"),
        (np.zeros((2, 3)), np.zeros((0, 3)), 1, ValueError, "empty"),
        (np.zeros((2, 3)), np.zeros((5, 3)), 0, ValueError, "k must be"),
        (np.zeros((2, 3)), np.zeros((5, 3)), 2.5, TypeError, "integer"),
        (np.zeros((2, 3)), np.full((5, 3), np.nan), 1, ValueError, "NaN"),
        (np.full((2, 3), np.inf), np.zeros((5, 3)), 1, ValueError, "NaN or infinite"),
        (np.zeros((2, 3)), np.zeros((5, 3, 1)), 1, ValueError, "2-D"),
        (np.array([["a", "b"]]), np.zeros((5, 2)), 1, TypeError, "numeric"),
        (np.zeros((2, 0)), np.zeros((5, 0)), 1, ValueError, "zero columns"),
    ],
)
def test_bad_input_raises_clear_errors(queries, database, k, exc, match):
    with pytest.raises(exc, match=match):
        mudg_fast.knn(queries, database, k)


def test_core_rejects_wrong_dtype_without_copy():
    # The private binding never converts silently: float64 is refused, not copied.
    with pytest.raises(TypeError):
        mudg_fast._core.knn(np.zeros((2, 3)), np.zeros((4, 3), np.float32), 1, 0)


def test_contiguous_float32_is_not_copied(rng):
    from mudg_fast._arrays import as_matrix

    x = rng.standard_normal((100, 8)).astype(np.float32)
    assert as_matrix(x) is x
    assert np.shares_memory(as_matrix(x[10:20]), x)  # a C-contiguous row slice is a view too
    assert not np.shares_memory(as_matrix(x[:, :4]), x)  # strided: one converted copy
    assert as_matrix(x.astype(np.float16)).dtype == np.float32
