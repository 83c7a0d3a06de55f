"""Ctrl-C during long native work: KeyboardInterrupt within a second, no thread left computing,
and the objects involved still consistent (an interrupted add() is rolled back, an interrupted
streaming build resumes).

Each job runs in a child process that prints "ready" when setup is done, then runs for tens of
seconds unless interrupted. The parent sends SIGINT one second later; the child prints "caught"
the moment KeyboardInterrupt reaches Python, then a JSON report of its state.
"""

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

PRELUDE = """
import json, os, threading, time
import numpy as np
import mudg_fast
rng = np.random.default_rng(0)
"""

# After the interrupt: is anything still burning CPU? Python threads other than main?
EPILOGUE = """
def quiet_cpu(seconds=0.5):
    c0 = time.process_time()
    time.sleep(seconds)
    return time.process_time() - c0
"""

JOBS = {
    "knn": ("""
        x = rng.standard_normal((300_000, 128), dtype=np.float32)
    """, """
        mudg_fast.knn(x[:50_000], x, 10)
    """, """
        report["after"] = mudg_fast.knn(x[:3], x[:1000], 2)[1][:, 0].tolist()
    """),
    "kmeans": ("""
        x = rng.standard_normal((300_000, 128), dtype=np.float32)
        est = mudg_fast.KMeans(2048, max_iter=50, init="random")
    """, """
        est.fit(x)
    """, """
        report["fitted"] = hasattr(est, "cluster_centers_")
    """),
    "ivf_train": ("""
        x = rng.standard_normal((300_000, 128), dtype=np.float32)
        ix = mudg_fast.IVFIndex(128, 2048, codec="sq8")
    """, """
        ix.train(x, max_iter=50)
    """, """
        report["trained"] = ix.is_trained
    """),
    "ivf_add": ("""
        x = rng.standard_normal((1_500_000, 96), dtype=np.float32)
        ix = mudg_fast.IVFIndex(96, 4096, codec="f32")
        ix.set_centroids(x[:4096])
        ix.add(x[:1000])
        before = ix.search(x[:5], 3, nprobe=4)
    """, """
        ix.add(x)
    """, """
        report["ntotal"] = ix.ntotal
        report["list_total"] = int(ix.list_sizes().sum())
        after = ix.search(x[:5], 3, nprobe=4)
        report["search_unchanged"] = bool((after[1] == before[1]).all() and (after[0] == before[0]).all())
        ix.add(x[1000:1100])
        report["ntotal_after_add"] = ix.ntotal
    """),
    "ivf_search": ("""
        x = rng.standard_normal((400_000, 128), dtype=np.float32)
        ix = mudg_fast.IVFIndex(128, 64, codec="f32")
        ix.set_centroids(x[:64])
        ix.add(x)
        q = rng.standard_normal((20_000, 128), dtype=np.float32)
        small = ix.search(q[:3], 5, nprobe=8)
    """, """
        ix.search(q, 100, nprobe=64)
    """, """
        again = ix.search(q[:3], 5, nprobe=8)
        report["search_unchanged"] = bool((again[1] == small[1]).all())
    """),
    "rerank": ("""
        x = rng.standard_normal((300_000, 256), dtype=np.float32).astype(np.float16)
        q = rng.standard_normal((100_000, 256), dtype=np.float32)
        cand = rng.integers(0, 300_000, (100_000, 500))
        small = mudg_fast.rerank(q[:3], cand[:3], 5, x)
    """, """
        mudg_fast.rerank(q, cand, 10, x)
    """, """
        again = mudg_fast.rerank(q[:3], cand[:3], 5, x)
        report["rerank_unchanged"] = bool((again[1] == small[1]).all() and (again[0] == small[0]).all())
    """),
    "rerank_callable": ("""
        x = rng.standard_normal((200_000, 256), dtype=np.float32)
        q = rng.standard_normal((60_000, 256), dtype=np.float32)
        cand = rng.integers(0, 200_000, (60_000, 300))
        fetch = lambda ids: x[ids]
        small = mudg_fast.rerank(q[:3], cand[:3], 5, fetch)
    """, """
        mudg_fast.rerank(q, cand, 10, fetch)
    """, """
        again = mudg_fast.rerank(q[:3], cand[:3], 5, fetch)
        report["rerank_unchanged"] = bool((again[1] == small[1]).all() and (again[0] == small[0]).all())
    """),
    "build_index": ("""
        import tempfile
        from pathlib import Path
        tmp = Path(tempfile.mkdtemp())
        (tmp / "img").mkdir()
        for s in range(4):
            np.save(tmp / "img" / f"img_emb_{s}.npy", rng.standard_normal((75_000, 64), dtype=np.float32))
        def slow_progress(done, total):  # stands in for a slow disk: the add phase takes seconds
            time.sleep(0.03)
        args = dict(nlist=256, codec="sq8", max_iter=3, train_size=20_000, batch_size=5_000,
                    checkpoint_every=1, seed=1)
    """, """
        mudg_fast.build_index(tmp / "img", out=tmp / "ix.bin", progress=slow_progress, **args)
    """, """
        report["out_exists"] = (tmp / "ix.bin").exists()
        manifest = json.loads((tmp / "ix.bin.build" / "manifest.json").read_text())
        report["checkpointed"] = {k: manifest.get(k) for k in ("trained", "shards_done")}
        resumed = mudg_fast.build_index(tmp / "img", out=tmp / "ix.bin", progress=False, **args)
        fresh = mudg_fast.build_index(tmp / "img", out=tmp / "fresh.bin", progress=False, **args)
        q = rng.standard_normal((50, 64), dtype=np.float32)
        report["resumed_ntotal"] = resumed.ntotal
        report["resumed_equals_fresh"] = bool(
            (resumed.search(q, 10, nprobe=256)[1] == fresh.search(q, 10, nprobe=256)[1]).all()
            and (resumed.list_sizes() == fresh.list_sizes()).all())
    """),
}


