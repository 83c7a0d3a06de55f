"""Tiny CLIP models and generated images for the CLIP, training and evaluation tests.

Nothing here downloads anything: the model is an open_clip ``CLIP`` built from a custom config
(registered under ``TINY_MODEL`` with ``open_clip.add_model_config``) and randomly initialised
from a fixed seed; the tokenizer is open_clip's bundled BPE tokenizer. Import this module only
after ``pytest.importorskip("torch")`` and ``("open_clip")``.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import open_clip
import torch
from PIL import Image

TINY_MODEL = "mudg-fast-test-tiny"
IMAGE_SIZE = 32
# 3 blocks per tower, so n_blocks=2 leaves a frozen block on each side.
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 3, "width": 64, "patch_size": 8,
                   "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2,
                 "layers": 3},
}

_registered = False


def register_tiny_config() -> str:
    """Registers TINY_CONFIG with open_clip (once per process); returns its name."""
    global _registered
    if not _registered:
        d = tempfile.mkdtemp(prefix="mudg_fast_tiny_cfg_")
        path = os.path.join(d, TINY_MODEL + ".json")
        with open(path, "w") as f:
            json.dump(TINY_CONFIG, f)
        open_clip.add_model_config(path)
        _registered = True
    return TINY_MODEL


def tiny_parts(seed: int = 0):
    """(model, preprocess_train, preprocess, tokenizer) with weights drawn from ``seed``; the
    global torch RNG is left untouched."""
    name = register_tiny_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, pre_train, pre = open_clip.create_model_and_transforms(name)
    return model.eval(), pre_train, pre, open_clip.get_tokenizer(name)


def tiny_clip_parts(seed: int = 0):
    """The tiny model as a ``mudg_fast.clip.ClipParts``."""
    from mudg_fast.clip import ClipParts

    model, pre_train, pre, tok = tiny_parts(seed)
    return ClipParts(model=model, preprocess=pre, tokenizer=tok, preprocess_train=pre_train,
                     model_name=TINY_MODEL, pretrained=None)


def write_local_dir(root, seed: int = 0) -> str:
    """An open_clip ``local-dir:`` folder (config + weights) for the tiny model; returns the
    ``local-dir:...`` string."""
    model, *_ = tiny_parts(seed)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": TINY_CONFIG,
                   "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN),
                                      "std": list(open_clip.OPENAI_DATASET_STD)}}, f)
    torch.save(model.state_dict(), os.path.join(root, "open_clip_pytorch_model.bin"))
    return "local-dir:" + str(root)


# --- generated images ---------------------------------------------------------------------------

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 50, 220),
           "yellow": (230, 220, 40)}


def colour_image(rng: np.random.Generator, colour, size: int = IMAGE_SIZE) -> Image.Image:
    """A noisy grey background with one rectangle of ``colour`` (jittered) at a random place."""
    img = rng.normal(128, 30, (size, size, 3))
    h, w = rng.integers(size // 3, size - 2, 2)
    y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
    img[y:y + h, x:x + w] = np.asarray(colour) + rng.normal(0, 15, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_image_folder(root, n_per_class: int, *, seed: int = 0, classes=None,
                       ext: str = ".png") -> dict[str, list[str]]:
    """ImageFolder layout ``root/<class>/<i>.png`` of colour images; returns class -> paths."""
    rng = np.random.default_rng(seed)
    classes = list(classes or COLOURS)
    out = {}
    for c in classes:
        d = os.path.join(root, c)
        os.makedirs(d, exist_ok=True)
        out[c] = []
        for i in range(n_per_class):
            p = os.path.join(d, f"{i:04d}{ext}")
            colour_image(rng, COLOURS[c]).save(p)
            out[c].append(p)
    return out


def single_thread():
    """Fixture body: run torch single-threaded and restore the setting. The tiny models gain
    nothing from threads, and on a shared 2-core machine OpenMP spin-waiting made each small op
    ~100x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def fake_hf_cache(cache_dir, repo_id: str, filename: str, content: bytes = b"x") -> str:
    """Lays out one cached file the way huggingface_hub does (refs/main -> snapshots/<rev>/)."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(rev)
    snap = os.path.join(repo, "snapshots", rev)
    os.makedirs(snap, exist_ok=True)
    path = os.path.join(snap, filename)
    with open(path, "wb") as f:
        f.write(content)
    return path
