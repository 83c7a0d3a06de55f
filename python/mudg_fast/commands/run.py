"""mudg-fast run: class names -> descriptors -> retrieval -> selection -> manifest, end to end."""

from __future__ import annotations

from ._common import log
from .retrieve import add_retrieval_args, retrieve_from_args
from .select import add_selection_args, select_and_write


def add_arguments(p):
    add_retrieval_args(p)
    add_selection_args(p)
    p.add_argument("--out", required=True, help="output manifest (parquet); a .json summary goes beside it")


def run(args):
    cands, index = retrieve_from_args(args)
    ts = select_and_write(cands, index, args, extra_summary={"model": args.model, "pretrained": args.pretrained,
                                                              "index_path": args.index})
    for name, n in ts.counts().items():
        log(f"  {name}: {n}")
    return 0
