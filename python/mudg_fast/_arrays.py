"""Input validation and conversion: the one place where arrays are copied."""

from __future__ import annotations

import numbers

import numpy as np

from . import _core

__all__ = ["as_ids", "as_matrix", "check_k", "check_magnitude", "magnitude_limit", "resolve_threads"]

_FLOAT_KINDS = "fiu"  # float, signed and unsigned integers convert to float32 exactly enough


def as_matrix(x, *, name: str = "X", dim: int | None = None, allow_1d: bool = False,
              allow_empty: bool = False, check_finite: bool = True) -> np.ndarray:
    """Returns a C-contiguous float32 2-D view of ``x``, copying only when dtype or layout differ.

    Accepts anything ``np.asarray`` accepts with a real numeric dtype (float16/32/64, integers).
    Raises TypeError for non-numeric input and ValueError for a wrong shape, an empty array
    (unless ``allow_empty``), or NaN/inf values.
    """
    a = np.asarray(x)
    if a.dtype.kind not in _FLOAT_KINDS or a.dtype == np.bool_:
        raise TypeError(f"{name} must be a numeric array (float32 preferred), got dtype {a.dtype}")
    if a.ndim == 1 and allow_1d:
        a = a[None, :]
    if a.ndim != 2:
        want = f"(n, {dim})" if dim is not None else "(n, d)"
        raise ValueError(f"{name} must be a 2-D array of shape {want}, got shape {a.shape}")
    if a.shape[1] == 0:
        raise ValueError(f"{name} has zero columns; vectors need at least one dimension")
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f"{name} has {a.shape[1]} dimensions but {dim} are expected")
    if a.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (shape {a.shape}); pass at least one row")
    original = a
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        with np.errstate(over="ignore", invalid="ignore"):
            a = np.ascontiguousarray(a, dtype=np.float32)
    if check_finite and a.size:
        check_magnitude(a, original, name)
    return a


def magnitude_limit(d: int) -> float:
    """The largest |value| a d-dimensional float32 input may hold.

    At this bound every inner product of two inputs (at most d * limit^2) and every squared
    distance (at most 4 d limit^2) stays below float32's maximum, so no score can overflow to inf
    and turn a ranking into a tie. CLIP embeddings (|value| <= 1) are nowhere near it. The core
    holds the formula (codec parameters are checked against it there too).
    """
    return _core.magnitude_limit(max(int(d), 1))


def check_magnitude(a: np.ndarray, original, name: str) -> None:
    """Raises ValueError when float32 ``a`` holds NaN/inf (also from ``original`` values that do not
    fit float32) or values too large for its scores to stay finite."""
    m = _core.max_abs(a)  # type: ignore[arg-type]  # a numpy array is a buffer
    if not np.isfinite(m):
        src = np.asarray(original)
        if src.dtype.kind == "f" and np.isfinite(src).all():
            raise ValueError(f"{name} holds values beyond float32's range (up to "
                             f"{float(np.abs(src).max()):.3g}); rescale the vectors")
        raise ValueError(f"{name} contains NaN or infinite values; clean or drop those rows first")
    limit = magnitude_limit(a.shape[-1])
    if m > limit:
        raise ValueError(f"{name} holds values up to {m:.3g} in magnitude; with {a.shape[-1]} "
                         f"dimensions their inner products would overflow float32 (limit "
                         f"{limit:.3g} per value). Rescale the vectors (CLIP embeddings are usually "
                         "L2-normalised)")


def as_ids(ids, n: int, *, name: str = "ids") -> np.ndarray:
    """int64 C-contiguous 1-D array of length n."""
    a = np.asarray(ids)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    return np.ascontiguousarray(a, dtype=np.int64)


INT32_MAX = 2**31 - 1
MAX_THREADS = 1 << 16


def check_k(k, name: str = "k", *, maximum: int = INT32_MAX) -> int:
    """A positive integer argument (numpy integers accepted), at most ``maximum``."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(k).__name__}")
    k = int(k)
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")
    if k > maximum:
        raise ValueError(f"{name}={k} is too large (at most {maximum})")
    return int(k)


def resolve_threads(num_threads) -> int:
    """None -> 0 (the core's default: OMP_NUM_THREADS or all cores)."""
    if num_threads is None:
        return 0
    if isinstance(num_threads, (bool, np.bool_)) or not isinstance(num_threads, numbers.Integral) \
            or not 1 <= int(num_threads) <= MAX_THREADS:
        raise ValueError(f"num_threads must be None or an integer in [1, {MAX_THREADS}], got {num_threads!r}")
    return int(num_threads)
