"""``mudg-fast train``: fine-tune CLIP on a selected training set (docs/method.rst §6, fine-tuning).

Example::

    mudg-fast train --model ViT-B-16 --pretrained openai --manifest selection.parquet \\
        --classnames summary.json --descriptors descriptors.json --iterations 500 \\
        --device cuda --out runs/imagenet

Writes ``model.pt`` (the EMA model), ``checkpoint.pt``, ``config.json`` and ``log.jsonl`` to
``--out``; ``--resume`` continues an interrupted run. torch is imported only when the command
runs, not for ``--help``.
"""

from __future__ import annotations

import argparse

from ..cli import CliError
from .config import TrainConfig

_D = TrainConfig.__dataclass_fields__


def _default(name):
    return _D[name].default


def _optional_str(value: str):
    return None if value.lower() in ("", "none") else value


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=_default("model"),
                   help="open_clip architecture, or hf-hub:org/repo, local-dir:PATH "
                        "(default %(default)s)")
    g.add_argument("--pretrained", type=_optional_str, default=_default("pretrained"),
                   help="pretrained tag, checkpoint file, hf-hub:/local-dir:, or 'none' for "
                        "random weights (default %(default)s)")
    g.add_argument("--offline", action="store_true",
                   help="never use the network; fail clearly when weights are not cached")
    g.add_argument("--cache_dir", default=None, help="where downloaded weights are cached")

    g = p.add_argument_group("data (one of --manifest or --image_folder)")
    g.add_argument("--manifest", default=None,
                   help="selection manifest (.parquet: id, label, classname[, path])")
    g.add_argument("--webdataset", default=None,
                   help="img2dataset output folder (tar shards) holding the manifest's images")
    g.add_argument("--image_folder", default=None, help="root/<class>/<image> tree")
    g.add_argument("--classnames", default=None,
                   help="class names, one per label: JSON list/summary or text file")
    g.add_argument("--template", default=_default("template"),
                   help="class prompt with {} for the name (default %(default)r)")
    g.add_argument("--descriptors", default=None,
                   help="descriptor phrases (JSON or text file, best first); default none")
    g.add_argument("--max_descriptors", type=int, default=None,
                   help="use only the first N descriptors")
    g.add_argument("--no_augment", dest="augment", action="store_false",
                   help="train on the inference transform (no random crops)")

    g = p.add_argument_group("optimisation (defaults: the authors')")
    g.add_argument("--iterations", type=int, default=_default("iterations"),
                   help="SGD steps (default %(default)s)")
    g.add_argument("--batch_size", type=int, default=_default("batch_size"),
                   help="images per step (default %(default)s)")
    g.add_argument("--lr", type=float, default=_default("lr"),
                   help="learning rate of the towers (default %(default)s)")
    g.add_argument("--prompt_lr_mult", type=float, default=_default("prompt_lr_mult"),
                   help="learning-rate multiplier of the prompt vectors (default %(default)s)")
    g.add_argument("--momentum", type=float, default=_default("momentum"),
                   help="SGD momentum (default %(default)s)")
    g.add_argument("--weight_decay", type=float, default=_default("weight_decay"),
                   help="(default %(default)s)")
    g.add_argument("--distill_weight", "--lambda_", dest="distill_weight", type=float,
                   default=_default("distill_weight"),
                   help="λ: weight of the frozen model's soft targets (default %(default)s)")
    g.add_argument("--tau", type=float, default=_default("tau"),
                   help="τ: teacher softmax scale (default %(default)s)")
    g.add_argument("--logit_scale", type=float, default=_default("logit_scale"),
                   help="student logit scale (default %(default)s)")
    g.add_argument("--ema", type=float, default=_default("ema"),
                   help="EMA decay β (default %(default)s)")
    g.add_argument("--n_blocks", type=int, default=_default("n_blocks"),
                   help="trained transformer blocks per tower (default %(default)s)")
    g.add_argument("--n_ctx", type=int, default=_default("n_ctx"),
                   help="learnable prompt vectors (default %(default)s)")
    g.add_argument("--ctx_init", type=_optional_str, default=_default("ctx_init"),
                   help="words the prompt vectors start from, 'none' for random "
                        "(default %(default)r)")

    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    g.add_argument("--seed", type=int, default=_default("seed"),
                   help="seeds the batches, augmentations and random prompt init "
                        "(default %(default)s)")
    g.add_argument("--device", default=_default("device"), help="cpu, cuda, cuda:N")
    g.add_argument("--precision", choices=["amp", "fp32"], default=None,
                   help="mixed precision on CUDA (default) or fp32")
    g.add_argument("--num_workers", type=int, default=_default("num_workers"),
                   help="data-loading processes (default %(default)s)")
    g.add_argument("--save_every", type=int, default=_default("save_every"),
                   help="iterations between checkpoints (default %(default)s)")
    g.add_argument("--log_every", type=int, default=_default("log_every"),
                   help="iterations per log.jsonl line (default %(default)s)")
    g.add_argument("--no_progress", dest="progress", action="store_false",
                   help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if (args.manifest is None) == (args.image_folder is None):
        raise CliError("give one of --manifest or --image_folder")
    settings = {k: getattr(args, k) for k in TrainConfig.__dataclass_fields__
                if k != "out" and hasattr(args, k)}
    try:
        from .loop import finetune

        result = finetune(args.out, **settings)
    except (FileNotFoundError, FileExistsError, ValueError, ImportError, RuntimeError,
            ArithmeticError) as e:
        raise CliError(str(e)) from e
    loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
    print(f"trained {result.iterations} iterations (last loss {loss}) on "
          f"{len(result.classnames)} classes, {max(1, len(result.descriptors))} descriptor(s)")
    print(f"model (EMA): {result.model_path}")
    print(f"checkpoint:  {result.checkpoint_path}")
    return 0
