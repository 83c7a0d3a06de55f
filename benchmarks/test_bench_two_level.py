"""Large nlist on a CPU: two-level k-means and the two-level coarse quantizer (issue 11).

Groups (each writes its RESULTS.md section):

- two_level_train: n = 1M, d = 768, k = 16384, images of the COCO-fitted generated corpus
  (mudg_fast.synthetic, dim 768): flat against two-level k-means per fit, faiss's
  two_level_clustering on the same data (a subprocess, each OPENBLAS_CORETYPE), and recall@10 of
  f32 IVF indexes built on the flat and two-level centroids (same data, exact ground truth).
- two_level_gain: the paired-minus-standard recall gain at nprobe 1 on the COCO-fitted corpus
  (200 000 pairs, 1024 cells, sq8), flat against two-level k-means.
- two_level_quantizer: nlist 131072, d 768 (paired two-level k-means on 524 288 generated pairs):
  assignment throughput and top-1 agreement of the two-level quantizer against exact assignment
  and faiss's HNSW32 quantizer; the coarse stage of a 16 000-query MUDG batch at nprobe 8 against
  the flat coarse stage, with the fraction of the exact top-8 cells kept.
- two_level_e2e (opt-in: MUDG_BENCH_E2E=1, or MUDG_BENCH_E2E=<pairs>): paired two-level k-means
  with nlist 131072 on 2 000 000 pairs at d 768 (given pairs; about 13 GB on disk in the temporary
  folder, read through memory maps, so ~13 GB of page cache for full speed), time extrapolated to
  20M pairs. Takes tens of minutes on two cores.

Sizes shrink with MUDG_BENCH_SCALE (nlist and k too); MUDG_BENCH_KMEANS_ITERS sets the Lloyd
iterations of every fit (default 10, both levels, both methods, faiss too).
"""

import json
import os
import time

import numpy as np
import pytest
from conftest import CORETYPES, SCALE, THREADS, ratio, run_peer, scaled, summary

import mudg_fast
from mudg_fast import IVFIndex
from mudg_fast.recall import evaluate_recall
from mudg_fast.synthetic import make_corpus

ITERS = int(os.environ.get("MUDG_BENCH_KMEANS_ITERS", "10"))
D = 768


