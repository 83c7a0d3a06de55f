"""``mudg-fast eval-index``: recall@k of one or two indexes against exact search, per nprobe.

Prints a table and each index's coarse quantizer diagnostics (top-1 agreement with exact
assignment, the exact top-nprobe cells its probes keep, the coarse stage's share of search
time), and optionally writes a JSON report and a PNG plot (standard and paired side by side when
``--paired_index`` is given). ``--queries`` and ``--database`` are ``.npy`` files or
folders of ``.npy`` shards (clip-retrieval layout); a shard-folder database is searched exactly
batch by batch, so it never has to fit in memory. With ``--pairs``, row i of queries and database
are one caption/image pair and the report includes the modality gap.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--index", required=True, metavar="PATH",
        help="index to evaluate (e.g. standard k-means): a file or a folder of index parts"
    )
    p.add_argument(
        "--paired_index", metavar="PATH", help="a second index (e.g. paired k-means) to compare"
    )
    p.add_argument(
        "--labels",
        help="comma-separated labels of the indexes (default: standard,paired when "
        "--paired_index is given, else the file name)",
    )
    p.add_argument(
        "--queries",
        required=True,
        metavar="PATH",
        help="query embeddings: .npy file or shard folder",
    )
    p.add_argument(
        "--database",
        metavar="PATH",
        help="the embeddings the index holds (row i = id i): .npy file or shard folder; exact search "
        "on it gives the ground truth",
    )
    p.add_argument(
        "--ground_truth",
        metavar="FILE",
        help=".npy of exact neighbour ids (nq, >= k), instead of --database",
    )
    p.add_argument(
        "--num_queries",
        type=int,
        help="evaluate a seeded random sample of this many queries "
        "(default: all of a .npy file, 1000 from a folder)",
    )
    p.add_argument("--k", type=int, default=10, help="neighbours (default 10)")
    p.add_argument("--nprobes", default="1,2,4,8,16,32", help="comma-separated nprobe values")
    p.add_argument(
        "--pairs",
        action="store_true",
        help="queries and database are row-aligned caption/image pairs: add the modality gap",
    )
    p.add_argument("--plot", metavar="PNG", help="write recall-vs-nprobe plot here")
    p.add_argument("--report", metavar="JSON", help="write the results here")
    p.add_argument("--seed", type=int, default=0, help="seed of the query sample (default 0)")
    p.add_argument("--num_threads", type=int, help="threads (default: all cores)")


def _open(path: str, what: str):
    """A .npy file (memory-mapped array) or a shard folder (EmbeddingShards)."""
    import numpy as np

    from ..cli import CliError
    from ..shards import EmbeddingShards, ShardError

    p = Path(path)
    if not p.exists():
        raise CliError(f"{what} {path!r} does not exist")
    try:
        if p.is_dir():
            if not any(p.glob("*.npy")) and (p / "img_emb").is_dir():
                raise CliError(
                    f"{what} {path!r} is a collection root; give its img_emb/ or text_emb/ folder"
                )
            return EmbeddingShards(p, label=what)
        a = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ShardError, ValueError, OSError) as e:
        raise CliError(f"cannot read {what} {path!r}: {e}") from e
    if a.ndim != 2:
        raise CliError(f"{what} {path!r} has shape {a.shape}; expected (rows, dim)")
    return a


def _rows(source, ids):
    import numpy as np

    from ..shards import EmbeddingShards, gather

    if isinstance(source, EmbeddingShards):
        return gather(source, ids)
    return np.asarray(source[ids], dtype=np.float32)


def run(args) -> int:
    import numpy as np

    from ..cli import CliError
    from ..index import atomic_write
    from ..parts import open_index
    from ..recall import evaluate_recall, exact_ground_truth, modality_gap, plot_recall
    from ..shards import EmbeddingShards, ShardError, sample_ids

    try:
        nprobes = [int(v) for v in args.nprobes.split(",") if v.strip()]
    except ValueError:
        raise CliError(
            f"--nprobes must be comma-separated integers, got {args.nprobes!r}"
        ) from None
    if not nprobes or min(nprobes) < 1:
        raise CliError(f"--nprobes must be positive integers, got {args.nprobes!r}")
    if args.k < 1:
        raise CliError(f"--k must be >= 1, got {args.k}")
    if args.database is None and args.ground_truth is None:
        raise CliError("give --database (exact search gives the ground truth) or --ground_truth")
    if args.seed < 0:
        raise CliError(f"--seed must be >= 0, got {args.seed}")
    if args.num_queries is not None and args.num_queries < 1:
        raise CliError(f"--num_queries must be >= 1, got {args.num_queries}")
    if args.ground_truth is not None and not Path(args.ground_truth).is_file():
        raise CliError(f"--ground_truth {args.ground_truth!r} is not a file")
    paths = [args.index] + ([args.paired_index] if args.paired_index else [])
    if args.labels:
        labels = [s.strip() for s in args.labels.split(",")]
        if len(labels) != len(paths) or len(set(labels)) != len(labels):
            raise CliError(f"--labels needs {len(paths)} distinct labels, got {args.labels!r}")
    else:
        labels = ["standard", "paired"] if args.paired_index else [Path(args.index).name]
    indexes = {}
    for label, path in zip(labels, paths):
        try:
            indexes[label] = open_index(path, num_threads=args.num_threads)
        except (OSError, ValueError) as e:
            raise CliError(f"cannot load index {path!r}: {e}") from e
    dims = {ix.dim for ix in indexes.values()}
    if len(dims) != 1:
        raise CliError(f"the indexes have different dims {sorted(dims)}")
    dim = dims.pop()

    queries_src = _open(args.queries, "queries")
    database = _open(args.database, "database") if args.database else None
    n_all = queries_src.ntotal if isinstance(queries_src, EmbeddingShards) else queries_src.shape[0]
    qdim = queries_src.dim if isinstance(queries_src, EmbeddingShards) else queries_src.shape[1]
    if qdim != dim:
        raise CliError(f"queries have dim {qdim}, the index {dim}")
    n_q = args.num_queries
    if n_q is None:
        n_q = 1000 if isinstance(queries_src, EmbeddingShards) else n_all
    ids = sample_ids(n_all, n_q, args.seed) if n_q < n_all else np.arange(n_all)
    try:
        queries = _rows(queries_src, ids)
        if args.ground_truth:
            try:
                gt = np.load(args.ground_truth, allow_pickle=False)
            except OSError as e:
                raise CliError(f"cannot read --ground_truth {args.ground_truth!r}: {e}") from e
            if gt.ndim != 2 or gt.shape[0] != n_all:
                raise CliError(
                    f"--ground_truth has shape {gt.shape}; expected ({n_all}, >= {args.k}) for the "
                    f"{n_all} queries"
                )
            gt = gt[ids]
        else:
            assert database is not None  # checked above: --database or --ground_truth is given
            ddim = database.dim if isinstance(database, EmbeddingShards) else database.shape[1]
            if ddim != dim:
                raise CliError(f"database has dim {ddim}, the index {dim}")
            print(
                f"eval-index: exact search of {len(ids):,} queries for the ground truth",
                file=sys.stderr,
            )
            _, gt = exact_ground_truth(queries, database, args.k, num_threads=args.num_threads)
        results = {
            label: evaluate_recall(
                ix,
                queries,
                ground_truth=gt,
                k=args.k,
                nprobes=nprobes,
                num_threads=args.num_threads,
            )
            for label, ix in indexes.items()
        }
        gap = None
        if args.pairs:
            if database is None:
                raise CliError("--pairs needs --database (the images paired with the queries)")
            n_db = database.ntotal if isinstance(database, EmbeddingShards) else database.shape[0]
            if n_db != n_all:
                raise CliError(
                    f"--pairs: queries have {n_all} rows, the database {n_db}; they must be row-aligned"
                )
            gap_ids = sample_ids(n_all, 10_000, args.seed)
            gap = modality_gap(_rows(database, gap_ids), _rows(queries_src, gap_ids))
    except (ShardError, ValueError) as e:
        raise CliError(str(e)) from e

    # table
    head = f"{'nprobe':>6}" + "".join(
        f"  {label + ' R@' + str(args.k):>18}  {'QPS':>9}" for label in results
    )
    print(head)
    for j, p in enumerate(nprobes):
        print(
            f"{p:>6}"
            + "".join(f"  {r.recall[j]:>18.4f}  {r.qps[j]:>9,.0f}" for r in results.values())
        )
    for label, r in results.items():
        if r.quantizer is None or r.cells_kept is None or r.coarse_share is None:
            continue
        kept = ", ".join(f"{p}: {c:.4f}" for p, c in zip(nprobes, r.cells_kept))
        share = ", ".join(f"{p}: {c:.0%}" for p, c in zip(nprobes, r.coarse_share))
        print(f"{label}: {r.quantizer} quantizer, top-1 agreement with exact assignment "
              f"{r.quantizer_top1:.4f}; exact top-nprobe cells kept {kept}; coarse stage share of "
              f"search time {share}")
    if gap is not None:
        print(
            f"modality gap ({gap['n_pairs']:,} pairs): matched cosine "
            f"{gap['matched_cosine']:.3f}, random {gap['random_cosine']:.3f}, distance between "
            f"modality means {gap['mean_distance']:.3f}"
        )
    if args.plot:
        plot_recall(results, args.plot)
        print(f"eval-index: wrote {args.plot}", file=sys.stderr)
    if args.report:
        report = {
            "k": args.k,
            "n_queries": int(len(ids)),
            "nprobes": nprobes,
            "seed": args.seed,
            "queries": str(args.queries),
            "database": args.database,
            "ground_truth": args.ground_truth,
            "indexes": {
                label: {
                    "path": str(path),
                    "nlist": ix.nlist,
                    "ntotal": ix.ntotal,
                    "codec": ix.codec,
                    "quantizer": {key: v for key, v in ix.quantizer_info().items() if key != "cell_sizes"},
                }
                for (label, ix), path in zip(indexes.items(), paths)
            },
            "results": {label: r.to_dict() for label, r in results.items()},
            "modality_gap": gap,
        }
        text = json.dumps(report, indent=1)
        atomic_write(args.report, lambda tmp: Path(tmp).write_text(text))
        print(f"eval-index: wrote {args.report}", file=sys.stderr)
    return 0
