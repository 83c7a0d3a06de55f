"""Peer implementations timed in a fresh process (so that OPENBLAS_CORETYPE takes effect).

Usage: python peers.py TASK 'JSON_PARAMS'  -> prints one JSON line with the timings.
Data comes from the same seeded generators as the in-process benchmarks, or from .npy files
whose paths are passed in the parameters.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


def _times(fn, rounds, warmup=0):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        r = fn()
        out.append(time.perf_counter() - t0)
    return out, r


def _faiss():
    import faiss

    faiss.omp_set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    return faiss


def _load(p):
    return np.load(p, mmap_mode=None)


def task_numpy_matmul(p):
    a = _load(p["x"])
    b = _load(p["c"])
    t, _ = _times(lambda: a @ b.T, p["rounds"], warmup=1)
    return {"times": t}


def task_faiss_kmeans(p):
    faiss = _faiss()
    x = _load(p["x"])
    init = _load(p["init"])
    km = faiss.Kmeans(x.shape[1], init.shape[0], niter=p["iters"], spherical=True, seed=p["seed"],
                      max_points_per_centroid=10**9, verbose=False)
    t0 = time.perf_counter()
    km.train(x, init_centroids=init)
    total = time.perf_counter() - t0
    cum = [s["time"] for s in km.iteration_stats]
    per_iter = [cum[0]] + [b - a for a, b in zip(cum, cum[1:])]
    return {"times": per_iter, "total": total, "objective": km.iteration_stats[-1]["obj"]}


def task_faiss_flat(p):
    faiss = _faiss()
    xb = _load(p["xb"])
    xq = _load(p["xq"])
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    t, (D, I) = _times(lambda: index.search(xq, p["k"]), p["rounds"], warmup=p.get("warmup", 0))
    np.save(p["out_ids"], I)
    return {"times": t}


_QT = {"f16": "QT_fp16", "sq8": "QT_8bit", "sq4": "QT_4bit"}


def task_faiss_ivf(p):
    """Builds faiss IVF indexes with the given centroids; times add and searches; recall vs gt."""
    faiss = _faiss()
    xb = _load(p["xb"])
    cent = _load(p["centroids"])
    gt = _load(p["gt"])
    d, nlist = xb.shape[1], cent.shape[0]
    out = {"add": {}, "search": {}}

    def recall(I, k=10):
        return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(I, gt)]))

    for codec in p["codecs"]:
        quantizer = faiss.IndexFlatIP(d)
        quantizer.add(cent)
        if codec == "f32":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            qt = getattr(faiss.ScalarQuantizer, _QT[codec])
            index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, qt, faiss.METRIC_INNER_PRODUCT)
            sample = xb[np.sort(np.random.default_rng(0).choice(len(xb), min(len(xb), 65536), replace=False))]
            index.sq.train(sample)  # the codec only: keep our centroids
        index.is_trained = True
        t0 = time.perf_counter()
        index.add(xb)
        out["add"][codec] = [time.perf_counter() - t0]
        if codec == "f32" and p.get("add_rounds", 1) > 1:
            for _ in range(p["add_rounds"] - 1):
                index.reset()
                t0 = time.perf_counter()
                index.add(xb)
                out["add"][codec].append(time.perf_counter() - t0)
        for name, qpath, k, nprobes, rounds in p["searches"]:
            if codec not in p["search_codecs"].get(name, p["codecs"]):
                continue
            xq = _load(qpath)
            for nprobe in nprobes:
                index.nprobe = nprobe
                t, (D, I) = _times(lambda index=index, xq=xq, k=k: index.search(xq, k), rounds)
                entry = {"times": t}
                if name == "q1000":
                    entry["recall"] = recall(I)
                out["search"][f"{name}/{codec}/{nprobe}"] = entry
        del index
    return out


def task_faiss_sq4(p):
    """faiss IVF QT_4bit with the given centroids, by_residual on and off, its codec trained as
    faiss trains it (IndexIVF.train on a sample: the quantizer is kept, the encoder is fitted to
    the residuals or to the vectors); search times and recall@10 per nprobe."""
    faiss = _faiss()
    xb, xq, cent, gt = (_load(p[k]) for k in ("xb", "xq", "centroids", "gt"))
    d, nlist = xb.shape[1], cent.shape[0]
    sample = xb[np.sort(np.random.default_rng(0).choice(len(xb), min(len(xb), 65536), replace=False))]
    out = {}
    for by_residual in (True, False):
        quantizer = faiss.IndexFlatIP(d)
        quantizer.add(cent)
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_4bit,
                                              faiss.METRIC_INNER_PRODUCT, by_residual)
        index.train(sample)  # the quantizer already holds nlist centroids: only the encoder trains
        index.add(xb)
        for nprobe in p["nprobes"]:
            index.nprobe = nprobe
            t, (_, ids) = _times(lambda: index.search(xq, 10), p["rounds"], warmup=1)
            rec = float(np.mean([len(set(a[a >= 0]) & set(b[:10])) / 10 for a, b in zip(ids, gt)]))
            out[f"{'residual' if by_residual else 'direct'}/{nprobe}"] = {"times": t, "recall": rec}
        del index
    return out


def _recall_at(I, gt, k=10):
    I = np.asarray(I)[:, :k]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(I, gt[:, :k])]))


def _dir_bytes(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def task_scann_sweep(p):
    """ScaNN (tree + asymmetric hashing, anisotropic loss), with and without exact reordering:
    builds once per variant, then times search_batched_parallel for each (leaves, reorder)."""
    import tempfile

    import scann

    xb = _load(p["xb"])
    xq = _load(p["xq"])
    gt = _load(p["gt"])
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    out = {"builds": {}, "search": []}
    for variant in p["variants"]:  # {"name", "reorder": max reorder or 0}
        b = scann.scann_ops_pybind.builder(xb, 10, "dot_product")
        b = b.tree(num_leaves=p["num_leaves"], num_leaves_to_search=max(p["leaves"]),
                   training_sample_size=min(len(xb), p["train_size"]))
        b = b.score_ah(p.get("dims_per_block", 2), anisotropic_quantization_threshold=p.get("aq_threshold", 0.2))
        if variant["reorder"]:
            b = b.reorder(variant["reorder"])
        b.set_n_training_threads(threads)
        t0 = time.perf_counter()
        searcher = b.build()
        build_s = time.perf_counter() - t0
        searcher.set_num_threads(threads)
        with tempfile.TemporaryDirectory() as tmp:
            searcher.serialize(tmp)
            nbytes = _dir_bytes(tmp)
        out["builds"][variant["name"]] = {"seconds": build_s, "bytes": nbytes}
        for leaves in p["leaves"]:
            for pre in (variant.get("pre_reorder") or [None]):
                fn = lambda: searcher.search_batched_parallel(xq, 10, pre, leaves, batch_size=256)  # noqa: E731
                t, (I, _) = _times(fn, p["rounds"], warmup=1)
                out["search"].append({"variant": variant["name"], "leaves": leaves, "reorder": pre or 0, "times": t,
                                      "recall": _recall_at(I, gt), "bytes_per_vector": nbytes / len(xb)})
        del searcher
    return out


def task_faiss_rerank_sweep(p):
    """faiss IVF indexes at their best settings for this workload: scalar quantisers (own
    k-means, or the given centroids) and PQ fast-scan with an exact refinement stage
    (IndexRefineFlat); times each nprobe (and refinement factor)."""
    faiss = _faiss()
    xb = _load(p["xb"])
    xq = _load(p["xq"])
    gt = _load(p["gt"])
    d = xb.shape[1]
    out = {"builds": {}, "search": []}
    for spec in p["indexes"]:  # {"name", "factory", "centroids": path or None, "refine": [k_factor...]}
        t0 = time.perf_counter()
        index = faiss.index_factory(d, spec["factory"], faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        if spec.get("centroids"):
            cent = _load(spec["centroids"])
            ivf.quantizer.add(cent)
            ivf.is_trained = ivf.quantizer.ntotal == cent.shape[0]
            sample = xb[np.sort(np.random.default_rng(0).choice(len(xb), min(len(xb), 65536), replace=False))]
            faiss.downcast_index(index).sq.train(sample)  # the codec only: keep the given cells
            ivf.is_trained = index.is_trained = True
        else:
            sample = xb[np.sort(np.random.default_rng(0).choice(len(xb), min(len(xb), p["train_size"]),
                                                             replace=False))]
            index.train(sample)
        refine = spec.get("refine") or []
        if refine:
            index = faiss.IndexRefineFlat(index)
        index.add(xb)
        build_s = time.perf_counter() - t0
        nbytes = faiss.serialize_index(index).nbytes
        out["builds"][spec["name"]] = {"seconds": build_s, "bytes": int(nbytes)}
        for nprobe in p["nprobes"]:
            ivf.nprobe = nprobe
            for kf in (refine or [None]):
                if kf is not None:
                    index.k_factor = kf
                t, (D, I) = _times(lambda: index.search(xq, 10), p["rounds"], warmup=1)
                out["search"].append({"index": spec["name"], "nprobe": nprobe, "k_factor": kf or 0, "times": t,
                                      "recall": _recall_at(I, gt), "bytes_per_vector": nbytes / len(xb)})
        del index
    return out


def task_faiss_two_level(p):
    """faiss.contrib.clustering.two_level_clustering (spherical, the given iterations at both levels)."""
    faiss = _faiss()
    from faiss.contrib.clustering import two_level_clustering

    x = _load(p["x"])
    t0 = time.perf_counter()
    # clustering_niter is the Lloyd iterations of both levels (faiss passes it on as niter)
    c = two_level_clustering(x, p["nc1"], p["k"], clustering_niter=p["iters"], spherical=True, seed=p["seed"])[0]
    total = time.perf_counter() - t0
    np.save(p["out"], np.ascontiguousarray(c, dtype=np.float32))
    return {"times": [total]}


def task_faiss_hnsw_quantizer(p):
    """An HNSW32 graph over the centroids (faiss's IVF..._HNSW32 quantizer): build time, then per
    efSearch the time to assign the vectors and the top-1 agreement with the exact nearest (the
    vectors are the ones `exact` labels). With stop_at, the sweep ends at the first efSearch whose
    agreement reaches it: larger ones only cost more."""
    faiss = _faiss()
    cent = _load(p["centroids"])
    x = _load(p["x"])
    exact = _load(p["exact"])
    index = faiss.IndexHNSWFlat(cent.shape[1], p.get("M", 32), faiss.METRIC_INNER_PRODUCT)
    t0 = time.perf_counter()
    index.add(cent)
    build = time.perf_counter() - t0
    runs = []
    for ef in p["efs"]:
        index.hnsw.efSearch = ef
        t, (_, ids) = _times(lambda: index.search(x, 1), p.get("rounds", 1))
        runs.append({"ef": ef, "times": t, "top1": float(np.mean(ids[: len(exact), 0] == exact))})
        if runs[-1]["top1"] >= p.get("stop_at", 2.0):
            break
    return {"build": build, "runs": runs}


TASKS = {k[5:]: v for k, v in globals().items() if k.startswith("task_")}

if __name__ == "__main__":
    task, params = sys.argv[1], json.loads(sys.argv[2])
    result = TASKS[task](params)
    print(json.dumps(result))
