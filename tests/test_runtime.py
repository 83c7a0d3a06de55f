"""SIMD dispatch control and import hygiene (Ctrl-C handling: test_interrupt.py)."""

import os
import subprocess
import sys
import textwrap

import mudg_fast
import pytest


def run_py(code, env=None, **kw):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=e, capture_output=True, check=False,
                          text=True, **kw)


KNOWN = ["scalar", "avx2", "avx2+vnni", "avx512", "avx512+vnni", "neon", "neon+dotprod"]


def test_simd_level_reports_a_known_level():
    assert mudg_fast.simd_level() in KNOWN
    assert mudg_fast._core.simd_levels() == KNOWN
    levels = mudg_fast.available_simd_levels()
    assert levels[0] == "scalar" and levels[-1] == mudg_fast.detected_simd_level()
    assert levels == [lv for lv in KNOWN if lv in levels]  # the order of preference
    assert mudg_fast.simd_level() in levels


def cap(env_value):
    r = run_py("import mudg_fast; print(mudg_fast.simd_level())", env={"MUDG_SIMD": env_value})
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def best_within(cap_level):
    """The level MUDG_SIMD=cap_level must give: scalar, or the same architecture with a base no
    higher and features named by the cap."""
    base = {"scalar": ("any", 0), "avx2": ("x86", 1), "avx512": ("x86", 2), "neon": ("arm", 1)}

    def parts(lv):
        b, _, f = lv.partition("+")
        return base[b], {f} if f else set()

    (ca, cb), cf = parts(cap_level)

    def within(lv):
        (a, b), f = parts(lv)
        return a == "any" or (a == ca and b <= cb and f <= cf)

    ok = [lv for lv in mudg_fast.available_simd_levels() if within(lv)]
    return ok[-1]


def test_env_var_caps_the_level():
    assert cap("scalar") == "scalar"
    # a cap above what the CPU has is just a cap; the cap names the instruction sets allowed
    for lv in KNOWN:
        assert cap(lv) == best_within(lv), lv
    levels = mudg_fast.available_simd_levels()
    if "avx512" in levels:
        assert cap("avx512") == "avx512"      # no VNNI unless the cap names it
    if "avx2" in levels:
        assert cap("avx2") == "avx2"
    if "avx512+vnni" in levels:
        assert cap("avx512+vnni") == "avx512+vnni"
    if "avx2+vnni" in levels:
        assert cap("avx2+vnni") == "avx2+vnni"
    if "neon" in levels:
        assert cap("neon") == "neon"          # no sdot unless the cap names it
    if "neon+dotprod" in levels:
        assert cap("neon+dotprod") == "neon+dotprod"
    if "avx2" in levels or "neon" in levels:  # a cap for another architecture leaves scalar
        assert cap("neon+dotprod" if "avx2" in levels else "avx512+vnni") == "scalar"


def test_bad_env_var_is_a_clear_error():
    r = run_py("import mudg_fast, numpy as np; mudg_fast.knn(np.ones((1, 2)), np.ones((3, 2)), 1)",
               env={"MUDG_SIMD": "sse9"})
    assert r.returncode != 0
    assert "unknown SIMD level 'sse9': use one of scalar, avx2, avx2+vnni, avx512, avx512+vnni, neon, neon+dotprod" in r.stderr


def test_set_unsupported_level_raises(simd_level_restored):
    with pytest.raises(ValueError, match="unknown SIMD level"):
        mudg_fast.set_simd_level("neon9")
    for lv in KNOWN:
        if lv not in mudg_fast.available_simd_levels():
            with pytest.raises(ValueError, match="does not support"):
                mudg_fast.set_simd_level(lv)
    for lv in mudg_fast.available_simd_levels():
        mudg_fast.set_simd_level(lv)
        assert mudg_fast.simd_level() == lv


def test_import_does_not_pull_in_torch():
    r = run_py("import sys, mudg_fast; print('torch' in sys.modules, 'open_clip' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]