def child_code(job):
    setup, work, check = (textwrap.dedent(part) for part in JOBS[job])
    return "\n".join([
        textwrap.dedent(PRELUDE), textwrap.dedent(EPILOGUE), setup,
        'print("ready", flush=True)',
        "report = {}",
        "try:",
        textwrap.indent(work, "    "),
        '    print("finished", flush=True)',
        "except KeyboardInterrupt:",
        '    print("caught", flush=True)',
        '    report["cpu_after"] = quiet_cpu()',
        '    report["python_threads"] = threading.active_count()',
        textwrap.indent(check, "    "),
        '    print(json.dumps(report), flush=True)',
    ])


@pytest.mark.parametrize("job", sorted(JOBS))
def test_ctrl_c_stops_within_a_second_and_leaves_a_consistent_state(job):
    p = subprocess.Popen([sys.executable, "-c", child_code(job)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline().strip()
        assert line == "ready", (line, p.stderr.read() if p.poll() is not None else "")
        time.sleep(1.0)  # well inside the native loop (the whole job takes tens of seconds)
        assert p.poll() is None, "the job finished before it could be interrupted"
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        line = p.stdout.readline().strip()
        elapsed = time.monotonic() - t0
        assert line == "caught", (line, p.stderr.read())
        report = json.loads(p.stdout.readline())
        p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    print(f"{job}: KeyboardInterrupt {elapsed:.3f}s after SIGINT; {report}")
    assert elapsed < 1.0, f"took {elapsed:.2f}s to stop"
    assert p.returncode == 0, p.stderr.read()
    # nothing still computing: in half a second of sleep the process used almost no CPU
    assert report["cpu_after"] < 0.05, report
    assert report["python_threads"] == 1, report
    if job == "kmeans":
        assert report["fitted"] is False
    if job == "ivf_train":
        assert report["trained"] is False
    if job == "ivf_add":  # rolled back: as if add() had never been called
        assert report["ntotal"] == report["list_total"] == 1000
        assert report["search_unchanged"]
        assert report["ntotal_after_add"] == 1100
    if job == "ivf_search":
        assert report["search_unchanged"]
    if job.startswith("rerank"):
        assert report["rerank_unchanged"]
    if job == "build_index":
        assert not report["out_exists"]
        assert report["resumed_ntotal"] == 300_000
        assert report["resumed_equals_fresh"]
