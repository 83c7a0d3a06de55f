"""faiss's route for the web-scale benchmark, run in a fresh process (OPENBLAS_CORETYPE applies).

Usage: python peers_webscale.py TASK 'JSON_PARAMS'  -> prints one JSON line.

build:  one IndexIVFScalarQuantizer (QT_4bit, inner product, not by residual) trained with our
        centroids and a codec trained on the same sample; one copy per part fed the part's rows
        from the same fp16 shards (add_with_ids), written with write_index; then the parts merged
        with faiss.contrib.ondisk.merge_ondisk, as clip-retrieval and autofaiss do.
search: the part files opened memory-mapped and searched one by one, their top-k merged here.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


def _faiss():
    import faiss

    faiss.omp_set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    return faiss


def evict(paths) -> None:
    """Drops the files' pages from the page cache (a cold start without root)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def merge_topk(scores, ids, k):
    s = np.concatenate(scores, axis=1)
    i = np.concatenate(ids, axis=1)
    key_id = np.where(i < 0, np.iinfo(np.int64).max, i)
    key_s = np.where(i < 0, np.inf, -s.astype(np.float64))
    order = np.lexsort((key_id, key_s), axis=1)[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


def task_build(p):
    faiss = _faiss()
    cent = np.load(p["centroids"])
    sample = np.load(p["sample"])
    d, nlist = cent.shape[1], cent.shape[0]
    t0 = time.perf_counter()
    if p.get("hnsw_ef"):  # faiss's advice for large nlist: an HNSW32 graph over the centroids
        quantizer = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        quantizer.add(cent)
        quantizer.hnsw.efSearch = int(p["hnsw_ef"])
    else:
        quantizer = faiss.IndexFlatIP(d)
        quantizer.add(cent)
    index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_4bit,
                                          faiss.METRIC_INNER_PRODUCT, False)
    index.own_fields = True
    quantizer.this.disown()
    index.train(sample)  # the quantizer already holds nlist centroids: only the codec is trained
    t_train = time.perf_counter() - t0
    os.makedirs(p["out"], exist_ok=True)
    trained_path = os.path.join(p["out"], "trained.index")
    faiss.write_index(index, trained_path)
    parts, add_s, write_s = [], [], []
    batch = p["batch_rows"]
    for n, ranges in enumerate(p["parts"]):
        part = faiss.read_index(trained_path)
        t0 = time.perf_counter()
        for path, offset, start, stop in ranges:
            src = np.load(path, mmap_mode="r")
            for a in range(start, stop, batch):
                b = min(stop, a + batch)
                x = np.ascontiguousarray(src[a:b], dtype=np.float32)
                part.add_with_ids(x, np.arange(offset + a, offset + b, dtype=np.int64))
            del src
        t1 = time.perf_counter()
        fname = os.path.join(p["out"], f"part-{n:05d}.index")
        faiss.write_index(part, fname)
        t2 = time.perf_counter()
        add_s.append(t1 - t0)
        write_s.append(t2 - t1)
        parts.append(fname)
        del part
    from faiss.contrib.ondisk import merge_ondisk

    t0 = time.perf_counter()
    merged = faiss.read_index(trained_path)
    ivfdata = os.path.join(p["out"], "merged.ivfdata")
    merge_ondisk(merged, parts, ivfdata)
    faiss.write_index(merged, os.path.join(p["out"], "merged.index"))
    t_merge = time.perf_counter() - t0
    disk_parts = sum(os.path.getsize(f) for f in parts)
    disk_merged = os.path.getsize(ivfdata) + os.path.getsize(os.path.join(p["out"], "merged.index"))
    return {"train_codec_seconds": t_train, "add_seconds": add_s, "write_seconds": write_s,
            "merge_ondisk_seconds": t_merge, "parts": parts, "disk_parts": disk_parts,
            "disk_merged": disk_merged}


def task_search(p):
    faiss = _faiss()
    q = np.load(p["queries"])
    k, nprobe = p["k"], p["nprobe"]

    def run():
        s_all, i_all = [], []
        for f in p["parts"]:
            ix = faiss.read_index(f, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            faiss.extract_index_ivf(ix).nprobe = nprobe
            s, i = ix.search(q, k)
            s_all.append(s)
            i_all.append(i)
            del ix
        return merge_topk(s_all, i_all, k)

    evict(p["parts"])
    t0 = time.perf_counter()
    _, ids = run()
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(p.get("rounds", 3)):
        t0 = time.perf_counter()
        run()
        warm.append(time.perf_counter() - t0)
    np.save(p["ids_out"], ids[: p.get("keep", 200)])
    return {"cold": cold, "warm": warm}


if __name__ == "__main__":
    task, params = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(globals()[f"task_{task}"](params)))
