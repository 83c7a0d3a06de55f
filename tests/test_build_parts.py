"""Builds in parts (out of core): the same index as an in-memory build, in bounded memory,
resumable between parts."""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import mudg_fast
from mudg_fast import IVFIndex, ShardedIndex, merge_parts
from mudg_fast.build import BuildError, build_index
from mudg_fast.outofcore import plan_parts
from mudg_fast.shards import EmbeddingShards
from shard_helpers import make_collection

N, D, SHARD, NLIST, TRAIN = 12_000, 24, 3_000, 32, 4_000
KW = dict(nlist=NLIST, train_size=TRAIN, batch_size=700, progress=False)


@pytest.fixture(scope="module")
def coll(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("coll"), n=N, d=D, shard_rows=SHARD)


@pytest.fixture(scope="module")
def single(coll, tmp_path_factory):
    """In-memory paired sq8 build: {paired: bytes of the file}."""
    root = coll[0]
    out = {}
    for paired in (True, False):
        path = tmp_path_factory.mktemp("single") / "one.ivf"
        build_index(root / "img_emb", root / "text_emb" if paired else None, out=path, **KW)
        out[paired] = (path, path.read_bytes())
    return out


def _same(a, b):
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0].view(np.int32), b[0].view(np.int32))


@pytest.mark.parametrize("paired", [True, False])
def test_parts_equal_the_in_memory_build(coll, single, tmp_path, paired):
    root, images, captions = coll
    caps = root / "text_emb" if paired else None
    # 5 parts of 2,500 rows: parts split shards, and a shard (3,000 rows) spans two parts
    sharded = build_index(root / "img_emb", caps, out=tmp_path / "parts", part_size=2_500, **KW)
    assert isinstance(sharded, ShardedIndex) and len(sharded.parts) == 5 and sharded.ntotal == N
    names = sorted(p.name for p in (tmp_path / "parts").iterdir())
    assert names == [f"part-{i:05d}.ivf" for i in range(5)]
    np.testing.assert_array_equal(sharded.id_ranges, [[0, 2500], [2500, 5000], [5000, 7500], [7500, 10000],
                                                      [10000, 12000]])
    one = IVFIndex.load(single[paired][0])
    assert sharded.fingerprint == one.fingerprint
    q = captions[::37]
    for nprobe in (1, 4, NLIST):
        _same(sharded.search(q, 30, nprobe=nprobe), one.search(q, 30, nprobe=nprobe))
    # merging the folder gives the in-memory build's file, byte for byte
    merge_parts(tmp_path / "parts", tmp_path / "merged.ivf")
    assert (tmp_path / "merged.ivf").read_bytes() == single[paired][1]
    # and so does a parts build asked to merge (its parts are removed afterwards)
    merged = build_index(root / "img_emb", caps, out=tmp_path / "m.ivf", part_size=4_001, merge=True, **KW)
    assert isinstance(merged, IVFIndex) and (tmp_path / "m.ivf").read_bytes() == single[paired][1]
    work = tmp_path / "m.ivf.build"
    assert sorted(p.name for p in work.iterdir()) == ["manifest.json"]
    m = json.loads((work / "manifest.json").read_text())
    assert m["complete"] and m["layout"] == "parts" and len(m["parts"]["ranges"]) == 3


def test_parts_build_with_two_level_training_and_quantizer(coll, tmp_path):
    """kmeans_method / quantizer reach the parts build's training task: the merged parts equal
    the in-memory build with the same options, byte for byte, and the parts carry the quantizer."""
    root, _, captions = coll
    opts = dict(KW, codec="sq4", kmeans_method="two_level", quantizer="two_level", quantizer_probe=2)
    one = build_index(root / "img_emb", root / "text_emb", out=tmp_path / "one.ivf", **opts)
    assert one.quantizer == "two_level" and one.quantizer_probe == 2
    merged = build_index(root / "img_emb", root / "text_emb", out=tmp_path / "m.ivf", part_size=5_000, merge=True,
                         **opts)
    assert (tmp_path / "m.ivf").read_bytes() == (tmp_path / "one.ivf").read_bytes()
    sharded = build_index(root / "img_emb", root / "text_emb", out=tmp_path / "parts", part_size=5_000, **opts)
    assert all(p.quantizer == "two_level" for p in sharded.parts)
    q = captions[::37]
    _same(sharded.search(q, 10, nprobe=3), merged.search(q, 10, nprobe=3))
    flat = build_index(root / "img_emb", root / "text_emb", out=tmp_path / "flat.ivf", **dict(KW, codec="sq4"))
    assert flat.quantizer == "flat" and flat.fingerprint != one.fingerprint


