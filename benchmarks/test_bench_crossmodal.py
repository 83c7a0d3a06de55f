"""Cross-modal recall of standard against paired k-means IVF indexes (caption -> image recall@10
per nprobe, exact search as ground truth): on the real COCO-500 CLIP embeddings through
IVFIndex.train_paired, and on a larger generated corpus fitted to COCO-500's cross-modal
statistics. Writes the evaluate_recall plots next to RESULTS.md."""

import numpy as np
import pytest
from conftest import HERE, THREADS, scaled

import mudg_fast
from mudg_fast import IVFIndex
from mudg_fast.recall import evaluate_recall, plot_recall

NPROBES = (1, 2, 4, 8, 16, 32)


@pytest.mark.benchmark(group="crossmodal")
def test_coco500_paired_gain(benchmark, recorder):
    images, captions = mudg_fast.datasets.load_coco500()
    g = "crossmodal_coco"
    recorder.group(g, "Cross-modal recall on real COCO-500 (CLIP ViT-B/16), 16 cells, caption -> image recall@10",
                   ["paired - standard ≥ 0.08 at nprobe 1 (mean over seeds)"])
    nprobes = (1, 2, 4, 8, 16)
    per_seed = []

    def run_all():
        per_seed.clear()
        for seed in range(10):
            std = IVFIndex(512, 16, num_threads=THREADS).train(images, seed=seed)
            std.add(images)
            pai = IVFIndex(512, 16, num_threads=THREADS).train_paired(images, captions, seed=seed)
            pai.add(images)
            per_seed.append((evaluate_recall(std, captions, images, k=10, nprobes=nprobes),
                             evaluate_recall(pai, captions, images, k=10, nprobes=nprobes)))

    benchmark.pedantic(run_all, rounds=1, iterations=1)
    std = np.array([s.recall for s, _ in per_seed])
    pai = np.array([p.recall for _, p in per_seed])
    for j, p in enumerate(nprobes):
        recorder.row(g, name=f"nprobe {p}", info={
            "standard": f"{std[:, j].mean():.3f}", "paired": f"{pai[:, j].mean():.3f}",
            "gain (10 seeds)": f"{(pai[:, j] - std[:, j]).mean():+.3f} ± {(pai[:, j] - std[:, j]).std():.3f}",
            "gain (seeds 0-2)": f"{(pai[:3, j] - std[:3, j]).mean():+.3f}"},
            met={"gain ≥ 0.08": bool((pai[:, j] - std[:, j]).mean() >= 0.08)} if p == 1 else None)
    plot_recall({"standard k-means": per_seed[0][0], "paired k-means": per_seed[0][1]},
                HERE / "crossmodal_coco500.png", title="COCO-500: caption -> image recall@10 (16 cells, seed 0)")
    recorder.note(g, "plot: benchmarks/crossmodal_coco500.png (seed 0)")


@pytest.mark.benchmark(group="crossmodal")
def test_generated_corpus_paired_never_worse(benchmark, recorder):
    from mudg_fast.synthetic import cross_modal_statistics, make_corpus

    n = scaled(200_000, 20_000)
    nlist = 256 if n >= 100_000 else 64
    corpus = make_corpus(n, n_concepts=300, seed=0, num_threads=THREADS)
    stats = cross_modal_statistics(corpus.images, corpus.captions, seed=0)
    g = "crossmodal_generated"
    recorder.group(g, f"Cross-modal recall on a generated corpus fitted to COCO-500 ({n:,} pairs, {nlist} cells, "
                      "sq8, 2 000 caption queries)",
                   ["paired never more than 0.01 below standard at any nprobe; gain reported"])
    rng = np.random.default_rng(0)
    train = np.sort(rng.choice(n, min(n, 100 * nlist), replace=False))
    queries = corpus.captions[rng.choice(n, 2000, replace=False)]
    res = {}

    def build_and_eval():
        std = IVFIndex(corpus.dim, nlist, codec="sq8", num_threads=THREADS).train(corpus.images[train], seed=0)
        std.add(corpus.images)
        pai = IVFIndex(corpus.dim, nlist, codec="sq8", num_threads=THREADS)
        pai.train_paired(corpus.images[train], corpus.captions[train], seed=0)
        pai.add(corpus.images)
        res["standard k-means"] = evaluate_recall(std, queries, corpus.images, k=10, nprobes=NPROBES)
        res["paired k-means"] = evaluate_recall(pai, queries, corpus.images, k=10, nprobes=NPROBES)

    benchmark.pedantic(build_and_eval, rounds=1, iterations=1)
    s, p = res["standard k-means"], res["paired k-means"]
    worst = min(b - a for a, b in zip(s.recall, p.recall))
    for j, npb in enumerate(NPROBES):
        recorder.row(g, name=f"nprobe {npb}", info={"standard": f"{s.recall[j]:.3f}", "paired": f"{p.recall[j]:.3f}",
                                                    "gain": f"{p.recall[j] - s.recall[j]:+.3f}"})
    recorder.row(g, name="paired - standard, worst nprobe", info={"difference": f"{worst:+.3f}"},
                 met={"never more than 0.01 below": bool(worst >= -0.01)})
    recorder.note(g, "corpus statistics (500-pair sample): matched cosine {matched_cosine:.3f}, random {random_cosine:.3f}, "
                     "modality-mean distance {modality_gap:.3f}, caption->image recall@1 {recall_at_1:.3f} "
                     "(COCO-500: 0.310, 0.162, 0.851, 0.506)".format(**stats))
    plot_recall(res, HERE / "crossmodal_generated.png", title=f"Generated corpus ({n:,} pairs, {nlist} cells)")
    recorder.note(g, "plot: benchmarks/crossmodal_generated.png")
