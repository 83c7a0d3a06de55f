"""Determinism matrix: threads {1, 2} x every SIMD level this CPU has (scalar, avx2, avx2+vnni,
avx512, avx512+vnni) give bit-identical outputs for k-means (flat and two-level), knn, index build
(including the saved file's bytes, also with a two-level quantizer) and search, retrieval
combination and selection.

One workload runs under each configuration; every output is reduced to a SHA-256 of its bytes
and compared with the scalar, single-threaded run.
"""

import hashlib

import mudg_fast
import numpy as np
import pytest
from conftest import available_simd_levels
from mudg_fast.retrieve import combine_retrievals
from mudg_fast.select import filter_by_similarity, select_by_clustering, similarity_to_prototypes

CONFIGS = [(level, t) for level in available_simd_levels() for t in (1, 2)]
BASELINE = ("scalar", 1)


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def workload(threads: int, tmp_path) -> dict:
    rng = np.random.default_rng(2024)
    d = 48
    # clustered data with exact duplicates, so ties and empty clusters are exercised
    centres = unit(rng, 40, d)
    images = unit(rng, 12_000, d) * 0.6 + centres[rng.integers(0, 40, 12_000)]
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    images[100:200] = images[0]
    captions = images + 0.5 * unit(rng, 12_000, d)
    captions /= np.linalg.norm(captions, axis=1, keepdims=True)
    queries = unit(rng, 300, d)
    out = {}

    s, i = mudg_fast.knn(queries, images, 25, num_threads=threads)
    out["knn"] = digest(s, i)

    for spherical in (True, False):
        km = mudg_fast.KMeans(64, max_iter=6, seed=3, spherical=spherical, num_threads=threads).fit(images)
        out[f"kmeans spherical={spherical}"] = digest(km.cluster_centers_, km.labels_,
                                                      np.float64(km.inertia_), km.objective_history_)
    pk = mudg_fast.PairedKMeans(32, max_iter=5, seed=4, num_threads=threads).fit(images[:4000], captions[:4000])
    out["paired kmeans"] = digest(pk.cluster_centers_, pk.labels_, pk.pairs_)
    tk = mudg_fast.PairedKMeans(150, max_iter=4, seed=4, num_threads=threads, method="two_level",
                                max_points_per_centroid=40).fit(images, captions, pairing="given")
    out["two-level paired kmeans"] = digest(tk.cluster_centers_, tk.labels_, tk.coarse_centers_,
                                            np.float64(tk.inertia_), tk.objective_history_)
    ix = mudg_fast.IVFIndex(d, 150, quantizer="two_level", quantizer_probe=3, num_threads=threads)
    ix.set_centroids(tk.cluster_centers_, seed=2).add(images)
    path = tmp_path / f"two-level-{threads}.bin"
    ix.save(path)
    out["ivf two-level quantizer file"] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    out["ivf two-level quantizer search"] = digest(*ix.search(captions[:500], 30, nprobe=6))

    for codec in ("f32", "f16", "sq8", "sq4"):
        ix = mudg_fast.IVFIndex(d, 32, codec=codec, num_threads=threads)
        if codec == "sq8":
            ix.train_paired(images[:6000], captions[:6000], max_iter=4, seed=5)
        else:
            ix.train(images, max_iter=4, seed=5)
        ix.add(images)
        path = tmp_path / f"{codec}-{threads}.bin"
        ix.save(path)
        out[f"ivf {codec} file"] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        for mode in ("list_major", "per_query"):
            out[f"ivf {codec} search {mode}"] = digest(*ix.search(captions[:500], 30, nprobe=6, mode=mode))
        out[f"ivf {codec} rerank"] = digest(*ix.search(captions[:200], 10, nprobe=6, rerank=40, source=images))
        if codec == "sq4":  # re-ranking from float16 rows and from a callable, many blocks of queries
            _, shortlist = ix.search(captions[:2000], 60, nprobe=6)
            half = images.astype(np.float16)
            out["rerank f16"] = digest(*mudg_fast.rerank(captions[:2000], shortlist, 10, half, num_threads=threads))
            out["rerank callable"] = digest(*mudg_fast.rerank(captions[:2000], shortlist, 10, lambda i: images[i],
                                                              num_threads=threads))

    # retrieval -> voting -> filter -> selection, as the pipeline runs them
    ix = mudg_fast.IVFIndex(d, 32, codec="sq8", num_threads=threads)
    ix.train(images, max_iter=4, seed=6)
    ix.add(images)
    prompts = unit(rng, 3 * 20, d)  # 3 augmentations x 20 classes
    sc, ids = ix.search(prompts, 64, nprobe=4)
    ids = ids.reshape(3, 20, 64)
    comb = combine_retrievals(ids, sc.reshape(3, 20, 64), seed=7, return_details=True, num_threads=threads)
    out["combine"] = digest(comb.ids, comb.labels, comb.votes, comb.best_score, comb.n_tied)
    protos = prompts[:20]
    emb = images[comb.ids]
    out["similarity"] = digest(similarity_to_prototypes(emb, comb.labels, protos, num_threads=threads))
    keep = filter_by_similarity(emb, comb.labels, protos, threshold=0.0, num_threads=threads)
    out["filter"] = digest(keep)
    for strategy in ("random", "nearest"):
        sel = select_by_clustering(emb[keep], comb.labels[keep], 8, strategy=strategy, seed=8,
                                   num_threads=threads)
        out[f"select {strategy}"] = digest(sel)
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    before = mudg_fast.simd_level()
    done = {}
    try:
        for level, threads in CONFIGS:
            mudg_fast.set_simd_level(level)
            done[(level, threads)] = workload(threads, tmp_path_factory.mktemp(f"{level}{threads}"))
    finally:
        mudg_fast.set_simd_level(before)
    return done


def test_matrix_covers_the_cpu():
    assert ("scalar", 1) in CONFIGS and ("scalar", 2) in CONFIGS
    best = mudg_fast.detected_simd_level()
    if best != "scalar":
        assert ("avx2", 2) in CONFIGS
    if best.startswith("avx512"):
        assert ("avx512", 2) in CONFIGS
    assert (best, 1) in CONFIGS and (best, 2) in CONFIGS  # VNNI levels too, where the CPU has them


@pytest.mark.parametrize("config", CONFIGS, ids=[f"{lv}-{t}thread" for lv, t in CONFIGS])
def test_identical_outputs(results, config):
    base, got = results[BASELINE], results[config]
    assert got.keys() == base.keys()
    differ = [name for name in base if got[name] != base[name]]
    assert not differ, f"{config} differs from {BASELINE} in: {differ}"
