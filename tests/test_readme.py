"""README.md's Python runs as written and shows what its text says; its two commands stay the
ones CI runs."""

import contextlib
import io
import pathlib
import re

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.DOTALL)


def test_the_python_block_is_short_and_runs():
    (code,) = _blocks("python")
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    ids, scores = namespace["ids"], namespace["scores"]
    assert ids.shape == (3, 5) and scores.dtype == np.float32
    # the search agrees with the paired index's own exhaustive answer: a real search ran
    images, captions = namespace["images"], namespace["captions"]
    exact_scores = captions[:3] @ images.T
    picked = np.take_along_axis(exact_scores, ids, axis=1)
    np.testing.assert_allclose(picked, scores, rtol=1e-5, atol=1e-5)
    lines = dict(line.split(" ", 1) for line in out.getvalue().splitlines())
    standard, paired = (eval(lines[name]) for name in ("standard", "paired"))  # noqa: S307 - lists of floats
    assert len(standard) == len(paired) == 2
    # what the text under the block claims: paired beats standard at one probe, ~0.70 vs ~0.60
    assert paired[0] > standard[0]
    assert abs(paired[0] - 0.70) < 0.05 and abs(standard[0] - 0.60) < 0.05


def test_the_two_commands_are_the_demo_and_the_ci_test_command():
    commands = [b.strip() for b in _blocks("bash")]
    assert commands == ['pip install ".[pipeline]" && mudg-fast demo',
                        'pip install ".[test]" && python -m pytest']
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1] in ci.splitlines()
