"""Streaming, resumable index builds from shard folders (mudg_fast.build)."""

import json
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
from mudg_fast import IVFIndex
from mudg_fast.build import BuildError, build_index, parse_memory, plan_build
from mudg_fast.shards import EmbeddingShards, ShardError, sample_ids
from shard_helpers import make_collection

N, D, SHARD, NLIST, TRAIN = 12_000, 24, 3_000, 32, 4_000
KW = dict(nlist=NLIST, train_size=TRAIN, batch_size=1_000, progress=False, checkpoint_every=1)


@pytest.fixture(scope="module")
def coll(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("coll"), n=N, d=D, shard_rows=SHARD)


@pytest.fixture(scope="module")
def reference(coll, tmp_path_factory):
    """An uninterrupted paired sq8 build: (path, bytes of the file)."""
    root = coll[0]
    out = tmp_path_factory.mktemp("ref") / "ref.ivf"
    build_index(root / "img_emb", root / "text_emb", out=out, **KW)
    return out, out.read_bytes()


def _empty_like(index: IVFIndex) -> IVFIndex:
    """A new empty index with the same centroids and codec parameters."""
    ix = IVFIndex(index.dim, index.nlist, codec=index.codec)
    ix.set_centroids(index.centroids)
    a, b = index.codec_params()
    ix.set_codec_params(a, b)
    return ix


def _queries(captions, n=200):
    return captions[np.random.default_rng(1).choice(len(captions), n, replace=False)]


# -- what gets built -----------------------------------------------------------------------------


@pytest.mark.parametrize("paired", [True, False])
def test_build_equals_training_on_the_sample_then_adding_everything(coll, tmp_path, paired):
    root, images, captions = coll
    out = tmp_path / "x.ivf"
    built = build_index(root / "img_emb", root / "text_emb" if paired else None, out=out, **KW)
    assert built.ntotal == N and built.nlist == NLIST and built.codec == "sq8"
    # training used a seeded random sample over all shards (not the first rows), paired or not
    ids = sample_ids(N, TRAIN, 0)
    assert not np.array_equal(ids, np.arange(TRAIN)) and ids.max() > 3 * SHARD
    ref = IVFIndex(D, NLIST, codec="sq8")
    if paired:
        ref.train_paired(images[ids], captions[ids], pairing="nearest", seed=0)
    else:
        ref.train(images[ids], seed=0)
    np.testing.assert_array_equal(built.centroids, ref.centroids)
    np.testing.assert_array_equal(built.codec_params()[0], ref.codec_params()[0])
    # streaming the fp16 shards batch by batch == adding all float32 rows at once (ids = row order)
    direct = ref.add(images)
    q = _queries(captions)
    for nprobe in (1, 4, NLIST):
        s1, i1 = built.search(q, 10, nprobe=nprobe)
        s2, i2 = direct.search(q, 10, nprobe=nprobe)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(s1, s2)
    # the file is the same too, once the direct index records the same source (for rerank="auto")
    assert built.metadata == {"source": {"img_emb": str((root / "img_emb").resolve()), "ntotal": N, "dim": D,
                                         "dtype": "float16"}}
    direct.set_metadata(built.metadata)
    direct.save(tmp_path / "direct.ivf")
    assert (tmp_path / "direct.ivf").read_bytes() == out.read_bytes()
    # the returned index is the saved one
    loaded = IVFIndex.load(out)
    np.testing.assert_array_equal(loaded.search(q, 5)[1], built.search(q, 5)[1])
    # finished: work files removed, manifest marked complete
    work = Path(str(out) + ".build")
    assert sorted(p.name for p in work.iterdir()) == ["manifest.json"]
    m = json.loads((work / "manifest.json").read_text())
    assert m["complete"] and m["shards_done"] == 4 and m["ntotal_done"] == N
    assert m["fingerprint"]["params"]["training"] == ("paired" if paired else "standard")


