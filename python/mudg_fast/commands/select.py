"""mudg-fast select: filter and select a diverse training set per class (docs/method.rst §4-§5)."""

from __future__ import annotations

from ..cli import CliError
from ._common import embeddings_source, load_index, log, metadata_for


def add_selection_args(p):
    p.add_argument("--embeddings", default=None,
                   help="image embeddings for selection: a clip-retrieval folder (img_emb/), a shard folder or a "
                        ".npy; default: decode them from the index")
    p.add_argument("--metadata", default=None,
                   help="clip-retrieval folder or metadata/ folder: joins url, caption, ... into the manifest")
    p.add_argument("--threshold", type=float, default=0.25,
                   help="keep images whose similarity to their class prototype exceeds this (default: %(default)s)")
    p.add_argument("--k_per_class", type=int, default=48, help="clusters per class (default: %(default)s)")
    p.add_argument("--strategy", choices=("random", "nearest"), default="random",
                   help="member kept per cluster (default: %(default)s)")


def add_arguments(p):
    p.add_argument("--candidates", required=True, help="parquet written by mudg-fast retrieve")
    p.add_argument("--index", "--index_path", dest="index", default=None,
                   help="the index (when --embeddings is not given, embeddings are decoded from it)")
    p.add_argument("--seed", type=int, default=0, help="selection seed (default: %(default)s)")
    add_selection_args(p)
    p.add_argument("--out", required=True, help="output manifest (parquet) for img2dataset; a .json summary goes beside it")


def select_and_write(cands, index, args, extra_summary=None):
    from ..pipeline import select_training_set, write_manifest

    if args.embeddings is None and index is None:
        raise CliError("give --embeddings or --index: selection needs the image embeddings")
    source = embeddings_source(args.embeddings, index, cands.prototypes.shape[1])
    try:
        ts = select_training_set(cands, source, threshold=args.threshold, k_per_class=args.k_per_class,
                                 strategy=args.strategy, seed=args.seed)
    except (TypeError, ValueError, IndexError) as e:
        raise CliError(str(e)) from None
    meta = metadata_for(args.metadata, ts.ids)
    manifest, summary = write_manifest(ts, args.out, metadata=meta, extra_summary=extra_summary)
    log(f"selected {len(ts)} images over {len(ts.classnames)} classes -> {manifest} (+ {summary.name})")
    return ts


def run(args):
    from .retrieve import read_candidates

    cands = read_candidates(args.candidates)
    index = load_index(args.index) if args.index else None
    select_and_write(cands, index, args)
    return 0
