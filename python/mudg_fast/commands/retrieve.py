"""mudg-fast retrieve: retrieve and pseudo-label images for class names (docs/method.rst §3,
retrieval and rank voting)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..cli import CliError
from ._common import add_model_args, load_index, log, make_encoder, read_classnames, read_descriptors


def add_retrieval_args(p):
    p.add_argument("--index", "--index_path", dest="index", required=True, help="IVF index file, or folder of index parts (mudg-fast build-index)")
    p.add_argument("--classnames", required=True, help="class names: a file (one per line, or JSON) or 'a,b,c'")
    p.add_argument("--template", default="default", help="prompt template name or string (default: %(default)s)")
    p.add_argument("--descriptors", default=None,
                   help="descriptor file (JSON from mudg-fast augment, or one per line); default: choose --m now")
    p.add_argument("--pool", default=None, help="descriptor pool when choosing now (default: built-in)")
    p.add_argument("--m", type=int, default=16, help="descriptors to choose when --descriptors is absent")
    p.add_argument("--no_augmentation", action="store_true", help="plain prompts only")
    p.add_argument("--k", type=int, default=64, help="neighbours per query (default: %(default)s)")
    p.add_argument("--nprobe", type=int, default=8, help="inverted lists probed per query (default: %(default)s)")
    p.add_argument("--rerank", type=int, default=None,
                   help="shortlist per query re-scored exactly from the original vectors; 0: off (default when the "
                        "vectors are known, i.e. --rerank_source or the img_emb folder build-index recorded: "
                        "max(4 k, 100) for sq4 indexes, max(2 k, 20) for sq8, off for f32/f16)")
    p.add_argument("--rerank_source", default=None,
                   help="original image embeddings for --rerank: a clip-retrieval folder (img_emb/), a folder of .npy "
                        "shards or a .npy file (default: the folder recorded in the index)")
    p.add_argument("--seed", type=int, default=0, help="seed for descriptor grouping and vote ties")
    add_model_args(p)


def add_arguments(p):
    add_retrieval_args(p)
    p.add_argument("--out", required=True, help="output parquet of pseudo-labelled candidates")


def retrieve_from_args(args, encoder=None):
    from ..pipeline import retrieve_candidates

    if args.no_augmentation and args.descriptors:
        raise CliError("--no_augmentation and --descriptors exclude each other")
    names = read_classnames(args.classnames)
    index = load_index(args.index)
    descriptors = [] if args.no_augmentation else (read_descriptors(args.descriptors) if args.descriptors else None)
    if args.rerank is not None and args.rerank < 0:
        raise CliError(f"--rerank must be >= 0 (0 turns re-ranking off), got {args.rerank}")
    if args.rerank_source is not None and not Path(args.rerank_source).exists():
        raise CliError(f"--rerank_source not found: {args.rerank_source}")
    encoder = encoder or make_encoder(args)
    try:
        return retrieve_candidates(index, encoder, names, template=args.template, descriptors=descriptors,
                                   pool=None if args.pool is None else _pool(args.pool), m=args.m, k=args.k,
                                   nprobe=args.nprobe, rerank=args.rerank, rerank_source=args.rerank_source,
                                   seed=args.seed), index
    except (TypeError, ValueError, OSError) as e:
        raise CliError(str(e)) from None


def _pool(path):
    from ..augment import load_descriptor_pool

    try:
        return load_descriptor_pool(path)
    except (ValueError, OSError) as e:
        raise CliError(str(e)) from None


def write_candidates(cands, out):
    """Parquet of candidates + '<out>.json' (classes, descriptors, template) + '<out>.prototypes.npy'."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..index import atomic_write

    out = Path(out)
    table = pa.table({"id": cands.ids, "label": cands.labels, "classname": [cands.classnames[i] for i in cands.labels],
                      "vote_score": cands.votes, "retrieval_score": cands.best_score, "n_tied": cands.n_tied})
    atomic_write(out, lambda tmp: pq.write_table(table, tmp))
    def save_npy(tmp):
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a temp name
            np.save(f, cands.prototypes)

    atomic_write(out.with_suffix(".prototypes.npy"), save_npy)
    meta = dict(cands.summary, classnames=cands.classnames, descriptors=cands.descriptors, template=cands.template)
    text = json.dumps(meta, indent=2, default=str)
    atomic_write(out.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text))


def read_candidates(path):
    import pyarrow.parquet as pq

    from ..pipeline import Candidates

    p = Path(path)
    for need in (p, p.with_suffix(".json"), p.with_suffix(".prototypes.npy")):
        if not need.exists():
            raise CliError(f"missing {need} (written by mudg-fast retrieve)")
    t = pq.read_table(p)
    missing = {"id", "label", "vote_score", "retrieval_score"} - set(t.column_names)
    if missing:
        raise CliError(f"{p}: missing columns {sorted(missing)}")
    meta = json.loads(p.with_suffix(".json").read_text())
    col = lambda name, dt: np.asarray(t.column(name).to_numpy(), dtype=dt)  # noqa: E731
    n_tied = col("n_tied", np.int64) if "n_tied" in t.column_names else np.ones(t.num_rows, np.int64)
    return Candidates(ids=col("id", np.int64), labels=col("label", np.int64), votes=col("vote_score", np.float64),
                      best_score=col("retrieval_score", np.float32), n_tied=n_tied,
                      prototypes=np.load(p.with_suffix(".prototypes.npy")), classnames=meta["classnames"],
                      descriptors=meta.get("descriptors", []), template=meta.get("template", ""), summary=meta)


def run(args):
    cands, _ = retrieve_from_args(args)
    write_candidates(cands, args.out)
    log(f"{len(cands)} pseudo-labelled candidates -> {args.out}")
    return 0
