import os

import numpy as np
import pytest

import mudg_fast


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def coco500():
    """Real CLIP ViT-B/16 COCO image/caption embeddings: (images, captions), (500, 512) each."""
    return mudg_fast.datasets.load_coco500()


def available_simd_levels():
    order = ["scalar", "avx2", "avx512"]
    best = mudg_fast.detected_simd_level()
    return order[: order.index(best) + 1]


@pytest.fixture
def simd_level_restored():
    """Lets a test switch SIMD levels and restores the level afterwards."""
    before = mudg_fast.simd_level()
    yield
    mudg_fast.set_simd_level(before)


def unit_rows(rng, n, d, dtype=np.float32):
    x = rng.standard_normal((n, d)).astype(dtype)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def pytest_report_header(config):
    return (f"mudg_fast {mudg_fast.__version__}: simd={mudg_fast.simd_level()} "
            f"(cpu best {mudg_fast.detected_simd_level()}), threads={mudg_fast._core.default_threads()}, "
            f"MUDG_SIMD={os.environ.get('MUDG_SIMD', '')!r}")