def test_completed_parts_build_is_not_redone(coll, tmp_path, monkeypatch):
    root = coll[0]
    out = tmp_path / "p"
    build_index(root / "img_emb", None, out=out, part_size=5_000, **KW)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    monkeypatch.setattr(IVFIndex, "train", lambda *a, **k: pytest.fail("retrained a finished build"))
    again = build_index(root / "img_emb", None, out=out, part_size=5_000, **KW)
    assert again.ntotal == N and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes


class Stop(Exception):
    pass


def test_stopped_build_keeps_finished_parts_and_resumes(coll, single, tmp_path, monkeypatch):
    root = coll[0]
    out = tmp_path / "r.ivf"
    manifest = Path(str(out) + ".build") / "manifest.json"

    def killer(done, total):
        if done >= 2 * 2_000 + 500:  # inside the third part
            raise Stop()

    with pytest.raises(Stop):
        build_index(root / "img_emb", root / "text_emb", out=out, part_size=2_000, merge=True,
                    **{**KW, "progress": killer})
    m = json.loads(manifest.read_text())
    assert m["trained"] and sorted(m["parts"]["done"]) == ["0", "1"] and not m["complete"]
    folder = Path(m["parts"]["folder"])
    kept = {n: (folder / f"part-0000{n}.ivf").stat().st_mtime_ns for n in (0, 1)}
    assert not out.exists() and not (folder / "part-00002.ivf").exists()

    trains, started = [], []
    monkeypatch.setattr(IVFIndex, "train_paired", lambda *a, **k: trains.append(1))
    from mudg_fast.engines import tasks

    orig = tasks.add_part
    monkeypatch.setattr(tasks, "add_part", lambda t, progress=None: started.append(t.number) or orig(t, progress))
    build_index(root / "img_emb", root / "text_emb", out=out, part_size=2_000, merge=True, **KW)
    assert not trains and started == [2, 3, 4, 5]  # training and the finished parts were kept
    assert out.read_bytes() == single[True][1]
    del kept


