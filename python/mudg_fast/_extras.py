"""Optional dependencies: import them on first use, or say which extra installs them.

The core needs only numpy. Everything else is an extra of the package (``pyproject.toml``), and
every entry point that needs one imports it through :func:`require`, so that a missing package
raises an ImportError that names the command which installs it, not a bare
``ModuleNotFoundError`` from deep inside.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: module -> the extra that installs it
EXTRA_OF = {
    "torch": "clip",
    "torchvision": "clip",
    "open_clip": "clip",
    "PIL": "clip",
    "pyarrow": "pipeline",
    "matplotlib": "pipeline",
    "tqdm": "pipeline",
    "ray": "ray",
    "faiss": "bench",
    "sklearn": "test",
}


def install_hint(extra: str) -> str:
    return f'pip install "mudg_fast[{extra}]"'


def require(module: str, purpose: str) -> ModuleType:
    """``importlib.import_module(module)``; when it is missing, an ImportError that says what
    needed it (``purpose``, e.g. "fine-tuning CLIP") and the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        extra = EXTRA_OF.get(top)
        hint = f": {install_hint(extra)}" if extra else ""
        raise ImportError(f"{purpose} needs {top}, which is not installed{hint}") from e
