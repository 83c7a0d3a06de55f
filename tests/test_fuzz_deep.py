"""The deep fuzz profile: every fuzz module again with twenty times the examples and fresh random
draws (`python -m pytest -m slow tests/test_fuzz_deep.py`; about half an hour on two cores)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.slow
def test_deep_fuzz_profile():
    modules = sorted(str(p) for p in HERE.glob("test_fuzz_*.py") if p.name != Path(__file__).name)
    assert modules, "no fuzz modules found"
    env = dict(os.environ, MUDG_FUZZ="deep")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *modules],
                       env=env, cwd=HERE.parent, capture_output=True, text=True, check=False)
    print(r.stdout[-5000:], r.stderr[-5000:])
    assert r.returncode == 0, r.stdout[-20000:]
    assert "fuzz (deep profile)" in r.stdout
