"""Several Python threads using one index (or the free functions) at once get exactly the results
of serial calls. The native calls release the GIL, so these threads really do run the core
concurrently, each with its own native worker threads."""

import threading
from concurrent.futures import ThreadPoolExecutor

import mudg_fast
import numpy as np
import pytest
from mudg_fast.retrieve import combine_retrievals
from mudg_fast.select import select_by_clustering

N_THREADS = 6
ROUNDS = 4


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(77)
    return unit(rng, 20_000, 40), unit(rng, 2_000, 40)


def run_concurrently(jobs):
    """Runs every job ROUNDS times from N_THREADS threads that start together; returns the
    results in job order for each round."""
    barrier = threading.Barrier(N_THREADS)

    def worker(w):
        barrier.wait()
        return [[job() for job in jobs[w::N_THREADS]] for _ in range(ROUNDS)]

    with ThreadPoolExecutor(N_THREADS) as pool:
        per_worker = list(pool.map(worker, range(N_THREADS)))
    return per_worker


def assert_same(serial, jobs, per_worker):
    for w, rounds in enumerate(per_worker):
        expected = serial[w::N_THREADS]
        for got in rounds:
            for a, b in zip(got, expected):
                for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
                    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("codec", ["f32", "sq8", "sq4"])
@pytest.mark.parametrize("mmap", [False, True])
def test_threads_searching_one_index(data, codec, mmap, tmp_path):
    xb, xq = data
    ix = mudg_fast.IVFIndex(40, 64, codec=codec).train(xb, max_iter=4)
    ix.add(xb)
    if mmap:
        ix.save(tmp_path / "ix.bin")
        ix = mudg_fast.IVFIndex.load(tmp_path / "ix.bin", mmap=True)
    # a mix of batch sizes and modes: list-major batches, per-query calls, re-ranking
    jobs = []
    for j in range(18):
        q = xq[(j * 97) % 1500:][: [1, 7, 300][j % 3]]
        mode = ["auto", "list_major", "per_query"][j % 3]
        if j % 6 == 5:
            jobs.append(lambda q=q: ix.search(q, 10, nprobe=8, rerank=30, source=xb))
        else:
            jobs.append(lambda q=q, mode=mode, j=j: ix.search(q, 5 + j, nprobe=1 + j % 9, mode=mode))
    serial = [job() for job in jobs]
    assert_same(serial, jobs, run_concurrently(jobs))


def test_threads_reading_one_index_while_reconstructing(data):
    xb, xq = data
    ix = mudg_fast.IVFIndex(40, 32, codec="f16").train(xb, max_iter=3)
    ix.add(xb, ids=np.arange(len(xb)) * 3)
    jobs = []
    for j in range(12):
        if j % 2:
            jobs.append(lambda j=j: ix.reconstruct(np.arange(j, 5000, 7) * 3))
        else:
            jobs.append(lambda j=j: ix.search(xq[j * 50:(j + 1) * 50], 8, nprobe=4))
    jobs.append(lambda: ix.list_sizes())
    jobs.append(lambda: ix.list_ids(3))
    serial = [job() for job in jobs]
    assert_same(serial, jobs, run_concurrently(jobs))


def test_first_reconstruct_from_many_threads_at_once(data):
    """reconstruct() builds its id map lazily: threads arriving together must build it once."""
    xb, _ = data
    for _ in range(5):
        ix = mudg_fast.IVFIndex(40, 16, codec="f32").train(xb[:2000], max_iter=2)
        ix.add(xb, ids=np.arange(len(xb))[::-1] * 2)
        jobs = [lambda j=j, ix=ix: ix.reconstruct(np.arange(j, 20_000, 13) * 2) for j in range(N_THREADS)]
        barrier = threading.Barrier(N_THREADS)

        def first_call(job, barrier=barrier):
            barrier.wait()
            return job()

        with ThreadPoolExecutor(N_THREADS) as pool:
            got = list(pool.map(first_call, jobs))
        for j, g in enumerate(got):
            np.testing.assert_array_equal(g, xb[::-1][np.arange(j, 20_000, 13)])


def test_threads_calling_knn_kmeans_and_selection(data):
    xb, xq = data
    km = mudg_fast.KMeans(50, max_iter=3, seed=1).fit(xb[:5000])
    ids = np.random.default_rng(3).integers(0, 3000, (3, 10, 40))
    labels = np.random.default_rng(4).integers(0, 8, 3000)
    jobs = [
        lambda: mudg_fast.knn(xq[:200], xb, 10),
        lambda: mudg_fast.knn(xq[200:205], xb, 50, num_threads=1),
        lambda: km.predict(xb[5000:9000]),
        lambda: mudg_fast.kmeans(xb[:3000], 20, max_iter=3, seed=2),
        lambda: combine_retrievals(ids, seed=5),
        lambda: select_by_clustering(xb[:3000], labels, 20, seed=6),
    ]
    serial = [job() for job in jobs]
    assert_same(serial, jobs, run_concurrently(jobs))