def test_killed_subprocess_resumes_between_parts_to_the_same_bytes(coll, single, tmp_path):
    root = coll[0]
    out = tmp_path / "k"
    manifest = Path(str(out) + ".build") / "manifest.json"
    script = textwrap.dedent(f"""
        import time
        from mudg_fast.build import build_index
        build_index({str(root / "img_emb")!r}, None, out={str(out)!r}, nlist={NLIST}, train_size={TRAIN},
                    batch_size=250, part_size=1_500, progress=lambda done, total: time.sleep(0.02))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            if manifest.exists():
                try:
                    if len(json.loads(manifest.read_text())["parts"]["done"]) >= 2:
                        break
                except (ValueError, KeyError):
                    pass
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    m = json.loads(manifest.read_text())
    assert 2 <= len(m["parts"]["done"]) < 8 and not m["complete"]
    first = {n: (out / f"part-0000{n}.ivf").stat().st_mtime_ns for n in (0, 1)}
    sharded = build_index(root / "img_emb", None, out=out, part_size=1_500, **KW)
    assert len(sharded.parts) == 8
    assert {n: (out / f"part-0000{n}.ivf").stat().st_mtime_ns for n in (0, 1)} == first  # not rebuilt
    merge_parts(out, tmp_path / "merged.ivf")
    assert (tmp_path / "merged.ivf").read_bytes() == single[False][1]


def test_a_damaged_finished_part_is_built_again(coll, single, tmp_path):
    root = coll[0]
    out = tmp_path / "d"
    build_index(root / "img_emb", None, out=out, part_size=3_000, **KW)
    (out / "part-00002.ivf").unlink()
    with pytest.raises(ValueError, match="part 2 of 4 is missing"):
        ShardedIndex(out)
    sharded = build_index(root / "img_emb", None, out=out, part_size=3_000, **KW)  # the output changed
    assert sharded.ntotal == N
    merge_parts(out, tmp_path / "m.ivf")
    assert (tmp_path / "m.ivf").read_bytes() == single[False][1]


def test_resume_refuses_changes(coll, tmp_path):
    root = coll[0]
    out = tmp_path / "c"

    def killer(done, total):
        if done >= 3_500:
            raise Stop()

    with pytest.raises(Stop):
        build_index(root / "img_emb", None, out=out, part_size=3_000, **{**KW, "progress": killer})
    with pytest.raises(BuildError, match="cannot resume.*codec 'sq8' -> 'f16'"):
        build_index(root / "img_emb", None, out=out, part_size=3_000, **{**KW, "codec": "f16"})
    with pytest.raises(BuildError, match="started with merge=False"):
        build_index(root / "img_emb", None, out=out, part_size=3_000, merge=True, **KW)
    # a smaller budget cannot take over the larger parts of the first run
    with pytest.raises(BuildError, match="parts of up to 3,000 vectors"):
        build_index(root / "img_emb", None, out=out, part_size=1_000, **KW)
    ix = build_index(root / "img_emb", None, out=out, part_size=1_000, **{**KW, "resume": False})
    assert len(ix.parts) == 12


def test_plan_and_errors(coll, tmp_path, caplog):
    root = coll[0]
    img = EmbeddingShards(root / "img_emb")
    plan = plan_parts(img, nlist=NLIST, codec="sq8", train_size=TRAIN, memory_budget=64 << 20,
                      baseline_bytes=20 << 20, merge=True)
    assert plan.n_parts == 1 and plan.peak_bytes <= 64 << 20
    many = plan_parts(img, nlist=NLIST, codec="sq8", train_size=TRAIN, memory_budget=64 << 20,
                      baseline_bytes=20 << 20, min_parts=7)
    assert many.n_parts == 7 and many.ranges[0] == [0, N // 7] and many.ranges[-1][1] == N
    with pytest.raises(BuildError, match="too small for one batch.*already uses 60.00 MiB"):
        plan_parts(img, nlist=NLIST, codec="sq8", train_size=TRAIN, memory_budget=64 << 20,
                   baseline_bytes=60 << 20)
    with pytest.raises(BuildError, match="part_size 9,000,000 needs about"):
        plan_parts(img, nlist=NLIST, codec="sq8", train_size=TRAIN, memory_budget=64 << 20,
                   baseline_bytes=20 << 20, part_size=9_000_000)
    with pytest.raises(BuildError, match="is a file, but this build writes a folder of parts"):
        (tmp_path / "file.ivf").write_bytes(b"x")
        build_index(root / "img_emb", None, out=tmp_path / "file.ivf", part_size=3_000, **KW)
    with pytest.raises(BuildError, match="part_size must be an integer >= 1"):
        build_index(root / "img_emb", None, out=tmp_path / "z", part_size=0, **KW)
    with pytest.raises(ValueError, match="engine must be 'local', 'ray'"):
        build_index(root / "img_emb", None, out=tmp_path / "z", engine="spark", **KW)
    with caplog.at_level(logging.INFO, logger="mudg_fast.build"):
        build_index(root / "img_emb", None, out=tmp_path / "log", part_size=6_000, **KW)
    text = caplog.text
    assert "2 parts of up to 6,000 vectors" in text and "disk: parts ~" in text and "ETA ~" in text


_RSS_SCRIPT = """
import json, resource, sys
sys.modules["sklearn"] = None  # keep the interpreter small: the budget counts it
from mudg_fast.build import build_index

root, out, budget = sys.argv[1], sys.argv[2], sys.argv[3]
ix = build_index(root + "/img_emb", None, out=out, nlist=64, codec="f32", train_size=20_000,
                 memory_budget=budget, merge=True, progress=False)
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(json.dumps(dict(maxrss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, hwm=hwm)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB, /proc")
def test_out_of_core_build_stays_within_budget_and_equals_the_in_memory_build(tmp_path):
    """3M x 32 (f32 codec): a ~400 MiB index built and merged within a 120 MiB budget."""
    from mudg_fast.shards import write_collection

    x = mudg_fast.datasets.clustered_unit_vectors(3_000_000, 32, n_clusters=200, seed=5, dtype=np.float16)
    write_collection(tmp_path / "c", x, shard_rows=750_000, dtype=np.float16)
    del x
    budget = 120 << 20
    # Through a small launcher: a child exec'd straight from this (large) process would count this
    # process's memory in its ru_maxrss (Linux keeps the peak of the address space exec replaced).
    launcher = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", launcher, sys.executable, "-c", _RSS_SCRIPT, str(tmp_path / "c"),
                        str(tmp_path / "ooc.ivf"), str(budget)], capture_output=True, text=True, timeout=900,
                       check=False)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    size = (tmp_path / "ooc.ivf").stat().st_size
    print(f"peak RSS {m['maxrss'] / 2**20:.1f} MiB (VmHWM {m['hwm'] / 2**20:.1f} MiB), budget {budget / 2**20:.0f} MiB, index file "
          f"{size / 2**20:.1f} MiB")
    assert budget * 3 <= size  # the budget is at most a third of the index
    assert m["maxrss"] <= 1.10 * budget
    ref = build_index(tmp_path / "c" / "img_emb", None, out=tmp_path / "mem.ivf", nlist=64, codec="f32",
                      train_size=20_000, memory_budget="4GB", progress=False)
    assert ref.ntotal == 3_000_000
    del ref
    with open(tmp_path / "ooc.ivf", "rb") as a, open(tmp_path / "mem.ivf", "rb") as b:
        while True:
            x, y = a.read(64 << 20), b.read(64 << 20)
            assert x == y
            if not x:
                break


# -- the command line --------------------------------------------------------------------------


def test_cli_builds_in_parts_and_evaluates_the_folder(coll, single, tmp_path, capsys, monkeypatch):
    from mudg_fast.cli import main

    root = coll[0]
    base = ["build-index", "--embeddings", str(root), "--captions_dir", str(root / "text_emb"), "--nlist",
            str(NLIST), "--train_size", str(TRAIN), "--batch_size", "700"]
    monkeypatch.setitem(sys.modules, "tqdm", None)  # the plain progress line instead of a bar
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    rc = main(base + ["--out", str(tmp_path / "m.ivf"), "--part_size", "5000", "--merge"])
    err = capsys.readouterr().err
    assert rc == 0 and (tmp_path / "m.ivf").read_bytes() == single[True][1]
    # the plan up front (parts, sizes, disk, ETA), then progress with the parts done
    assert "3 parts of up to 5,000 vectors" in err and "disk: parts ~" in err and "ETA ~" in err
    assert "merging 3 parts" in err and f"{N:,}/{N:,} vectors (100.0%), parts 3/3" in err
    rc = main(base + ["--out", str(tmp_path / "p"), "--part_size", "5000", "--no_progress"])
    assert rc == 0 and capsys.readouterr().err == ""
    rc = main(["eval-index", "--index", str(tmp_path / "p"), "--paired_index", str(tmp_path / "m.ivf"),
               "--queries", str(root / "text_emb"), "--database", str(root / "img_emb"), "--num_queries", "100",
               "--k", "10", "--nprobes", "1,4"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    rows = [line.split() for line in out[1:3]]
    assert all(r[1] == r[3] for r in rows)  # the folder of parts and the merged file: the same recall
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.delitem(sys.modules, "mudg_fast.engines.ray", raising=False)
    rc = main(base + ["--out", str(tmp_path / "r"), "--engine", "ray", "--no_progress"])
    assert rc == 2 and 'pip install "mudg_fast[ray]"' in capsys.readouterr().err
