"""Shared machinery for the benchmark suites: timing, peers in subprocesses, the results table.

Run everything:      python -m pytest benchmarks -p no:cacheprovider
Run one group:       python -m pytest benchmarks/test_bench_kmeans.py
Smaller (smoke) run: MUDG_BENCH_SCALE=0.1 python -m pytest benchmarks

Each suite times mudg_fast with pytest-benchmark and its peers (faiss-cpu, numpy, scikit-learn) in
the same run, records min/median/max and the ratio of medians, and writes
``benchmarks/results/<group>.json``; ``benchmarks/RESULTS.md`` is regenerated from those files.
faiss's bundled OpenBLAS reads OPENBLAS_CORETYPE when it loads, so every setting of it is
measured in its own subprocess; the best is the reference.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import mudg_fast

HERE = Path(__file__).parent
RESULTS_DIR = HERE / "results"
SCALE = float(os.environ.get("MUDG_BENCH_SCALE", "1"))
THREADS = int(os.environ.get("MUDG_BENCH_THREADS", "2"))
CORETYPES = ("Haswell", "SkylakeX")


def scaled(n: int, minimum: int = 1) -> int:
    return max(minimum, int(round(n * SCALE)))


def summary(times) -> dict:
    t = sorted(float(x) for x in times)
    return {"min": t[0], "median": statistics.median(t), "max": t[-1], "rounds": len(t)}


def measure(fn, rounds: int, warmup: int = 0) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def ratio(peer: dict, ours: dict) -> dict:
    """Speed-up of ours over the peer: median ratio and the worst/best pairing of the rounds."""
    return {"median": peer["median"] / ours["median"], "low": peer["min"] / ours["max"],
            "high": peer["max"] / ours["min"]}


def run_peer(task: str, params: dict, coretype: str | None, timeout: int = 3600) -> dict:
    """Runs benchmarks/peers.py TASK in a fresh interpreter with OPENBLAS_CORETYPE set.
    Returns its JSON result, or {"error": ...} when the peer cannot run (e.g. SIGILL)."""
    env = dict(os.environ)
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    env["OMP_NUM_THREADS"] = str(THREADS)
    cmd = [sys.executable, str(HERE / "peers.py"), task, json.dumps(params)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode != 0:
        reason = f"exit status {p.returncode}"
        if p.returncode in (-4, 132):
            reason = "illegal instruction (this CPU lacks the kernel's ISA)"
        return {"error": reason, "stderr": p.stderr[-2000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


# CPU flags (as /proc/cpuinfo spells them) that decide which SIMD levels and peers' kernels run.
CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "asimd", "asimddp")


def cpu_description() -> dict:
    """Model name, family/model numbers and the SIMD-relevant flags of the first CPU."""
    out = {"cpu": platform.processor() or platform.machine(), "cpu_family": None, "cpu_model": None,
           "cpu_flags": []}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and out["cpu_family"] is None:
                out["cpu"] = value
            elif key == "cpu family" and out["cpu_family"] is None:
                out["cpu_family"] = value
            elif key == "model" and out["cpu_model"] is None:
                out["cpu_model"] = value
            elif key in ("flags", "Features"):
                present = set(value.split())
                out["cpu_flags"] = [f for f in CPU_FLAGS if f in present]
                break
    except OSError:
        pass
    return out


def screening_defaults() -> dict:
    """Whether each available SIMD level screens exact searches with int8 by default."""
    before = mudg_fast.simd_level()
    out = {}
    try:
        for level in mudg_fast.available_simd_levels():
            mudg_fast.set_simd_level(level)
            out[level] = bool(mudg_fast._core.screening_default())
    finally:
        mudg_fast.set_simd_level(before)
    return out


def machine_info() -> dict:
    cpu = cpu_description()
    info = {**cpu, "cores": os.cpu_count(), "threads_used": THREADS, "simd": mudg_fast.simd_level(),
            "simd_levels": mudg_fast.available_simd_levels(), "screening": screening_defaults(),
            "python": platform.python_version(), "numpy": np.__version__, "mudg_fast": mudg_fast.__version__,
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"), "scale": SCALE}
    for mod in ("faiss", "sklearn"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            info[mod] = "not installed"
    return info


@contextlib.contextmanager
def simd_level(level: str):
    """Runs the block at another SIMD level (restored afterwards)."""
    before = mudg_fast.simd_level()
    mudg_fast.set_simd_level(level)
    try:
        yield
    finally:
        mudg_fast.set_simd_level(before)


def other_levels() -> list[str]:
    """avx2, when this CPU's default level is better: the AVX2-only figures measured here too."""
    levels = mudg_fast.available_simd_levels()
    return ["avx2"] if "avx2" in levels and mudg_fast.simd_level() != "avx2" else []


def vnni_avx512() -> bool:
    """Whether the default level is AVX-512 with VNNI (the higher speed targets apply)."""
    return mudg_fast.simd_level() == "avx512+vnni"


class Recorder:
    def __init__(self):
        self.groups: dict[str, dict] = {}

    def group(self, name: str, title: str, targets: list[str]) -> dict:
        g = self.groups.setdefault(name, {"group": name, "title": title, "targets": targets, "rows": [],
                                          "notes": []})
        return g

    def row(self, group: str, **row):
        self.groups[group]["rows"].append(row)

    def note(self, group: str, text: str):
        self.groups[group]["notes"].append(text)

    def write(self):
        if not self.groups:
            return
        RESULTS_DIR.mkdir(exist_ok=True)
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        info = machine_info()
        for name, g in self.groups.items():
            g["date"] = stamp
            g["machine"] = info
            (RESULTS_DIR / f"{name}.json").write_text(json.dumps(g, indent=1, default=float))
        from report import write_results_md  # noqa: PLC0415

        write_results_md(RESULTS_DIR, HERE / "RESULTS.md")


RECORDER = Recorder()


@pytest.fixture(scope="session")
def recorder():
    return RECORDER


def pytest_sessionfinish(session, exitstatus):
    RECORDER.write()


@pytest.fixture(autouse=True, scope="session")
def _threads():
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    try:
        import faiss

        faiss.omp_set_num_threads(THREADS)
    except ImportError:
        pass


sys.path.insert(0, str(HERE))


def drop_page_cache(files) -> str:
    """Asks the kernel to drop the files' pages from the page cache (posix_fadvise DONTNEED:
    clean pages that no process maps go); returns what fincore reports afterwards."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", *map(str, files)],
                             capture_output=True, text=True, timeout=60).stdout.split()
        return f"{sum(int(x) for x in out) / 2**20:.1f} MiB of the shards resident after the drop (fincore)"
    except (OSError, ValueError, subprocess.SubprocessError):
        return "residency not checked (no fincore)"
