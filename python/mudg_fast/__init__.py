"""mudg_fast: retrieval-based training-set construction from web-scale CLIP embeddings.

The core (``knn``, ``KMeans``, ``PairedKMeans``, ``IVFIndex``) needs only numpy. CLIP encoding and
fine-tuning live in ``mudg_fast.clip`` and ``mudg_fast.train`` and need the ``[clip]`` extra; they
are imported lazily, so ``import mudg_fast`` never imports torch.
"""

from __future__ import annotations

from . import _core, augment, datasets, synthetic
from .build import build_index
from .index import IVFIndex
from .kmeans import KMeans, PairedKMeans, kmeans, paired_kmeans
from .parts import ShardedIndex, merge_parts
from .recall import evaluate_recall, modality_gap, plot_recall
from .reranking import rerank
from .search import knn

__version__ = _core.__version__

__all__ = [
    "__version__",
    "augment",
    "datasets",
    "synthetic",
    "IVFIndex",
    "ShardedIndex",
    "merge_parts",
    "KMeans",
    "PairedKMeans",
    "kmeans",
    "paired_kmeans",
    "knn",
    "rerank",
    "build_index",
    "evaluate_recall",
    "modality_gap",
    "plot_recall",
    "ClipEncoder",
    "evaluate",
    "finetune",
    "build_training_set",
    "simd_level",
    "set_simd_level",
    "detected_simd_level",
    "available_simd_levels",
]


# Heavy parts (torch, open_clip) load only when used: `mudg_fast.ClipEncoder`, `mudg_fast.evaluate`,
# `mudg_fast.finetune`, and the submodules clip / train / evaluation.
_LAZY = {
    "ClipEncoder": ("mudg_fast.clip", "ClipEncoder"),
    "evaluate": ("mudg_fast.evaluation", "evaluate"),
    "finetune": ("mudg_fast.train", "finetune"),
    "build_training_set": ("mudg_fast.pipeline", "build_training_set"),
}
_LAZY_MODULES = ("clip", "train", "evaluation", "pipeline", "retrieve", "select")


def __getattr__(name):
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _LAZY_MODULES:
        return importlib.import_module(f"mudg_fast.{name}")
    raise AttributeError(f"module 'mudg_fast' has no attribute {name!r}")


def simd_level() -> str:
    """The active SIMD level: 'scalar', 'avx2', 'avx2+vnni', 'avx512' or 'avx512+vnni' on x86,
    'neon' or 'neon+dotprod' on 64-bit ARM (a base instruction set, '+vnni' / '+dotprod' when the
    int8 screening kernel uses the dot-product instructions). MUDG_SIMD=<level> caps it: the best
    level the CPU supports whose base is no higher than the cap's and whose features the cap names
    (MUDG_SIMD=avx512 keeps VNNI off, MUDG_SIMD=neon keeps sdot off)."""
    return _core.simd_level()


def detected_simd_level() -> str:
    """The best SIMD level this CPU supports."""
    return _core.detected_simd_level()


def available_simd_levels() -> list[str]:
    """Every SIMD level this CPU supports, scalar first (the order of preference)."""
    return list(_core.available_simd_levels())


def set_simd_level(level: str) -> None:
    """Switch the active SIMD level at run time (tests and benchmarks). Raises ValueError if the
    CPU lacks it."""
    if not isinstance(level, str):
        raise TypeError(f"level must be a str such as 'scalar' or 'avx2', got {type(level).__name__}")
    if "\x00" in level:
        raise ValueError(f"unknown SIMD level {level!r}")
    _core.set_simd_level(level)
