"""Small generated collections in the clip-retrieval layout, for the build/shards/recall tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import mudg_fast
from mudg_fast.shards import write_collection


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def noisy_pairs(n: int, d: int, *, seed: int = 0, n_topics: int = 64, noise: float = 0.8):
    """(images, captions) float32 unit rows: captions around ``n_topics`` topics; each image is
    normalise(caption + a modality offset + noise), so images and captions sit in two cones
    (a modality gap) and matched pairs are more similar than random ones."""
    rng = np.random.default_rng(seed)
    captions = mudg_fast.datasets.clustered_unit_vectors(
        n, d, n_clusters=n_topics, spread=0.7, seed=seed
    )
    offset = rng.standard_normal(d).astype(np.float32)
    offset *= 0.5 / np.linalg.norm(offset)
    images = normalise(
        captions + offset + noise * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    )
    return images, captions


def make_collection(
    root,
    *,
    n: int = 12_000,
    d: int = 24,
    shard_rows: int = 3_000,
    dtype=np.float16,
    seed: int = 0,
    metadata: bool = False,
    captions: bool = True,
):
    """Writes a collection under root and returns (root, images, captions) where the arrays are
    the float32 values exactly as stored (after the round trip through ``dtype``)."""
    images, caps = noisy_pairs(n, d, seed=seed)
    images = images.astype(dtype).astype(np.float32)
    caps = caps.astype(dtype).astype(np.float32)
    meta = None
    if metadata:
        meta = {
            "url": [f"https://example.org/{i}.jpg" for i in range(n)],
            "caption": [f"caption number {i}" for i in range(n)],
            "key": np.arange(n, dtype=np.int64),
        }
    write_collection(
        root, images, caps if captions else None, shard_rows=shard_rows, dtype=dtype, metadata=meta
    )
    return Path(root), images, (caps if captions else None)
