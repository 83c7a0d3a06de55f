"""Fine-tuning CLIP on a selected training set (docs/method.rst §6); needs the ``[clip]`` extra.

``finetune(out, **settings)`` is the entry point and ``mudg-fast train`` its command line.
Importing this package does not import torch: the names below load on first use.
"""

from __future__ import annotations

import importlib

from .config import TrainConfig

__all__ = ["finetune", "Trainer", "TrainConfig", "FinetuneResult", "StepResult",
           "soft_target_loss"]

_LAZY = {"finetune": "loop", "Trainer": "loop", "FinetuneResult": "loop", "StepResult": "loop",
         "soft_target_loss": "loop"}


def __getattr__(name):
    if name in _LAZY:
        from .._extras import require

        require("torch", "fine-tuning CLIP")
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
