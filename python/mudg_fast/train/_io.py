"""Atomic file writes: write a temporary file in the destination's folder, flush it to disk,
then ``os.replace`` it over the destination. A crash leaves either the old file or the new one,
never a torn one."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "atomic_torch_save"]


def atomic_write(path, write: Callable[[Any], None], *, binary: bool = True) -> str:
    """Calls ``write(file_object)`` on a temporary file next to ``path``, then renames it to
    ``path``. The folder must exist. Returns ``path`` as a string. The temporary file is named
    and recycled as in :func:`mudg_fast.index.atomic_write` (``.<name>.tmp``; a save killed
    mid-write leaves it behind and the next save to ``path`` takes it over)."""
    from ..index import _fsync_dir, _open_temp

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder does not exist: {folder}")
    fd, tmp = _open_temp(Path(os.path.abspath(path)))
    try:
        # A duplicate descriptor for the file object: fd keeps the lock until after the rename.
        with (os.fdopen(os.dup(fd), "wb") if binary else os.fdopen(os.dup(fd), "w", encoding="utf-8")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    _fsync_dir(folder)  # make the rename itself durable where supported
    return path


def atomic_write_text(path, text: str) -> str:
    return atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_json(path, obj) -> str:
    """``obj`` as indented JSON (NaN is rejected: it is not JSON)."""
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def atomic_torch_save(obj, path) -> str:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))
