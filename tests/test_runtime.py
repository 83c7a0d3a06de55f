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


def test_simd_level_reports_a_known_level():
    assert mudg_fast.simd_level() in ("scalar", "avx2", "avx512")
    order = ["scalar", "avx2", "avx512"]
    assert order.index(mudg_fast.simd_level()) <= order.index(mudg_fast.detected_simd_level())


def test_env_var_caps_the_level():
    r = run_py("import mudg_fast; print(mudg_fast.simd_level())", env={"MUDG_SIMD": "scalar"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "scalar"
    # a cap above what the CPU has is just a cap
    r = run_py("import mudg_fast; print(mudg_fast.simd_level())", env={"MUDG_SIMD": "avx512"})
    assert r.stdout.strip() == mudg_fast.detected_simd_level()


def test_bad_env_var_is_a_clear_error():
    r = run_py("import mudg_fast, numpy as np; mudg_fast.knn(np.ones((1, 2)), np.ones((3, 2)), 1)",
               env={"MUDG_SIMD": "sse9"})
    assert r.returncode != 0
    assert "unknown SIMD level 'sse9'" in r.stderr


def test_set_unsupported_level_raises(simd_level_restored):
    with pytest.raises(ValueError, match="unknown SIMD level"):
        mudg_fast.set_simd_level("neon9")
    if mudg_fast.detected_simd_level() != "avx512":
        with pytest.raises(ValueError, match="does not support"):
            mudg_fast.set_simd_level("avx512")


def test_import_does_not_pull_in_torch():
    r = run_py("import sys, mudg_fast; print('torch' in sys.modules, 'open_clip' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]
