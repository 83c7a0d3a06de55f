"""Regenerates tests/data/ivf_v2_*.bin and their expectations (run only when the format changes
on purpose: the committed files pin format version 2; ivf_v2_sq4.bin was written before the sq4
residual form existed, ivf_v2_sq4r.bin holds it). The version 1 files (ivf_v1_*.bin, written
by mudg_fast before extension records existed) are kept as they are: old files must still load."""

import json
from pathlib import Path

import numpy as np

import mudg_fast

HERE = Path(__file__).parent / "data"


def golden_inputs():
    # Small integers / powers of two only, so every value is exact in float32 and float16.
    rng = np.random.default_rng(20261129)
    x = rng.integers(-8, 9, size=(40, 8)).astype(np.float32) / 8
    q = rng.integers(-8, 9, size=(3, 8)).astype(np.float32) / 8
    centroids = np.eye(4, 8, dtype=np.float32) - np.eye(4, 8, k=4, dtype=np.float32)
    ids = np.arange(1000, 1040, dtype=np.int64)
    return x, q, centroids, ids


GOLDEN_METADATA = {"golden": "format v2", "note": "caf\u00e9"}


#: golden file names: the codecs, and "sq4r" for sq4 in the residual form (an SQ4R record)
GOLDEN = ("f32", "sq8", "sq4", "sq4r")


def build(codec, metadata=True):
    x, q, centroids, ids = golden_inputs()
    ix = mudg_fast.IVFIndex(8, 4, codec=codec[:3]).set_centroids(centroids)
    if metadata:
        ix.set_metadata(GOLDEN_METADATA)
    if codec == "sq8":
        ix.set_codec_params(np.full(8, -1.0, np.float32), np.full(8, 2.0 / 255, np.float32))
    if codec.startswith("sq4"):
        levels = np.tile((np.arange(16, dtype=np.float32) - 7.5) / 8, 8)  # on the data's grid's midpoints
        scales = np.array([0.5, 1.0, 2.0, 0.25], np.float32) if codec == "sq4r" else np.zeros(0, np.float32)
        ix.set_codec_params(levels, scales)
    ix.add(x, ids)
    return ix


def main():
    x, q, centroids, ids = golden_inputs()
    expect = {}
    for codec in GOLDEN:
        ix = build(codec)
        path = HERE / f"ivf_v2_{codec}.bin"
        ix.save(path)
        s, i = ix.search(q, 5, nprobe=2)
        expect[codec] = {"list_sizes": ix.list_sizes().tolist(), "ids": i.tolist(), "scores": s.tolist()}
    (HERE / "ivf_v2_expected.json").write_text(json.dumps(expect, indent=1))


if __name__ == "__main__":
    main()
