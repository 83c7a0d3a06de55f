"""Pieces shared by the pipeline subcommands: reading class lists, building encoders, logging."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from ..cli import CliError


def log(msg: str) -> None:
    print(f"[mudg-fast] {msg}", file=sys.stderr, flush=True)


def read_classnames(spec: str) -> list[str]:
    """Class names from a file (one per line; or JSON: a list, or an object with a 'classnames' /
    'classes' / 'class_names' list) or a comma-separated string."""
    if spec is None:
        raise CliError("give the class names with --classnames (a file or 'cat,dog,...')")
    p = Path(spec)
    if spec.strip() and p.is_dir():
        raise CliError(f"{spec} is a folder; give a class list file or 'cat,dog,...'")
    if spec.strip() and p.is_file():
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"cannot read the class list {spec}: {e}") from None
        if p.suffix.lower() == ".json":
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise CliError(f"{spec}: not valid JSON ({e})") from None
            if isinstance(obj, dict):
                for key in ("classnames", "classes", "class_names"):
                    if key in obj:
                        obj = obj[key]
                        break
            if not isinstance(obj, list) or not all(isinstance(c, str) for c in obj):
                raise CliError(f"{spec}: expected a JSON list of class names (or an object with 'classnames')")
            names = obj
        else:
            names = [line.strip() for line in text.splitlines()]
            names = [n for n in names if n and not n.startswith("#")]
    elif os.sep in spec or spec.endswith((".txt", ".json")):
        raise CliError(f"class list file not found: {spec}")
    else:
        names = [c.strip() for c in spec.split(",") if c.strip()]
    if not names:
        raise CliError(f"no class names in {spec!r}")
    from ..pipeline import check_classnames

    try:
        return check_classnames(names)
    except (TypeError, ValueError) as e:
        raise CliError(str(e)) from None


def read_descriptors(path: str) -> list[str]:
    """Descriptors from a JSON list / {'descriptors': [...]} or a text file, one per line."""
    p = Path(path)
    if not p.is_file():
        raise CliError(f"descriptor file not found: {path}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"cannot read the descriptor file {path}: {e}") from None
    if p.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise CliError(f"{path}: not valid JSON ({e})") from None
        if isinstance(obj, dict):
            obj = obj.get("descriptors")
        if not isinstance(obj, list) or not all(isinstance(d, str) for d in obj):
            raise CliError(f"{path}: expected a JSON list of descriptor strings (or {{'descriptors': [...]}})")
        return obj
    return [line.rstrip("\n") for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _optional(s: str):
    return None if s.lower() in ("none", "") else s


def add_model_args(p) -> None:
    g = p.add_argument_group("text encoder (open_clip; needs the [clip] extra)")
    g.add_argument("--model", default="ViT-B-16", help="open_clip model name (default: %(default)s)")
    g.add_argument("--pretrained", default="openai", type=_optional,
                   help="pretrained tag, local checkpoint file, local-dir:PATH, hf-hub:REPO, or 'none' for random "
                        "weights (default: %(default)s)")
    g.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    g.add_argument("--batch_size", type=int, default=256, help="texts per encoder batch (default: %(default)s)")
    g.add_argument("--offline", action="store_true", help="never touch the network; fail clearly if weights are missing")
    g.add_argument("--cache_dir", default=None, help="open_clip / Hugging Face cache folder")


def make_encoder(args):
    try:
        from ..clip import ClipEncoder
    except ImportError as e:
        raise CliError(f"CLIP encoding needs the [clip] extra: pip install 'mudg_fast[clip]' ({e})") from None
    try:
        return ClipEncoder(args.model, args.pretrained, device=args.device, batch_size=args.batch_size,
                           offline=args.offline, cache_dir=args.cache_dir)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as e:
        raise CliError(f"cannot load model {args.model!r} with weights {args.pretrained!r}: {e}") from None


def load_index(path: str):
    """An index file, or a folder of index parts (a build in parts)."""
    from ..parts import open_index

    if not Path(path).exists():
        raise CliError(f"index file not found: {path} (give an index file or a folder of index parts)")
    try:
        return open_index(path)
    except (ValueError, OSError) as e:
        raise CliError(str(e)) from None


def embeddings_source(spec: str | None, index, dim: int):
    """Where selection reads image embeddings: a shard folder (img_emb/ or its parent), a .npy
    file, or the index itself (decoded codes) when spec is None."""
    if spec is None:
        return index
    p = Path(spec)
    if not p.exists():
        raise CliError(f"embeddings not found: {spec}")
    if p.is_file():
        if p.suffix != ".npy":
            raise CliError(f"{spec}: expected a .npy file or a folder of .npy shards")
        return np.load(p, mmap_mode="r")
    from ..shards import EmbeddingShards

    folder = p / "img_emb" if (p / "img_emb").is_dir() else p
    try:
        shards = EmbeddingShards(folder, label="images")
    except (ValueError, OSError) as e:
        raise CliError(str(e)) from None
    if shards.dim != dim:
        raise CliError(f"{spec}: embeddings have {shards.dim} dimensions, the class prototypes {dim}")
    return shards.fetch


def metadata_for(spec: str | None, ids):
    """Metadata rows (url, caption, ...) for ids from a clip-retrieval folder (its metadata/) or
    a folder of parquet files, as a pyarrow Table in id order; None without spec."""
    if spec is None:
        return None
    from ..shards import MetadataShards

    p = Path(spec)
    folder = p / "metadata" if (p / "metadata").is_dir() else p
    try:
        return MetadataShards(folder).fetch(ids)
    except (ValueError, OSError, ImportError) as e:
        raise CliError(f"cannot read metadata from {spec}: {e}") from None
