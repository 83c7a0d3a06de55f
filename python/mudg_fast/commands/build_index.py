"""``mudg-fast build-index``: build an IVF index from embedding shards (resumable).

Flags follow autofaiss where the meaning matches (``--embeddings``, ``--index_path``,
``--max_index_memory_usage``-like ``--memory_budget``); see :func:`mudg_fast.build.build_index`.
When the index does not fit in the budget it is built in parts (a folder of part files, or one
file with ``--merge``), optionally on a Ray cluster (``--engine ray``).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--embeddings",
        "--images_dir",
        dest="images_dir",
        required=True,
        metavar="DIR",
        help="folder of image embedding shards (*.npy, float16/float32), e.g. a clip-retrieval "
        "img_emb/ folder; a clip-retrieval output folder holding img_emb/ also works",
    )
    p.add_argument(
        "--captions_dir",
        metavar="DIR",
        help="row-aligned caption embedding shards (text_emb/): train paired k-means (centroids in "
        "text space) instead of standard k-means",
    )
    p.add_argument(
        "--index_path",
        "--out",
        dest="out",
        required=True,
        metavar="FILE",
        help="index file to write (atomically); for a build in parts without --merge, the folder "
        "of part files",
    )
    p.add_argument("--nlist", type=int, required=True, help="number of inverted lists (cells)")
    p.add_argument(
        "--codec",
        default="sq8",
        choices=["f32", "f16", "sq8", "sq4"],
        help="storage of the vectors (default: sq8)",
    )
    p.add_argument(
        "--train_size", type=int, help="training sample size (default: max(65536, 64*nlist))"
    )
    p.add_argument(
        "--memory_budget",
        "--max_index_memory_usage",
        dest="memory_budget",
        metavar="SIZE",
        help="RAM for the whole build, e.g. 4GB or 512MB (default: 80%% of available memory)",
    )
    p.add_argument(
        "--resume",
        dest="resume",
        action="store_true",
        default=True,
        help="continue an interrupted build of the same inputs (default)",
    )
    p.add_argument(
        "--no_resume", dest="resume", action="store_false", help="discard earlier progress"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the training sample and k-means (default 0)"
    )
    p.add_argument(
        "--batch_size", type=int, help="rows per batch (default: derived from --memory_budget)"
    )
    p.add_argument(
        "--nprobe",
        type=int,
        default=8,
        help="nprobe you plan to search with (for the cost estimate)",
    )
    p.add_argument("--max_iter", type=int, default=20, help="k-means iterations (default 20)")
    p.add_argument(
        "--kmeans_method",
        choices=("flat", "two_level", "auto"),
        default="auto",
        help="flat or two-level k-means (default auto: two-level from 4096 lists)",
    )
    p.add_argument(
        "--quantizer",
        choices=("flat", "two_level", "auto"),
        default="auto",
        help="coarse quantizer (default auto: two-level from 16384 lists)",
    )
    p.add_argument(
        "--quantizer_probe",
        type=int,
        help="two-level quantizer: cells scanned per vector, its accuracy (default max(8, cells/30))",
    )
    p.add_argument("--num_threads", type=int, help="threads (default: all cores)")
    p.add_argument(
        "--checkpoint_every",
        type=int,
        help="checkpoint every k shards (0: never; default: adaptive, <=10%% of the time)",
    )
    p.add_argument(
        "--work_dir", metavar="DIR", help="manifest and checkpoints (default: <index_path>.build)"
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="a build in parts writes one merged index file instead of a folder of parts",
    )
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="where parts are built: this process (local, default) or one Ray task per part (ray; "
        'needs pip install "mudg_fast[ray]")',
    )
    p.add_argument(
        "--ray_address",
        metavar="ADDR",
        help="Ray cluster to join, e.g. auto or ray://host:10001 (default: a new local cluster)",
    )
    p.add_argument(
        "--part_size",
        type=int,
        metavar="N",
        help="vectors per part: build in parts of this size (default: in parts only when the index "
        "does not fit in --memory_budget, as large as it allows)",
    )
    p.add_argument(
        "--no_progress", dest="progress", action="store_false", help="no estimates or progress bar"
    )


def run(args) -> int:
    from ..build import BuildError, build_index
    from ..cli import CliError
    from ..engines import EngineError
    from ..shards import ShardError

    images = Path(args.images_dir)
    if images.is_dir() and not any(images.glob("*.npy")) and (images / "img_emb").is_dir():
        images = images / "img_emb"  # a clip-retrieval output folder
    try:
        build_index(
            images,
            args.captions_dir,
            nlist=args.nlist,
            codec=args.codec,
            train_size=args.train_size,
            memory_budget=args.memory_budget,
            out=args.out,
            resume=args.resume,
            seed=args.seed,
            batch_size=args.batch_size,
            nprobe=args.nprobe,
            max_iter=args.max_iter,
            num_threads=args.num_threads,
            progress=args.progress,
            checkpoint_every=args.checkpoint_every,
            work_dir=args.work_dir,
            kmeans_method=args.kmeans_method,
            quantizer=args.quantizer,
            quantizer_probe=args.quantizer_probe,
            merge=args.merge,
            engine=args.engine,
            ray_address=args.ray_address,
            part_size=args.part_size,
        )
    except (BuildError, ShardError, FileNotFoundError, ImportError, EngineError) as e:
        raise CliError(str(e)) from e
    return 0