def corpus_memmaps(folder, n, d, seed, chunk=262_144):
    """n generated pairs at dimension d written to images.npy / captions.npy in chunks (bounded
    memory): COCO-fitted corpora with one seed per chunk share nothing but their statistics, so a
    chunk is one generated corpus; the concatenation is a corpus with chunk-many topic sets."""
    img = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.float32, shape=(n, d))
    cap = np.lib.format.open_memmap(folder / "captions.npy", mode="w+", dtype=np.float32, shape=(n, d))
    for c0 in range(0, n, chunk):
        m = min(chunk, n - c0)
        c = make_corpus(m, n_concepts=1000, dim=d, seed=seed + c0 // chunk, num_threads=THREADS)
        img[c0:c0 + m] = c.images
        cap[c0:c0 + m] = c.captions
        del c
    img.flush()
    cap.flush()
    del img, cap
    return np.load(folder / "images.npy", mmap_mode="r"), np.load(folder / "captions.npy", mmap_mode="r")


def timed(fn):
    t0 = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t0


def best_faiss(results):
    ok = {ct: v for ct, v in results.items() if "median" in v}
    return min(ok, key=lambda c: ok[c]["median"]) if ok else None


# --- training ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    n, k = scaled(1_000_000, 50_000), max(256, int(round(16384 * min(1.0, SCALE) / 64)) * 64)
    c = make_corpus(n + 1000, n_concepts=1000, dim=D, seed=0, num_threads=THREADS)
    x, q = np.ascontiguousarray(c.images[:n]), np.ascontiguousarray(c.images[n:])
    del c
    tmp = tmp_path_factory.mktemp("two_level_train")
    np.save(tmp / "x.npy", x)
    return x, q, k, tmp


@pytest.mark.benchmark(group="two_level_train")
def test_two_level_training(benchmark, recorder, train_data):
    x, q, k, tmp = train_data
    n = x.shape[0]
    nc1 = int(round(k ** 0.5))
    g = "two_level_train"
    recorder.group(g, f"Two-level k-means: n={n:,}, d={D}, k={k}, {ITERS} iterations per level, {THREADS} threads, "
                      "COCO-fitted generated images",
                   ["two-level ≥ 20x faster per fit than flat",
                    "IVF on it within 0.01 recall@10 of the flat-trained one at nprobe 8 and 32",
                    "faiss two_level_clustering beaten by ≥ 1.5x"])
    kw = dict(max_iter=ITERS, seed=0, max_points_per_centroid=256, num_threads=THREADS)
    fits = {}

    def run_two_level():
        fits["two_level"] = timed(lambda: mudg_fast.KMeans(k, method="two_level", **kw).fit(x))

    benchmark.pedantic(run_two_level, rounds=1, iterations=1)
    fits["flat"] = timed(lambda: mudg_fast.KMeans(k, method="flat", **kw).fit(x))
    two, t_two = fits["two_level"]
    flat, t_flat = fits["flat"]
    ours = summary([t_two])
    speedup = t_flat / t_two
    recorder.row(g, name="mudg_fast.KMeans(method='flat')", ours=summary([t_flat]),
                 info={"k-means++ and iterations": f"{t_flat - flat.iteration_seconds_.sum():.1f} s + "
                                                   f"{flat.iteration_seconds_.sum():.1f} s",
                       "inertia": f"{flat.inertia_:.6g}"})
    recorder.row(g, name="mudg_fast.KMeans(method='two_level')", ours=ours,
                 info={"stages": ", ".join(f"{s} {v:.1f} s" for s, v in two.stage_seconds_.items()),
                       "inertia": f"{two.inertia_:.6g} ({two.inertia_ / flat.inertia_ - 1:+.2%} vs flat)",
                       "speed-up over flat": f"{speedup:.1f}x"},
                 met={"20x flat": speedup >= 20})

    # faiss two_level_clustering on the same data and square-root split (k is a square here)
    peers = {}
    for ct in CORETYPES:
        r = run_peer("faiss_two_level", {"x": str(tmp / "x.npy"), "k": k, "nc1": nc1, "iters": ITERS, "seed": 0,
                                         "out": str(tmp / f"faiss_{ct}.npy")}, ct)
        peers[ct] = summary(r["times"]) if "times" in r else r
    for ct, v in peers.items():
        recorder.row(g, name=f"faiss two_level_clustering (OPENBLAS_CORETYPE={ct})", peer=v,
                     ratio=ratio(v, ours) if "median" in v else None)
    best = best_faiss(peers)
    if best:
        r = ratio(peers[best], ours)
        recorder.row(g, name="two-level: mudg_fast vs best faiss", ours=ours, ratio_vs_best_faiss=r,
                     met={"1.5x faiss": r["median"] >= 1.5})

    # recall@10 of f32 IVF indexes on these centroids (exact coarse stage: the centroids compared)
    _, gt = mudg_fast.knn(q, x, 10, num_threads=THREADS)
    rec = {}
    sets = [("flat", flat.cluster_centers_), ("two_level", two.cluster_centers_)]
    if best:
        sets.append(("faiss two_level_clustering", np.load(tmp / f"faiss_{best}.npy")))
    for name, cent in sets:
        ix = IVFIndex(D, k, quantizer="flat", num_threads=THREADS).set_centroids(cent)
        ix.add(x)
        rec[name] = evaluate_recall(ix, q, ground_truth=gt, k=10, nprobes=(1, 8, 32), min_seconds=0)
        del ix
    for j, p in enumerate((1, 8, 32)):
        diff = rec["two_level"].recall[j] - rec["flat"].recall[j]
        recorder.row(g, name=f"IVF recall@10, nprobe {p}",
                     info={name: f"{r.recall[j]:.4f}" for name, r in rec.items()} | {"two-level - flat": f"{diff:+.4f}"},
                     met={"within 0.01 of flat": diff >= -0.01} if p in (8, 32) else None)
    recorder.note(g, f"faiss: two_level_clustering(x, {nc1}, {k}, clustering_niter={ITERS} (both levels), "
                     "spherical=True) with its default max_points_per_centroid (2000 coarse, 256 fine); "
                     "ours: KMeans(max_points_per_centroid=256), coarse level on <= 1024 points per coarse "
                     f"cluster. Recall: 1000 held-out images, exact top-10 over the {n:,} images, f32 lists.")
    benchmark.extra_info.update(speedup_over_flat=speedup)


@pytest.mark.benchmark(group="two_level_gain")
def test_paired_gain_kept(benchmark, recorder):
    n = scaled(200_000, 20_000)
    nlist = 1024 if n >= 100_000 else 256
    corpus = make_corpus(n, n_concepts=300, seed=0, num_threads=THREADS)
    g = "two_level_gain"
    recorder.group(g, f"Paired k-means gain with two-level k-means: generated corpus fitted to COCO-500 ({n:,} pairs, "
                      f"{nlist} cells, sq8, 2 000 caption queries, {ITERS} iterations)",
                   ["paired - standard gain at nprobe 1 keeps ≥ 90% of flat k-means' gain"])
    rng = np.random.default_rng(0)
    train = np.sort(rng.choice(n, min(n, 100 * nlist), replace=False))
    queries = corpus.captions[rng.choice(n, 2000, replace=False)]
    _, gt = mudg_fast.knn(queries, corpus.images, 10, num_threads=THREADS)
    res = {}

    def build_all():
        for method in ("flat", "two_level"):
            kw = dict(max_iter=ITERS, seed=0, method=method)
            std = IVFIndex(corpus.dim, nlist, codec="sq8", quantizer="flat", num_threads=THREADS)
            std.train(corpus.images[train], **kw).add(corpus.images)
            pai = IVFIndex(corpus.dim, nlist, codec="sq8", quantizer="flat", num_threads=THREADS)
            pai.train_paired(corpus.images[train], corpus.captions[train], **kw).add(corpus.images)
            for name, ix in (("standard", std), ("paired", pai)):
                res[method, name] = evaluate_recall(ix, queries, ground_truth=gt, k=10, nprobes=(1, 2, 4, 8),
                                                    min_seconds=0)

    benchmark.pedantic(build_all, rounds=1, iterations=1)
    gains = {}
    for method in ("flat", "two_level"):
        s, p = res[method, "standard"].recall, res[method, "paired"].recall
        gains[method] = p[0] - s[0]
        recorder.row(g, name=f"{method} k-means", info={
            f"nprobe {npb}": f"standard {a:.3f}, paired {b:.3f} ({b - a:+.3f})" for npb, a, b in zip((1, 2, 4, 8), s, p)})
    kept = gains["two_level"] / gains["flat"] if gains["flat"] > 0 else float("nan")
    recorder.row(g, name="gain at nprobe 1 kept by two-level", info={"kept": f"{kept:.1%}"},
                 met={"≥ 90% of flat's gain": kept >= 0.9})


# --- the coarse quantizer at nlist 131072 --------------------------------------------------------

@pytest.fixture(scope="module")
def big_index(tmp_path_factory):
    nlist = max(4096, int(round(131072 * min(1.0, SCALE) / 256)) * 256)
    n = 4 * nlist
    tmp = tmp_path_factory.mktemp("two_level_quantizer")
    c = make_corpus(n + 65_536 + 16_000, n_concepts=1000, dim=D, seed=1, num_threads=THREADS)
    images, captions = c.images[:n], c.captions[:n]
    held_img = np.ascontiguousarray(c.images[n:n + 65_536])
    queries = np.ascontiguousarray(c.captions[n + 65_536:])
    del c
    (pk, t_fit) = timed(lambda: mudg_fast.PairedKMeans(nlist, method="two_level", max_iter=ITERS, seed=0,
                                                       max_points_per_centroid=256, num_threads=THREADS)
                        .fit(images, captions, pairing="given"))
    del images, captions
    ix = IVFIndex(D, nlist, quantizer="two_level", num_threads=THREADS)
    _, t_q = timed(lambda: ix.set_centroids(pk.cluster_centers_))
    np.save(tmp / "centroids.npy", pk.cluster_centers_)
    return ix, held_img, queries, tmp, {"fit": t_fit, "quantizer": t_q, "n": n}


def probe_time(ix, x, k, rounds=2):
    ix.probe(x[:256], k)
    t = []
    for _ in range(rounds):
        (_, lists), dt = timed(lambda: ix.probe(x, k))
        t.append(dt)
    return lists, summary(t)


@pytest.mark.benchmark(group="two_level_quantizer")
def test_quantizer_assignment_and_search(benchmark, recorder, big_index):
    ix, x, queries, tmp, info = big_index
    nlist = ix.nlist
    g = "two_level_quantizer"
    recorder.group(g, f"Two-level coarse quantizer: nlist {nlist:,}, d {D}, {THREADS} threads (centroids: paired "
                      f"two-level k-means on {info['n']:,} generated pairs in {info['fit']:.0f} s)",
                   ["assignment ≥ 10 000 vectors/s/core at ≥ 99% top-1 agreement, against faiss HNSW32 at the "
                    "same agreement",
                    "coarse stage of 16 000 queries at nprobe 8 ≥ 10x faster than flat, keeping ≥ 99% of the "
                    "exact top-8 cells"])
    info_q = ix.quantizer_info()
    sub = x[:16_384]
    flat = IVFIndex(D, nlist, quantizer="flat", num_threads=THREADS).set_centroids(ix.centroids)
    exact1, t_exact = probe_time(flat, sub, 1, rounds=1)
    np.save(tmp / "x.npy", sub)  # the peer assigns the vectors whose exact answer is known
    np.save(tmp / "exact.npy", exact1[:, 0])
    flat_rate = len(sub) / t_exact["median"] / THREADS
    recorder.row(g, name="assignment, flat (exact)", ours=t_exact,
                 info={"vectors/s/core": f"{flat_rate:,.0f}", "vectors": f"{len(sub):,}"})
    default_probe = ix.quantizer_probe
    chosen = None
    for p in sorted({4, 6, 8, default_probe}):
        ix.quantizer_probe = p
        if p == default_probe:
            lists, t = None, None

            def run():
                nonlocal lists, t
                lists, t = probe_time(ix, x, 1)

            benchmark.pedantic(run, rounds=1, iterations=1)
        else:
            lists, t = probe_time(ix, x, 1)
        agree = float(np.mean(lists[:len(sub), 0] == exact1[:, 0]))
        rate = len(x) / t["median"] / THREADS
        if chosen is None and agree >= 0.99:
            chosen = (p, agree, rate, t)
        recorder.row(g, name=f"assignment, two-level (cells {info_q['cells']}, probe {p})", ours=t,
                     info={"vectors/s/core": f"{rate:,.0f}", "top-1 agreement": f"{agree:.4f}",
                           "speed-up over flat": f"{rate / flat_rate:.1f}x",
                           "vectors": f"{len(x):,}"},
                     met={"10k/s/core at >= 99%": rate >= 10_000 and agree >= 0.99})
    ix.quantizer_probe = default_probe
    # faiss's HNSW32 quantizer: the smallest efSearch reaching our agreement
    efs = [16, 24, 32, 48, 64, 96, 128, 192, 256]
    peer = {}
    for ct in CORETYPES[:1]:  # no BLAS in HNSW search: one setting is enough
        peer = run_peer("faiss_hnsw_quantizer", {"centroids": str(tmp / "centroids.npy"), "x": str(tmp / "x.npy"),
                                                  "exact": str(tmp / "exact.npy"), "efs": efs, "rounds": 2,
                                                  "stop_at": chosen[1] if chosen else 2.0}, ct)
    if "runs" in peer and chosen:
        target = chosen[1]
        hit = next((r for r in peer["runs"] if r["top1"] >= target), None)
        for r in peer["runs"]:
            rate = len(sub) / summary(r["times"])["median"] / THREADS
            if r is hit or r["ef"] in (16, 64, 256):
                recorder.row(g, name=f"faiss IndexHNSWFlat(M=32) efSearch {r['ef']}", peer=summary(r["times"]),
                             info={"vectors/s/core": f"{rate:,.0f}", "top-1 agreement": f"{r['top1']:.4f}"})
        if hit:
            h = summary(hit["times"])
            recorder.row(g, name=f"two-level (probe {chosen[0]}) vs HNSW32 at >= its agreement (ef {hit['ef']})",
                         ours=chosen[3], ratio_vs_best_faiss=ratio(h, chosen[3]))
        recorder.note(g, f"faiss HNSW32 graph over the {nlist:,} centroids built in {peer['build']:.0f} s; ours "
                         f"trained in {info['quantizer']:.0f} s (k-means of the centroids into {info_q['cells']} cells)")
    elif "error" in peer:
        recorder.note(g, f"faiss HNSW32 not available: {peer['error']}")

    # the coarse stage of the MUDG batch
    nq = len(queries)
    exact8, t_flat8 = probe_time(flat, queries, 8, rounds=1)
    recorder.row(g, name=f"coarse stage, {nq:,} queries, nprobe 8: flat", ours=t_flat8)
    for p in sorted({8, 12, 16, default_probe}):
        ix.quantizer_probe = p
        got, t = probe_time(ix, queries, 8)
        kept = float(np.mean([(np.isin(e, g8)).mean() for e, g8 in zip(exact8, got)]))
        speed = t_flat8["median"] / t["median"]
        recorder.row(g, name=f"coarse stage, two-level (probe {p})", ours=t,
                     info={"exact top-8 cells kept": f"{kept:.4f}", "speed-up over flat": f"{speed:.1f}x"},
                     met={"10x flat at >= 99% kept": speed >= 10 and kept >= 0.99})
    ix.quantizer_probe = default_probe
    recorder.note(g, "assignment = probe(x, 1), the path add() takes; agreement measured against exact search "
                     "of the first 16 384 vectors over all centroids. Queries: held-out generated captions.")


# --- end to end (opt-in) -------------------------------------------------------------------------

E2E = os.environ.get("MUDG_BENCH_E2E", "")


@pytest.mark.skipif(not E2E, reason="opt-in: MUDG_BENCH_E2E=1 (tens of minutes, ~13 GB of disk)")
@pytest.mark.benchmark(group="two_level_e2e")
def test_end_to_end_paired_kmeans(benchmark, recorder, tmp_path_factory):
    n = int(E2E) if E2E.isdigit() and int(E2E) > 1 else scaled(2_000_000, 100_000)
    nlist = max(4096, int(round(131072 * min(1.0, SCALE) / 256)) * 256)
    tmp = tmp_path_factory.mktemp("two_level_e2e")
    (images, captions), t_gen = timed(lambda: corpus_memmaps(tmp, n, D, seed=10))
    g = "two_level_e2e"
    recorder.group(g, f"End to end: paired two-level k-means, nlist {nlist:,}, {n:,} pairs x {D}, {ITERS} iterations, "
                      f"{THREADS} threads", ["finishes on this machine; time extrapolated to 20M pairs"])
    res = {}

    def run():
        res["fit"] = timed(lambda: mudg_fast.PairedKMeans(nlist, method="two_level", max_iter=ITERS, seed=0,
                                                          max_points_per_centroid=256, num_threads=THREADS)
                           .fit(images, captions, pairing="given"))

    benchmark.pedantic(run, rounds=1, iterations=1)
    pk, t = res["fit"]
    st = pk.stage_seconds_
    # 20M pairs: the coarse level trains on a fixed-size sample; labelling and the second level grow
    # linearly with the pairs (k * 256 = 33.5M > 20M, so every pair trains)
    scale20 = 20_000_000 / n
    t20 = st["coarse"] + scale20 * (st["fine"] + st["labels"]) + (t - sum(st.values())) * scale20
    recorder.row(g, name="PairedKMeans(method='two_level', pairing='given')", ours=summary([t]),
                 info={"stages": ", ".join(f"{s} {v:.0f} s" for s, v in st.items()),
                       "extrapolated to 20M pairs": f"{t20 / 3600:.1f} h",
                       "inertia": f"{pk.inertia_:.6g}"},
                 met={"finishes": bool(np.isfinite(pk.cluster_centers_).all())})
    recorder.note(g, f"data generated to memory-mapped .npy files in {t_gen:.0f} s (not counted). "
                     "pairing='given' (each caption's own image): the nearest-image pairing q(p) of the method "
                     "is an exact search of every caption over all images, n^2 d multiply-adds, not included.")
    with open(tmp / "result.json", "w") as f:
        json.dump({"n": n, "seconds": t, "stages": st}, f)
