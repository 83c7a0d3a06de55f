"""The Ray engine: parts built as Ray tasks on a local 2-CPU cluster (shared by these tests) are
byte-identical to the local engine's, also when a worker dies mid-part or the cluster goes away."""

import importlib
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from mudg_fast import ShardedIndex
from mudg_fast.build import build_index
from mudg_fast.engines import tasks
from shard_helpers import make_collection

pytest.importorskip("ray")

N, D, SHARD, NLIST, TRAIN = 12_000, 24, 3_000, 32, 4_000
KW = dict(nlist=NLIST, train_size=TRAIN, batch_size=500, progress=False)


@pytest.fixture(scope="module")
def coll(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("coll"), n=N, d=D, shard_rows=SHARD)


@pytest.fixture(scope="module")
def local_parts(coll, tmp_path_factory):
    """Paired sq4 parts of 2,500 rows built by the local engine: {name: bytes}."""
    root = coll[0]
    out = tmp_path_factory.mktemp("local") / "parts"
    build_index(root / "img_emb", root / "text_emb", out=out, codec="sq4", part_size=2_500, **KW)
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_ray_parts_are_byte_identical_to_local(ray_cluster, coll, local_parts, tmp_path):
    root, _, captions = coll
    sharded = build_index(root / "img_emb", root / "text_emb", out=tmp_path / "parts", codec="sq4",
                          part_size=2_500, engine="ray", **KW)
    assert ray_cluster.is_initialized()  # the engine used the running cluster and left it running
    assert _files(tmp_path / "parts") == local_parts and len(local_parts) == 5
    # fan-out search: each part a Ray task, top-k merged here == one pass over every part here
    q = captions[::41]
    s0, i0 = sharded.search(q, 25, nprobe=6)
    s1, i1 = sharded.search(q, 25, nprobe=6, engine="ray")
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_array_equal(s0.view(np.int32), s1.view(np.int32))


def test_ray_uses_one_part_per_worker_and_merges(ray_cluster, coll, tmp_path):
    root = coll[0]
    single = build_index(root / "img_emb", None, out=tmp_path / "one.ivf", **KW)
    merged = build_index(root / "img_emb", None, out=tmp_path / "ray.ivf", engine="ray", merge=True, **KW)
    assert merged.ntotal == single.ntotal == N
    assert (tmp_path / "ray.ivf").read_bytes() == (tmp_path / "one.ivf").read_bytes()
    m = json.loads((tmp_path / "ray.ivf.build" / "manifest.json").read_text())
    assert len(m["parts"]["ranges"]) == 2  # fits in memory, but spread over the cluster's 2 CPUs


def _die_in_first_attempt(task, progress=None):
    """Kills its own worker process in the middle of its first attempt at part 1."""
    marker = Path(task.out).parent.parent / f"attempted-{task.number}"
    first = task.number == 1 and not marker.exists()

    def report(done):
        if first and done > 0:
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        if progress is not None:
            progress(done)

    return tasks.add_part(task, report)


def test_worker_killed_during_its_first_attempt_reruns_the_part(ray_cluster, coll, local_parts, tmp_path):
    from ray import cloudpickle

    from mudg_fast.engines.ray import RayEngine

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test file

    class Flaky(RayEngine):
        part_fn = staticmethod(_die_in_first_attempt)

    root = coll[0]
    (tmp_path / "out").mkdir()
    build_index(root / "img_emb", root / "text_emb", out=tmp_path / "out" / "parts", codec="sq4",
                part_size=2_500, engine=Flaky(max_retries=2), **KW)
    pid = int((tmp_path / "out" / "attempted-1").read_text())  # the first attempt ran, and died
    assert pid != os.getpid()
    assert _files(tmp_path / "out" / "parts") == local_parts


def test_cluster_going_away_keeps_finished_parts_and_a_rerun_resumes(ray_cluster, coll, local_parts, tmp_path):
    from mudg_fast.engines.ray import EngineError

    ray = ray_cluster
    root = coll[0]
    out = tmp_path / "parts"
    manifest = tmp_path / "parts.build" / "manifest.json"
    state = {}

    def progress(done, total):  # the driver's view of a cluster that disappears
        m = json.loads(manifest.read_text())
        if len(m["parts"]["done"]) >= 1 and not state:
            state["gone"] = True
            ray.shutdown()

    try:
        with pytest.raises(EngineError, match="went away.*kept: run the same build again to resume"):
            build_index(root / "img_emb", root / "text_emb", out=out, codec="sq4", part_size=2_500, engine="ray",
                        **{**KW, "progress": progress, "batch_size": 100})
        assert not ray.is_initialized()  # no new cluster was started behind the user's back
        kept = json.loads(manifest.read_text())["parts"]["done"]
        assert kept and not json.loads(manifest.read_text())["complete"]
        mtimes = {n: (out / r["file"]).stat().st_mtime_ns for n, r in kept.items()}
    finally:
        if not ray.is_initialized():
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    sharded = build_index(root / "img_emb", root / "text_emb", out=out, codec="sq4", part_size=2_500,
                          engine="ray", **KW)
    assert isinstance(sharded, ShardedIndex) and _files(out) == local_parts
    assert {n: (out / f"part-0000{n}.ivf").stat().st_mtime_ns for n in mtimes} == mtimes  # kept, not rebuilt


def test_task_errors_are_raised_as_they_are(ray_cluster, coll, tmp_path):
    """An error inside a task (here a shard that changed after planning) is the same exception as
    with the local engine, not a cluster failure."""
    from mudg_fast.shards import ShardError

    root = tmp_path / "c"
    make_collection(root, n=6_000, d=D, shard_rows=3_000)

    class Changing:
        def __call__(self, task, progress=None):
            raise ShardError(f"{task.ranges[0].path} changed since the build was planned")

    from ray import cloudpickle

    from mudg_fast.engines.ray import RayEngine

    cloudpickle.register_pickle_by_value(sys.modules[__name__])

    class Broken(RayEngine):
        part_fn = Changing()

    with pytest.raises(ShardError, match="changed since the build was planned"):
        build_index(root / "img_emb", None, out=tmp_path / "p", part_size=3_000, engine=Broken(), **KW)
    assert not list((tmp_path / "p").glob("*.ivf"))


def test_ray_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.delitem(sys.modules, "mudg_fast.engines.ray", raising=False)
    from mudg_fast.engines import get_engine

    with pytest.raises(ImportError, match=r'pip install "mudg_fast\[ray\]"'):
        get_engine("ray")
    with pytest.raises(ImportError, match=r"mudg_fast\[ray\]"):
        importlib.import_module("mudg_fast.engines.ray")
    monkeypatch.delitem(sys.modules, "mudg_fast.engines.ray", raising=False)


def test_ray_engine_arguments():
    from mudg_fast.engines.ray import RayEngine

    with pytest.raises(ValueError, match="cpus_per_task"):
        RayEngine(cpus_per_task=0)
    with pytest.raises(ValueError, match="max_retries"):
        RayEngine(max_retries=-1)
