"""Shared machinery for the property-based fuzz tests (hypothesis).

Every fuzz test routes the calls it makes through :func:`attempt`, which counts them and sorts the
outcome into "returned" or "raised a clear exception". Anything else -- another exception type, an
empty message, a crash -- fails the test. The test then checks a returned result against a plain
numpy reference or an invariant.

Profiles (environment variable ``MUDG_FUZZ``):

- ``ci`` (default): derandomised, so CI sees the same examples every run; sized so that the fuzz
  modules together make well over 10 000 calls in about a minute.
- ``deep``: twenty times the examples, fresh random draws each run. ``tests/test_fuzz_deep.py``
  (marked ``slow``) runs every fuzz module under it.
"""

from __future__ import annotations

import collections
import os

import numpy as np
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

PROFILE = os.environ.get("MUDG_FUZZ", "ci")
_SCALE = {"ci": 1, "deep": 20}
if PROFILE not in _SCALE:
    raise RuntimeError(f"MUDG_FUZZ must be one of {sorted(_SCALE)}, got {PROFILE!r}")

settings.register_profile(
    "mudg-ci", deadline=None, derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much])
settings.register_profile(
    "mudg-deep", deadline=None, derandomize=False, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much])
settings.register_profile(  # local debugging: MUDG_FUZZ_SHRINK=0 reports the first failure as is
    "mudg-noshrink", parent=settings.get_profile(f"mudg-{PROFILE}"),
    phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile("mudg-noshrink" if os.environ.get("MUDG_FUZZ_SHRINK") == "0" else f"mudg-{PROFILE}")

# Exceptions a caller can be expected to handle: bad arguments are TypeError / ValueError (and
# their subclasses, such as mudg_fast's own errors); files that are missing are OSError.
CLEAR_ERRORS = (TypeError, ValueError)

#: calls made through `attempt`, by the name of the function under test
CALLS: collections.Counter = collections.Counter()


def examples(n: int) -> settings:
    """Hypothesis settings for a test that should try ``n`` examples under the ci profile."""
    return settings(max_examples=n * _SCALE[PROFILE])


class Raised:
    """The outcome of a call that raised one of the allowed exceptions."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    def __repr__(self):
        return f"Raised({type(self.exc).__name__}: {self.exc})"


def attempt(fn, *args, allowed=CLEAR_ERRORS, name: str | None = None, **kwargs):
    """Calls ``fn(*args, **kwargs)`` and counts the call.

    Returns the result, or a :class:`Raised` when the call raised one of ``allowed`` with a
    non-empty message. Any other exception propagates, and so fails the test.
    """
    CALLS[name or getattr(fn, "__qualname__", repr(fn))] += 1
    try:
        return fn(*args, **kwargs)
    except allowed as exc:
        msg = str(exc).strip()
        assert msg and msg not in ("None", "''"), f"{type(exc).__name__} without a message"
        assert "std::" not in msg and "Unable to cast" not in msg, f"internal error leaked: {msg}"
        return Raised(exc)


def raised(outcome) -> bool:
    return isinstance(outcome, Raised)


# ---------------------------------------------------------------------------------------------
# strategies

#: dtypes a careless caller passes; only the numeric ones (not bool) are valid vector inputs
HOSTILE_DTYPES = [np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_,
                  np.complex64, object]
NUMERIC_DTYPES = [np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8]

#: values that break naive code: non-finite, huge (their squares overflow float32), tiny, zero
SPECIAL_VALUES = [np.nan, np.inf, -np.inf, 3e38, -3e38, 1e30, 1e20, 1e-30, -1e-40, 0.0, -0.0]


@st.composite
def layouts(draw, a: np.ndarray) -> np.ndarray:
    """``a`` itself, or the same values seen through a non-contiguous or negative-stride view."""
    kind = draw(st.sampled_from(["c", "c", "fortran", "strided", "reversed"]))
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "strided" and a.ndim >= 1:
        wide = np.repeat(a, 2, axis=a.ndim - 1)
        return wide[..., ::2]
    if kind == "reversed" and a.ndim >= 1:
        return np.ascontiguousarray(a[::-1])[::-1]
    return a


@st.composite
def matrices(draw, n=None, d=None, *, max_n: int = 24, max_d: int = 12, specials: float = 0.1,
             dtype=np.float32, scale=None) -> np.ndarray:
    """A 2-D matrix of shape (n, d), mostly well-behaved values with an occasional special one.

    ``n``/``d`` fixed when given, else drawn (>= 1). ``specials`` is the chance that a few entries
    are replaced by SPECIAL_VALUES. Values may repeat (duplicate rows are drawn on purpose).
    """
    n = draw(st.integers(1, max_n)) if n is None else n
    d = draw(st.integers(1, max_d)) if d is None else d
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if scale is None:
        scale = draw(st.sampled_from([1.0, 1.0, 1.0, 1e-3, 1e3]))
    a = (rng.standard_normal((n, d)) * scale).astype(np.float64)
    if n > 1 and draw(st.booleans()):  # duplicate rows: ties for top-k, empty clusters for k-means
        a[rng.integers(0, n, n // 2)] = a[0]
    if a.size and draw(st.floats(0, 1)) < specials:
        for _ in range(draw(st.integers(1, 3))):
            a.flat[rng.integers(0, a.size)] = draw(st.sampled_from(SPECIAL_VALUES))
    with np.errstate(over="ignore", invalid="ignore"):
        a = a.astype(dtype)
    return draw(layouts(a))


@st.composite
def hostile_arrays(draw, max_side: int = 6) -> np.ndarray:
    """Anything: any dtype, 0-3 dimensions, zero-length sides, odd layouts, special values."""
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.integers(0, max_side)) for _ in range(ndim))
    dtype = draw(st.sampled_from(HOSTILE_DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = rng.standard_normal(shape)
    if base.size and draw(st.booleans()):
        base.flat[rng.integers(0, base.size)] = draw(st.sampled_from(SPECIAL_VALUES))
    if dtype is object:
        a = np.empty(shape, dtype=object)
        a[...] = base if draw(st.booleans()) else "x"
        return a
    with np.errstate(over="ignore", invalid="ignore"):
        a = base.astype(dtype) if not np.issubdtype(dtype, np.integer) else \
            np.nan_to_num(base * 10, posinf=0, neginf=0, nan=0).astype(dtype)
    return draw(layouts(a))


def int_params(lo: int = -3, hi: int = 40):
    """Integer-like arguments (k, nlist, nprobe ...): mostly small ints, some junk."""
    return st.one_of(
        st.integers(lo, hi), st.integers(lo, hi), st.integers(lo, hi),
        st.sampled_from([0, -1, 2**31, 2**63 - 1, 1.5, float("nan"), True, None, "3",
                         np.int64(3), np.int32(2), np.uint8(1)]))


def numpy_topk_ip(q: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """The k largest inner products of each query, descending (float64 reference scores)."""
    s = q.astype(np.float64) @ x.astype(np.float64).T
    return -np.sort(-s, axis=1)[:, :k]


def fuzz_call_count() -> int:
    return sum(CALLS.values())


# ---------------------------------------------------------------------------------------------
# arguments with at most one broken value


@st.composite
def arguments(draw, spec: dict, valid_share: float = 0.5):
    """Keyword arguments drawn from ``spec = {name: (valid strategy, junk strategy)}``.

    Returns ``(kwargs, broken)``: with probability ``valid_share`` every argument is valid and
    ``broken`` is None; otherwise exactly one argument, ``broken``, comes from its junk strategy.
    One bad argument at a time keeps most calls past the validation, where the real work is,
    and tells the test which exception to expect.
    """
    names = sorted(spec)
    broken = None
    if names and draw(st.integers(0, 99)) >= 100 * valid_share:
        broken = draw(st.sampled_from(names))
    return {n: draw(spec[n][1] if n == broken else spec[n][0]) for n in names}, broken


@st.composite
def mostly(draw, valid, junk, share: float = 0.75):
    """``valid`` with probability about ``share``, else ``junk``. (``st.one_of(a, a, b)`` does
    not weight: hypothesis merges the repeated strategy.)"""
    return draw(valid if draw(st.integers(0, 99)) < 100 * share else junk)


#: seeds: every non-negative integer below 2**64 (numpy integers too), and junk
VALID_SEEDS = st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 50),
                        st.sampled_from([np.int64(7), np.uint64(3), np.int32(0)]))
JUNK_SEEDS = st.sampled_from([-1, 2**64, 1.5, float("nan"), None, "0", True, np.float64(2.0)])
#: num_threads: None or a small positive integer, and junk
VALID_THREADS = st.sampled_from([None, 1, 2, 3, np.int64(2)])
JUNK_THREADS = st.sampled_from([0, -1, 1.5, "2", True, 2**40])
