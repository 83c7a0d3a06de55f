"""mudg-fast augment: choose label-text descriptors for a list of class names (docs/method.rst
§2, label augmentation)."""

from __future__ import annotations

import json
from pathlib import Path

from ..cli import CliError
from ._common import add_model_args, log, make_encoder, read_classnames


def add_arguments(p):
    p.add_argument("--classnames", required=True, help="class names: a file (one per line, or JSON) or 'a,b,c'")
    p.add_argument("--template", default="default",
                   help="prompt template: a name from mudg_fast.augment.TEMPLATES or a string with '{}' "
                        "(default: %(default)s)")
    p.add_argument("--pool", default=None, help="descriptor pool file, one per line (default: the built-in pool)")
    p.add_argument("--m", type=int, default=16, help="descriptors to keep (default: %(default)s)")
    p.add_argument("--n_groups", type=int, default=16, help="groups of confusable classes (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the k-means++ grouping (default: %(default)s)")
    p.add_argument("--out", required=True, help="output JSON with the chosen descriptors")
    add_model_args(p)


def run(args):
    from .. import augment
    from ..index import atomic_write

    names = read_classnames(args.classnames)
    try:
        template = augment.get_template(args.template)
        pool = augment.load_descriptor_pool(args.pool)
    except (TypeError, ValueError, OSError) as e:
        raise CliError(str(e)) from None
    if not 1 <= args.m <= len(pool):
        raise CliError(f"--m must be between 1 and the pool size ({len(pool)}), got {args.m}")
    encoder = make_encoder(args)
    log(f"scoring {len(pool)} descriptors on {len(names)} classes")
    sel = augment.select_descriptors(encoder, names, template, pool, args.m, n_groups=args.n_groups,
                                     seed=args.seed, return_scores=True)
    out = {"descriptors": sel.descriptors, "template": template, "classnames": names,
           "scores": {pool[i]: int(sel.scores[i]) for i in sel.ranking[: args.m]},
           "groups_scored": int(len(sel.scored_groups)), "model": args.model, "pretrained": args.pretrained,
           "seed": args.seed}
    text = json.dumps(out, indent=2)
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(text))
    for d in sel.descriptors:
        print(d)
    log(f"wrote {args.out}")
    return 0
