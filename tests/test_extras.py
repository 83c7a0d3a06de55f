"""A missing optional dependency raises an ImportError that names the extra which installs it,
at every entry point that needs one; the core works with numpy alone."""

import subprocess
import sys
import textwrap

import pytest

# Runs in a fresh interpreter in which the listed modules cannot be imported.
HARNESS = """
import importlib.abc, sys
BLOCKED = {blocked!r}

class Block(importlib.abc.MetaPathFinder):  # "import name" raises ImportError, as if not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Block())
{body}
"""


def run_without(blocked, body: str) -> subprocess.CompletedProcess:
    code = HARNESS.format(blocked=list(blocked), body=textwrap.dedent(body))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def expect_hint(blocked, call: str, extra: str, what: str):
    p = run_without(blocked, f"""
        try:
            {call}
        except ImportError as e:
            print("MESSAGE:", e)
        else:
            print("NO ERROR")
        """)
    assert p.returncode == 0, p.stderr
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("MESSAGE:")), p.stdout)
    assert f'pip install "mudg_fast[{extra}]"' in line or f"pip install 'mudg_fast[{extra}]'" in line, line
    assert what in line, line


TORCH = ["torch", "torchvision", "open_clip"]


@pytest.mark.parametrize("call, what", [
    ("import mudg_fast; mudg_fast.finetune", "fine-tuning"),
    ("from mudg_fast.train import finetune", "fine-tuning"),
    ("import mudg_fast; mudg_fast.ClipEncoder('ViT-B-32', None)", "CLIP"),
    ("import mudg_fast; mudg_fast.evaluate(image_folder='.', classnames=['a'])", "CLIP"),
])
def test_torch_entry_points_name_the_clip_extra(call, what):
    expect_hint(TORCH, call, "clip", what)


def test_reading_a_manifest_names_the_pipeline_extra(tmp_path):
    expect_hint(["pyarrow", "pyarrow.parquet"],
                f"from mudg_fast.train.data import read_manifest; read_manifest({str(tmp_path / 'm.parquet')!r})",
                "pipeline", "manifest")


def test_core_works_with_numpy_alone():
    p = run_without(TORCH + ["pyarrow", "matplotlib", "tqdm", "ray", "faiss", "sklearn"], """
        import numpy as np
        import mudg_fast
        x = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
        ix = mudg_fast.IVFIndex(16, 4).train(x)
        ix.add(x)
        s, i = ix.search(x[:3], 5, nprobe=2)
        labels = mudg_fast.KMeans(4).fit_predict(x)
        print("OK", i.shape, labels.shape)
        """)
    assert p.returncode == 0, p.stderr
    assert "OK (3, 5) (500,)" in p.stdout