def test_same_seed_same_file_other_seed_other_index(coll, reference, tmp_path):
    root = coll[0]
    out = tmp_path / "again.ivf"
    build_index(
        root / "img_emb",
        root / "text_emb",
        out=out,
        **{**KW, "batch_size": 777, "checkpoint_every": 0},
    )
    assert out.read_bytes() == reference[1]  # batch size and checkpoints do not change the result
    other = build_index(
        root / "img_emb", root / "text_emb", out=tmp_path / "s1.ivf", **{**KW, "seed": 1}
    )
    assert not np.array_equal(other.centroids, IVFIndex.load(reference[0]).centroids)


def test_fp16_shards_are_converted_one_batch_at_a_time(coll, tmp_path, monkeypatch):
    root = coll[0]
    seen = []
    orig = IVFIndex.add

    def spy(self, x, ids=None, **kw):
        seen.append((x.shape[0], x.dtype, int(ids[0]), int(ids[-1])))
        return orig(self, x, ids, **kw)

    monkeypatch.setattr(IVFIndex, "add", spy)
    build_index(root / "img_emb", None, out=tmp_path / "b.ivf", **{**KW, "batch_size": 800})
    assert all(dt == np.float32 and 1 <= n <= 800 for n, dt, _, _ in seen)
    assert sum(n for n, *_ in seen) == N
    # consecutive global ids, batches inside one shard each
    firsts = [a for _, _, a, _ in seen]
    assert firsts == sorted(firsts) and all(a // SHARD == b // SHARD for _, _, a, b in seen)


def test_budget_sets_the_batch_size(coll):
    from mudg_fast.build import FIXED_OVERHEAD

    img = EmbeddingShards(coll[0] / "img_emb")
    big = plan_build(img, nlist=NLIST, codec="sq8", train_size=TRAIN, memory_budget="1GB")
    assert big.batch_rows == SHARD  # never more than a shard
    per_row = D * 4 + D * 2 + 8  # float32 batch + the fp16 source pages + ids
    budget = FIXED_OVERHEAD + big.resident_index_bytes + 1_500 * per_row + 100
    small = plan_build(img, nlist=NLIST, codec="sq8", train_size=500, memory_budget=budget)
    assert small.batch_rows == 1_500 and small.batch_bytes == 1_500 * per_row
    assert small.peak_bytes <= budget and small.resident_index_bytes >= small.index_bytes
    with pytest.raises(BuildError, match="too small"):
        plan_build(
            img, nlist=NLIST, codec="sq8", train_size=500, memory_budget=budget - 1_000 * per_row
        )
    with pytest.raises(BuildError, match="train_size <="):
        plan_build(img, nlist=NLIST, train_size=12_000, paired=True, memory_budget=budget)


# -- interruption and resume -------------------------------------------------------------------


class Stop(Exception):
    pass


def test_interrupted_build_resumes_to_the_identical_file(coll, reference, tmp_path, monkeypatch):
    root = coll[0]
    out = tmp_path / "r.ivf"
    manifest = Path(str(out) + ".build") / "manifest.json"

    def killer(done, total):
        if done >= 2 * SHARD + 1_500:  # in the middle of the third shard
            raise Stop()

    with pytest.raises(Stop):
        build_index(root / "img_emb", root / "text_emb", out=out, **{**KW, "progress": killer})
    assert not out.exists()
    m = json.loads(manifest.read_text())
    assert (
        m["trained"]
        and m["shards_done"] == 2
        and m["ntotal_done"] == 2 * SHARD
        and not m["complete"]
    )

    trains, calls = [], []
    orig = IVFIndex.train_paired
    monkeypatch.setattr(
        IVFIndex, "train_paired", lambda self, *a, **k: trains.append(1) or orig(self, *a, **k)
    )
    build_index(
        root / "img_emb",
        root / "text_emb",
        out=out,
        **{**KW, "progress": lambda done, total: calls.append(done)},
    )
    assert not trains  # training was not redone
    assert calls[0] > 2 * SHARD  # adding restarted at the third shard
    assert out.read_bytes() == reference[1]


def test_interrupted_during_training_and_before_any_checkpoint(
    coll, reference, tmp_path, monkeypatch
):
    root = coll[0]
    out = tmp_path / "t.ivf"
    orig = IVFIndex.train_paired

    def broken(self, *a, **k):
        raise Stop()

    monkeypatch.setattr(IVFIndex, "train_paired", broken)
    with pytest.raises(Stop):
        build_index(root / "img_emb", root / "text_emb", out=out, **KW)
    monkeypatch.setattr(IVFIndex, "train_paired", orig)

    def killer(done, total):
        if done >= 500:
            raise Stop()

    with pytest.raises(Stop):  # trained, stopped inside the first shard: resume from trained.ivf
        build_index(root / "img_emb", root / "text_emb", out=out, **{**KW, "progress": killer})
    m = json.loads((Path(str(out) + ".build") / "manifest.json").read_text())
    assert m["trained"] and m["shards_done"] == 0
    build_index(root / "img_emb", root / "text_emb", out=out, **KW)
    assert out.read_bytes() == reference[1]


def test_killed_subprocess_resumes_to_the_identical_file(coll, reference, tmp_path):
    root = coll[0]
    out = tmp_path / "k.ivf"
    manifest = Path(str(out) + ".build") / "manifest.json"
    script = textwrap.dedent(f"""
        import time
        from mudg_fast.build import build_index
        build_index({str(root / "img_emb")!r}, {str(root / "text_emb")!r}, out={str(out)!r},
                    nlist={NLIST}, train_size={TRAIN}, batch_size=250, checkpoint_every=1,
                    progress=lambda done, total: time.sleep(0.03))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if manifest.exists():
                try:
                    if json.loads(manifest.read_text())["shards_done"] >= 2:
                        break
                except (ValueError, KeyError):  # never happens with atomic writes; be safe anyway
                    pass
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    m = json.loads(manifest.read_text())
    assert 2 <= m["shards_done"] < 4 and not m["complete"] and not out.exists()
    built = build_index(root / "img_emb", root / "text_emb", out=out, **KW)
    assert out.read_bytes() == reference[1]
    ref = IVFIndex.load(reference[0])
    q = _queries(coll[2])
    np.testing.assert_array_equal(built.search(q, 10, nprobe=3)[1], ref.search(q, 10, nprobe=3)[1])


def test_corrupt_checkpoint_falls_back_to_the_trained_index(coll, reference, tmp_path):
    root = coll[0]
    out = tmp_path / "c.ivf"

    def killer(done, total):
        if done >= 3 * SHARD + 10:
            raise Stop()

    with pytest.raises(Stop):
        build_index(root / "img_emb", root / "text_emb", out=out, **{**KW, "progress": killer})
    ckpt = Path(str(out) + ".build") / "checkpoint.ivf"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    build_index(root / "img_emb", root / "text_emb", out=out, **KW)
    assert out.read_bytes() == reference[1]


def test_resume_refuses_changed_inputs_or_parameters(coll, tmp_path):
    root, images, captions = coll
    out = tmp_path / "p.ivf"

    def killer(done, total):
        if done >= SHARD + 10:
            raise Stop()

    with pytest.raises(Stop):
        build_index(root / "img_emb", root / "text_emb", out=out, **{**KW, "progress": killer})
    with pytest.raises(BuildError, match=r"cannot resume.*nlist 32 -> 64.*resume=False"):
        build_index(root / "img_emb", root / "text_emb", out=out, **{**KW, "nlist": 64})
    with pytest.raises(BuildError, match="codec 'sq8' -> 'f16'"):
        build_index(root / "img_emb", root / "text_emb", out=out, **{**KW, "codec": "f16"})
    with pytest.raises(BuildError, match="training 'paired' -> 'standard'"):
        build_index(root / "img_emb", None, out=out, **KW)
    # same shapes, different content in one shard
    changed = tmp_path / "changed"
    make_collection(changed, n=N, d=D, shard_rows=SHARD)
    alt = np.load(changed / "img_emb" / "img_emb_1.npy")
    np.save(changed / "img_emb" / "img_emb_1.npy", alt[::-1].copy())
    with pytest.raises(BuildError, match="images shard img_emb_1.npy: content changed"):
        build_index(changed / "img_emb", changed / "text_emb", out=out, **KW)
    # resume=False discards the old progress and builds the new inputs
    ix = build_index(changed / "img_emb", changed / "text_emb", out=out, **{**KW, "resume": False})
    assert ix.ntotal == N


def test_completed_build_is_not_redone(coll, reference, tmp_path, monkeypatch):
    root = coll[0]
    out = tmp_path / "done.ivf"
    build_index(root / "img_emb", root / "text_emb", out=out, **KW)
    mtime = out.stat().st_mtime_ns
    monkeypatch.setattr(
        IVFIndex, "train_paired", lambda *a, **k: pytest.fail("retrained a finished build")
    )
    ix = build_index(root / "img_emb", root / "text_emb", out=out, **KW)
    assert ix.ntotal == N and out.stat().st_mtime_ns == mtime
    # a different request for the same output rebuilds (nothing unfinished is lost)
    monkeypatch.undo()
    ix = build_index(root / "img_emb", root / "text_emb", out=out, **{**KW, "nlist": 16})
    assert ix.nlist == 16 and IVFIndex.load(out).nlist == 16


def test_a_second_concurrent_build_is_refused(coll, tmp_path):
    from mudg_fast.build import _WorkDir

    out = tmp_path / "l.ivf"
    held = _WorkDir(Path(str(out) + ".build"))
    held.lock()
    try:
        with pytest.raises(BuildError, match="another build"):
            build_index(coll[0] / "img_emb", None, out=out, **KW)
    finally:
        held.unlock()
    assert build_index(coll[0] / "img_emb", None, out=out, **KW).ntotal == N


# -- errors ------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(coll, tmp_path):
    root = coll[0]
    out = tmp_path / "e.ivf"
    with pytest.raises(FileNotFoundError, match="images folder"):
        build_index(tmp_path / "missing", None, out=out, **KW)
    few = tmp_path / "few"
    few.mkdir()
    np.save(few / "text_emb_0.npy", np.ones((3000, D), np.float16))
    with pytest.raises(ShardError, match="4 images shards but 1"):
        build_index(root / "img_emb", few, out=out, **KW)
    with pytest.raises(BuildError, match="nlist=20000 is larger"):
        build_index(root / "img_emb", None, out=out, **{**KW, "nlist": 20_000})
    with pytest.raises(BuildError, match="train_size=10 is smaller than nlist"):
        build_index(root / "img_emb", None, out=out, **{**KW, "train_size": 10})
    with pytest.raises(BuildError, match="codec"):
        build_index(root / "img_emb", None, out=out, **{**KW, "codec": "pq"})
    with pytest.raises(BuildError, match="cannot read memory size"):
        build_index(root / "img_emb", None, out=out, **{**KW, "memory_budget": "lots"})
    with pytest.raises(BuildError, match="is a folder"):
        build_index(root / "img_emb", None, out=tmp_path, **KW)
    with pytest.raises(BuildError, match="too small"):
        build_index(
            root / "img_emb", None, out=out, **{**KW, "batch_size": None, "memory_budget": "8MB"}
        )
    for bad in ({"seed": -1}, {"nlist": 0}, {"batch_size": 0}, {"progress": "yes"}):
        with pytest.raises(BuildError):
            build_index(root / "img_emb", None, out=out, **{**KW, **bad})
    assert not out.exists()


def test_parse_memory():
    assert parse_memory("4GB") == 4 << 30 and parse_memory("512MB") == 512 << 20
    assert parse_memory("1.5g") == 3 << 29 and parse_memory("64MiB") == 64 << 20
    assert parse_memory("1000") == 1000 and parse_memory(123) == 123 and parse_memory(None) is None
    for bad in ("", "GB", "-1GB", "4 XB", 0, -5, True):
        with pytest.raises(BuildError):
            parse_memory(bad)


# -- the command line --------------------------------------------------------------------------


def test_cli_build_index(coll, reference, tmp_path, capsys):
    from mudg_fast.cli import main

    root = coll[0]
    out = tmp_path / "cli.ivf"
    rc = main(
        [
            "build-index",
            "--images_dir",
            str(root / "img_emb"),
            "--captions_dir",
            str(root / "text_emb"),
            "--out",
            str(out),
            "--nlist",
            str(NLIST),
            "--train_size",
            str(TRAIN),
            "--batch_size",
            "1000",
            "--no_progress",
        ]
    )
    assert rc == 0 and out.read_bytes() == reference[1]
    rc = main(
        [
            "build-index",
            "--embeddings",
            str(root),
            "--index_path",
            str(tmp_path / "x.ivf"),
            "--nlist",
            "8",
            "--memory_budget",
            "lots",
            "--no_progress",
        ]
    )
    assert rc == 2 and "cannot read memory size" in capsys.readouterr().err
    rc = main(
        [
            "build-index",
            "--embeddings",
            str(tmp_path / "nothing"),
            "--index_path",
            str(tmp_path / "x.ivf"),
            "--nlist",
            "8",
            "--no_progress",
        ]
    )
    assert rc == 2 and "does not exist" in capsys.readouterr().err


# -- bounded memory ----------------------------------------------------------------------------


_RSS_SCRIPT = """
import json, sys
from mudg_fast.build import build_index, plan_build
from mudg_fast.shards import EmbeddingShards

def status(key):  # VmHWM: peak RSS of this address space (ru_maxrss would include the parent's)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

root, out, budget, batch = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
kw = dict(nlist=256, codec="sq8", train_size=20_000, memory_budget=budget,
          batch_size=None if batch == "auto" else int(batch))
plan = plan_build(EmbeddingShards(root + "/img_emb"), paired=False, **kw)
base = status("VmRSS")  # conservative: the import peak may have been higher
ix = build_index(root + "/img_emb", None, out=out, progress=False, **kw)
peak = status("VmHWM")
print(json.dumps(dict(extra=peak - base, index=ix.memory_bytes() + ix.nlist * ix.dim * 4,
                      batch_rows=plan.batch_rows, batch_bytes=plan.batch_bytes,
                      planned_peak=plan.peak_bytes)))
"""


@pytest.fixture(scope="module")
def rss_collection(tmp_path_factory):
    """200k x 128 float16 vectors in two shards."""
    from mudg_fast.shards import write_collection

    root = tmp_path_factory.mktemp("rss")
    x = mudg_fast.datasets.clustered_unit_vectors(
        200_000, 128, n_clusters=500, seed=3, dtype=np.float16
    )
    write_collection(root, x, shard_rows=100_000, dtype=np.float16)
    return root


def _measure(root, out, budget, batch):
    r = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(root), str(out), budget, batch],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    print(
        f"budget {budget}, batch {m['batch_rows']} rows ({m['batch_bytes'] / 2**20:.1f} MiB): peak RSS "
        f"above baseline {m['extra'] / 2**20:.1f} MiB; index {m['index'] / 2**20:.1f} MiB; planned peak "
        f"{m['planned_peak'] / 2**20:.1f} MiB"
    )
    return m


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_is_the_index_plus_one_batch(rss_collection, tmp_path):
    m = _measure(rss_collection, tmp_path / "o.ivf", "112MB", "auto")
    assert m["batch_rows"] < 100_000  # shards are streamed, not loaded whole
    assert m["extra"] <= 1.10 * (m["index"] + m["batch_bytes"])  # the target
    assert m["extra"] <= m["planned_peak"] <= parse_memory("112MB")  # the up-front estimate holds


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_with_a_small_explicit_batch_stays_under_the_plan(rss_collection, tmp_path):
    # With small batches the allocator's slack on the growing lists (not the batch) dominates;
    # the plan counts it (GROWTH_SLACK), so the printed peak is still an upper bound.
    m = _measure(rss_collection, tmp_path / "o.ivf", "1GB", "16384")
    assert m["batch_rows"] == 16384
    assert m["extra"] <= m["planned_peak"]


def test_progress_without_tqdm_and_collection_root(coll, reference, tmp_path, monkeypatch, capsys):
    from mudg_fast.cli import main

    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    out = tmp_path / "p.ivf"
    # --embeddings may name a clip-retrieval output folder: its img_emb/ is used
    rc = main(
        [
            "build-index",
            "--embeddings",
            str(coll[0]),
            "--captions_dir",
            str(coll[0] / "text_emb"),
            "--index_path",
            str(out),
            "--nlist",
            str(NLIST),
            "--train_size",
            str(TRAIN),
            "--batch_size",
            "1000",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0 and out.read_bytes() == reference[1]
    assert "memory: index" in err and "disk: index file" in err and "time (measured" in err
    assert f"{N:,}/{N:,} vectors (100.0%)" in err  # the plain progress line replaces tqdm
