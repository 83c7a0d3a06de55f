"""mudg-fast demo: the whole pipeline offline, on data shipped with the package.

Part 1 (real data): the COCO-500 CLIP ViT-B/16 image/caption embeddings. A standard and a paired
k-means IVF index over the images; caption -> image recall@10 per nprobe, a plot, and the
modality gap. Part 2 (label-driven): a generated multimodal corpus with named concepts whose
cross-modal statistics match COCO-500; from nothing but a list of label names it chooses
descriptors, retrieves, pseudo-labels, filters and selects a training set, writes the manifest,
and measures pseudo-label precision against the generator's ground truth.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ._common import log

DEFAULT_CLASSES = 20


def add_arguments(p):
    p.add_argument("--out", default="mudg_demo", help="output folder (default: %(default)s)")
    p.add_argument("--n_images", type=int, default=200_000, help="images in the generated corpus (default: %(default)s)")
    p.add_argument("--n_concepts", type=int, default=200, help="named concepts in the corpus (default: %(default)s)")
    p.add_argument("--n_classes", type=int, default=DEFAULT_CLASSES,
                   help="label names to build a training set for (default: %(default)s)")
    p.add_argument("--nlist", type=int, default=512, help="IVF cells for the generated corpus (default: %(default)s)")
    p.add_argument("--codec", default="sq8", choices=("f32", "f16", "sq8", "sq4"), help="list codec (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)


def _recall_part(out: Path) -> dict:
    from ..datasets import load_coco500
    from ..index import IVFIndex
    from ..recall import evaluate_recall, modality_gap, plot_recall

    images, captions = load_coco500()
    gap = modality_gap(images, captions)
    log(f"COCO-500 modality gap: matched cosine {gap['matched_cosine']:.3f}, random {gap['random_cosine']:.3f}, "
        f"distance between modality means {gap['mean_distance']:.3f}")
    nprobes = (1, 2, 4, 8, 16)
    results, gains = {}, []
    for seed in range(3):
        std = IVFIndex(512, 16).train(images, seed=seed)
        std.add(images)
        paired = IVFIndex(512, 16).train_paired(images, captions, pairing="nearest", seed=seed)
        paired.add(images)
        r_std = evaluate_recall(std, captions, images, k=10, nprobes=nprobes)
        r_pai = evaluate_recall(paired, captions, images, k=10, nprobes=nprobes)
        gains.append(r_pai.recall[0] - r_std.recall[0])
        if seed == 0:
            results = {"standard k-means": r_std, "paired k-means": r_pai}
    print("\nCOCO-500, caption -> image recall@10 (16 cells, seed 0):")
    print(f"{'nprobe':>6}  {'standard':>9}  {'paired':>9}")
    for j, p in enumerate(nprobes):
        print(f"{p:>6}  {results['standard k-means'].recall[j]:>9.3f}  {results['paired k-means'].recall[j]:>9.3f}")
    print(f"paired - standard at nprobe 1, mean over 3 seeds: {np.mean(gains):+.3f}")
    png = plot_recall(results, out / "coco500_recall.png", title="COCO-500 caption -> image recall@10")
    return {"modality_gap": gap, "recall": {k: v.to_dict() for k, v in results.items()},
            "gain_at_nprobe1_mean_3_seeds": float(np.mean(gains)), "plot": str(png)}


def _label_part(out: Path, args) -> dict:
    from ..index import IVFIndex
    from ..pipeline import build_training_set, write_manifest
    from ..recall import evaluate_recall, plot_recall
    from ..synthetic import cross_modal_statistics, make_corpus

    t0 = time.perf_counter()
    corpus = make_corpus(args.n_images, n_concepts=args.n_concepts, seed=args.seed)
    stats = cross_modal_statistics(corpus.images, corpus.captions, seed=args.seed)
    log(f"generated {corpus.images.shape[0]:,} image/caption pairs with {len(corpus.concept_names)} named concepts "
        f"in {time.perf_counter() - t0:.1f}s (matched cosine {stats['matched_cosine']:.3f}, random "
        f"{stats['random_cosine']:.3f}, modality-mean distance {stats['modality_gap']:.3f}, caption->image recall@1 {stats['recall_at_1']:.3f})")

    # Paired training on a seeded sample of pairs, then every image added.
    rng = np.random.default_rng(args.seed)
    train = np.sort(rng.choice(len(corpus.images), min(len(corpus.images), 40 * args.nlist), replace=False))
    t0 = time.perf_counter()
    index = IVFIndex(corpus.dim, args.nlist, codec=args.codec)
    index.train_paired(corpus.images[train], corpus.captions[train], pairing="nearest", seed=args.seed)
    index.add(corpus.images)
    std = IVFIndex(corpus.dim, args.nlist, codec=args.codec).train(corpus.images[train], seed=args.seed)
    std.add(corpus.images)
    log(f"built paired and standard {args.codec} indexes ({args.nlist} cells) in {time.perf_counter() - t0:.1f}s")
    q = corpus.captions[rng.choice(len(corpus.captions), 1000, replace=False)]
    nprobes = (1, 2, 4, 8, 16)
    rec = {"standard k-means": evaluate_recall(std, q, corpus.images, k=10, nprobes=nprobes),
           "paired k-means": evaluate_recall(index, q, corpus.images, k=10, nprobes=nprobes)}
    print(f"\nGenerated corpus, caption -> image recall@10 ({args.nlist} cells, 1000 queries):")
    print(f"{'nprobe':>6}  {'standard':>9}  {'paired':>9}")
    for j, p in enumerate(nprobes):
        print(f"{p:>6}  {rec['standard k-means'].recall[j]:>9.3f}  {rec['paired k-means'].recall[j]:>9.3f}")
    plot_recall(rec, out / "synthetic_recall.png", title="Generated corpus: caption -> image recall@10")

    # From label names to a training set.
    classes = corpus.concept_names[: args.n_classes]
    concept_of = {name: i for i, name in enumerate(corpus.concept_names)}
    t0 = time.perf_counter()
    ts = build_training_set(index, corpus.text_encoder, classes, template="a photo of a {}.", m=8, k=64, nprobe=8,
                            threshold=0.25, k_per_class=48, seed=args.seed, embeddings=corpus.images)
    secs = time.perf_counter() - t0
    truth = corpus.labels[ts.ids]
    want = np.array([concept_of[classes[c]] for c in ts.labels])
    precision = float((truth == want).mean()) if len(ts) else 0.0
    per_class = {name: float((truth[ts.labels == c] == concept_of[name]).mean()) if (ts.labels == c).any() else None
                 for c, name in enumerate(classes)}
    manifest, summary = write_manifest(ts, out / "manifest.parquet",
                                       extra_summary={"pseudo_label_precision": precision,
                                                      "precision_per_class": per_class, "corpus_seed": args.seed})
    print(f"\nTraining set for {len(classes)} label names: {len(ts)} images in {secs:.1f}s "
          f"(descriptors: {', '.join(repr(d) for d in ts.descriptors[:3])}, ...)")
    print(f"pseudo-label precision against the generator's ground truth: {precision:.3f}")
    print(f"manifest: {manifest}  summary: {summary}")
    return {"corpus_statistics": stats, "recall": {k: v.to_dict() for k, v in rec.items()},
            "training_set": {"images": len(ts), "classes": classes, "precision": precision,
                             "precision_per_class": per_class, "seconds": secs, "manifest": str(manifest)}}


def _check_args(args) -> None:
    """Every argument checked before the (long) first part starts."""
    from ..cli import CliError

    for name in ("n_images", "n_concepts", "n_classes", "nlist"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.seed < 0:
        raise CliError(f"--seed must be >= 0, got {args.seed}")
    from ..synthetic import COMPOUND_MODIFIERS, concept_vocabulary

    limit = len(concept_vocabulary()) * (1 + len(COMPOUND_MODIFIERS))
    if args.n_concepts > limit:
        raise CliError(f"--n_concepts must be <= {limit} (the names the generator can make), got {args.n_concepts}")
    if args.n_classes > args.n_concepts:
        raise CliError(f"--n_classes ({args.n_classes}) cannot exceed --n_concepts ({args.n_concepts})")
    if args.nlist > args.n_images:
        raise CliError(f"--nlist ({args.nlist}) cannot exceed --n_images ({args.n_images})")
    if args.n_images < 1000:
        raise CliError(f"--n_images must be >= 1000 (the recall evaluation samples 1000 queries), "
                       f"got {args.n_images}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise CliError(f"--out {args.out!r} exists and is not a folder")


def run(args):
    from ..index import atomic_write

    _check_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report = {"coco500": _recall_part(out), "generated": _label_part(out, args)}
    report["seconds"] = time.perf_counter() - t0
    text = json.dumps(report, indent=2, default=float)
    atomic_write(out / "demo_report.json", lambda tmp: Path(tmp).write_text(text))
    print(f"\nDone in {report['seconds']:.0f}s. Report, plots and manifest in {out}/")
    return 0
