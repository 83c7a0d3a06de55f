"""``mudg-fast eval``: zero-shot and descriptor score-averaging accuracy, per class, as JSON.

Example::

    mudg-fast eval --pretrained runs/imagenet/model.pt --image_folder imagenet/val \\
        --classnames imagenet_classes.txt --device cuda --out runs/imagenet/eval.json

A fine-tuned ``model.pt`` brings its architecture, learned prompt, template and descriptors;
``--template``/``--descriptors`` override the last two.
"""

from __future__ import annotations

import argparse

from ..cli import CliError


def _optional_str(value: str):
    return None if value.lower() in ("", "none") else value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="open_clip architecture or hf-hub:/local-dir: (default ViT-L-14, or the "
                        "fine-tuned checkpoint's own)")
    p.add_argument("--pretrained", type=_optional_str, default="openai",
                   help="tag, checkpoint file (e.g. a fine-tuned model.pt), hf-hub:/local-dir:, "
                        "or 'none' (default %(default)s)")
    p.add_argument("--image_folder", default=None, help="root/<class>/<image> test set")
    p.add_argument("--manifest", default=None, help="parquet manifest (label, classname, path)")
    p.add_argument("--webdataset", default=None, help="img2dataset folder for --manifest")
    p.add_argument("--classnames", default=None,
                   help="class names, one per label (JSON or text file)")
    p.add_argument("--template", default=None,
                   help="class prompt with {} (default: the checkpoint's, else "
                        "'a photo of a {}.')")
    p.add_argument("--descriptors", default=None,
                   help="descriptor file (default: the checkpoint's, else none); 'none' for none")
    p.add_argument("--max_descriptors", type=int, default=None,
                   help="use only the first N descriptors")
    p.add_argument("--batch_size", type=int, default=256,
                   help="images per forward pass (default %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default %(default)s)")
    p.add_argument("--precision", choices=["amp", "fp32"], default=None,
                   help="float16 autocast on CUDA (default there) or fp32")
    p.add_argument("--num_workers", type=int, default=0,
                   help="image-decoding processes (default %(default)s)")
    p.add_argument("--out", default=None, help="write the JSON report here (atomically)")
    p.add_argument("--offline", action="store_true",
                   help="never use the network; fail clearly when weights are not cached")
    p.add_argument("--cache_dir", default=None, help="where downloaded weights are cached")
    p.add_argument("--no_progress", dest="progress", action="store_false",
                   help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if (args.manifest is None) == (args.image_folder is None):
        raise CliError("give one of --manifest or --image_folder")
    descriptors = args.descriptors
    if descriptors is not None and descriptors.lower() == "none":
        descriptors = []
    try:
        from ..evaluation import evaluate

        result = evaluate(model=args.model, pretrained=args.pretrained,
                          image_folder=args.image_folder, manifest=args.manifest,
                          webdataset=args.webdataset,
                          classnames=args.classnames, template=args.template,
                          descriptors=descriptors, max_descriptors=args.max_descriptors,
                          batch_size=args.batch_size, device=args.device,
                          precision=args.precision, num_workers=args.num_workers, out=args.out,
                          offline=args.offline, cache_dir=args.cache_dir,
                          progress=args.progress)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as e:
        raise CliError(str(e)) from e
    r = result.report
    print(f"{r['n_images']} images, {r['n_classes']} classes")
    print(f"zero-shot top-1:       {100 * r['zero_shot']['top1']:.2f}%")
    if r["score_averaging"] is not None:
        print(f"score averaging top-1: {100 * r['score_averaging']['top1']:.2f}% "
              f"({len(r['descriptors'])} descriptors)")
    if args.out:
        print(f"report: {args.out}")
    return 0
