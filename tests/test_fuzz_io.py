"""Property-based fuzzing of the file-facing API: embedding shards (EmbeddingShards, fetch,
gather, read, iter_batches, open_collection, fetch_embeddings, sample_ids), the index build
(parse_memory, plan_build, build_index) and the command line's argument validation.

Every call goes through ``fuzzing.attempt``: a returned result is checked against a plain numpy
reference; anything else must be a clear TypeError/ValueError (OSError for missing files), and a
command line error must exit with status 2 and a message, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from fuzzing import arguments, attempt, examples, mostly, raised
from hypothesis import given
from hypothesis import strategies as st
from mudg_fast.build import BuildError, build_index, default_train_size, parse_memory, plan_build
from mudg_fast.cli import main
from mudg_fast.shards import (
    EmbeddingShards,
    IdOutOfRangeError,
    ShardError,
    fetch_embeddings,
    gather,
    open_collection,
    sample_ids,
)

FILES = (TypeError, ValueError, OSError)
_counter = itertools.count()
ROWS = [4, 0, 7, 3]                    # rows per shard; one empty shard
DTYPES = [np.float16, np.float32, np.float32, np.float64]
N, D = sum(ROWS), 5


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """A clip-retrieval folder (img_emb + text_emb, four shards of mixed dtypes), the float32
    values as stored, and a few broken shard folders."""
    root = tmp_path_factory.mktemp("fuzz_collection")
    rng = np.random.default_rng(0)
    parts = []
    for i, (rows, dtype) in enumerate(zip(ROWS, DTYPES)):
        for name in ("img_emb", "text_emb"):
            x = rng.standard_normal((rows, D)).astype(dtype)
            (root / name).mkdir(exist_ok=True)
            np.save(root / name / f"{name}_{i}.npy", x)
            if name == "img_emb":
                parts.append(x.astype(np.float32))
    broken = {}
    for what, arr in {"3d": np.zeros((2, 3, 4), np.float32), "int": np.zeros((3, 2), np.int32),
                      "fortran": np.asfortranarray(np.ones((3, 2), np.float32)),
                      "zero dim": np.zeros((3, 0), np.float32), "1d": np.zeros(4, np.float32)}.items():
        folder = root / f"broken_{what.replace(' ', '_')}"
        folder.mkdir()
        np.save(folder / "x.npy", arr)
        broken[what] = folder
    for what, content in {"garbage": b"not a numpy file", "truncated": None, "empty": b""}.items():
        folder = root / f"broken_{what}"
        folder.mkdir()
        if content is None:
            np.save(folder / "x.npy", np.ones((50, 4), np.float32))
            data = (folder / "x.npy").read_bytes()
            (folder / "x.npy").write_bytes(data[: len(data) // 2])
        else:
            (folder / "x.npy").write_bytes(content)
        broken[what] = folder
    mixed = root / "broken_mixed_dims"
    mixed.mkdir()
    np.save(mixed / "a.npy", np.ones((2, 3), np.float32))
    np.save(mixed / "b.npy", np.ones((2, 4), np.float32))
    broken["mixed dims"] = mixed
    (root / "broken_no_shards").mkdir()
    broken["no shards"] = root / "broken_no_shards"
    misaligned = root / "misaligned_captions"
    misaligned.mkdir()
    np.save(misaligned / "text_emb_0.npy", np.ones((N - 1, D), np.float32))
    return root, np.concatenate(parts), broken, misaligned


@st.composite
def id_arrays(draw):
    """Ids as a careless caller passes them: in and out of range, floats, unsorted, repeated,
    uint64 beyond int64, bools, 2-D, scalars, empty, strings."""
    kind = draw(st.sampled_from(["ok"] * 6 + ["sorted"] * 3 + ["range", "float", "uint64", "bool", "2d", "scalar",
                                                                "empty", "str", "object", "list"]))
    valid = st.integers(0, N - 1)
    if kind in ("ok", "sorted", "list"):
        ids = draw(st.lists(valid, max_size=10))
        if kind == "sorted":
            ids = sorted(ids)
        a = ids if kind == "list" else np.asarray(ids, dtype=draw(st.sampled_from([np.int64, np.int32, np.uint16])))
        return a, kind
    if kind == "range":
        return np.asarray(draw(st.lists(st.one_of(valid, st.sampled_from([-1, -N, N, N + 5, 2**40])),
                                        min_size=1, max_size=6))), kind
    return {"float": np.array([1.0, 2.5]), "uint64": np.array([1, 2**64 - 1], np.uint64),
            "bool": np.array([True, False]), "2d": np.array([[0, 1], [2, 3]]), "scalar": np.int64(draw(valid)),
            "empty": np.array([], dtype=draw(st.sampled_from([np.int64, np.float64]))), "str": np.array(["1", "2"]),
            "object": np.array([1, 2], dtype=object)}[kind], kind


def expected_rows(ids, X):
    """X[ids] for the ids fetch accepts, else None (it must raise)."""
    a = np.asarray(ids)
    if a.size == 0:
        return np.zeros((0, X.shape[1]), np.float32)
    if a.dtype.kind not in "iu":
        return None
    flat = a.reshape(-1)
    if a.dtype.kind == "u" and flat.max() > 2**63 - 1:
        return None
    flat = flat.astype(np.int64)
    if flat.min() < 0 or flat.max() >= len(X):
        return None
    return X[flat]


@examples(400)
@given(id_arrays())
def test_fetch_and_gather_hostile_ids(collection, ids_kind):
    root, X, _, _ = collection
    ids, kind = ids_kind
    with EmbeddingShards(root / "img_emb") as shards:
        assert shards.ntotal == N and shards.dim == D
        want = expected_rows(ids, X)
        got = attempt(shards.fetch, ids)
        if want is None:
            assert raised(got), (kind, ids)
            assert not isinstance(got.exc, IndexError) or isinstance(got.exc, IdOutOfRangeError)
        else:
            np.testing.assert_array_equal(got, want)
        # gather: sorted 1-D integer ids only
        a = np.asarray(ids)
        sorted_1d = a.ndim == 1 and (a.size == 0 or (a.dtype.kind in "iu" and (np.diff(a.astype(np.int64)) >= 0).all()))
        g = attempt(gather, shards, ids)
        if want is None or not sorted_1d:
            assert raised(g), (kind, ids)
        else:
            np.testing.assert_array_equal(g, want)
        # a failed call leaves the folder usable and unchanged
        np.testing.assert_array_equal(shards.fetch([N - 1, 0, 5]), X[[N - 1, 0, 5]])
    fe = attempt(fetch_embeddings, root / "img_emb", ids)
    if want is None:
        assert raised(fe)
    else:
        np.testing.assert_array_equal(fe, want)


INT_JUNK = st.sampled_from([1.5, None, "1", True, float("nan"), 2**70, -2**70])


@st.composite
def row_ranges(draw):
    """(shard, start, stop): mostly a valid range of one shard, sometimes one value broken."""
    shard = draw(st.integers(0, len(ROWS) - 1))
    start = draw(st.integers(0, ROWS[shard]))
    stop = draw(st.integers(start, ROWS[shard]))
    values = [shard, start, stop]
    if draw(st.integers(0, 2)) == 0:
        values[draw(st.integers(0, 2))] = draw(st.one_of(INT_JUNK, st.sampled_from([-1, -5, 9, len(ROWS)])))
    return tuple(values)


@examples(300)
@given(row_ranges())
def test_read_rows_of_a_shard(collection, rng_args):
    root, X, _, _ = collection
    shard, start, stop = rng_args
    shards = EmbeddingShards(root / "img_emb")
    got = attempt(shards.read, shard, start, stop)
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (shard, start, stop))
    if not ints or not 0 <= shard < len(ROWS) or not 0 <= start <= stop <= ROWS[shard]:
        assert raised(got), (shard, start, stop)
        assert not isinstance(got.exc, IndexError) or isinstance(got.exc, IdOutOfRangeError)
    else:
        offset = sum(ROWS[:shard])
        np.testing.assert_array_equal(got, X[offset + start: offset + stop])
        buf = np.full((stop - start + 2, D), np.nan, np.float32)       # into a caller's buffer
        into = attempt(shards.read, shard, start, stop, out=buf)
        np.testing.assert_array_equal(into, got)
        assert np.shares_memory(into, buf) or len(into) == 0
    shards.close()


@examples(200)
@given(mostly(st.integers(1, 9), st.sampled_from([0, -1, 2.5, "3", None, True])),
       mostly(st.integers(0, 4), st.sampled_from([-1, 5, 1.0, None])))
def test_iter_batches_cover_the_shards(collection, batch_size, start_shard):
    root, X, _, _ = collection
    with EmbeddingShards(root / "img_emb") as shards:
        def collect():
            return [(i, first, x.copy()) for i, first, x in shards.iter_batches(batch_size, start_shard=start_shard)]

        out = attempt(collect, name="EmbeddingShards.iter_batches")
        ok_bs = isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1
        ok_start = isinstance(start_shard, int) and not isinstance(start_shard, bool) and 0 <= start_shard <= 4
        if not (ok_bs and ok_start):
            assert raised(out), (batch_size, start_shard)
            return
        first_id = sum(ROWS[:start_shard])
        assert all(0 < len(x) <= batch_size for _, _, x in out)
        assert [first for _, first, _ in out] == sorted(first for _, first, _ in out)
        rows = np.concatenate([x for _, _, x in out]) if out else np.zeros((0, D), np.float32)
        np.testing.assert_array_equal(rows, X[first_id:])
        for i, first, x in out:               # a batch never spans two shards
            assert sum(ROWS[:i]) <= first and first + len(x) <= sum(ROWS[: i + 1])


@examples(200)
@given(mostly(st.integers(0, 50), INT_JUNK), mostly(st.integers(0, 60), st.one_of(INT_JUNK, st.just(-1))),
       mostly(st.integers(0, 2**64), st.sampled_from([-1, 1.5, None, "0"])))
def test_sample_ids(ntotal, n, seed):
    out = attempt(sample_ids, ntotal, n, seed)
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (ntotal, n, seed))
    if not ok:
        assert raised(out), (ntotal, n, seed)
        return
    if ntotal > 2**63 - 1:
        assert raised(out), out             # ids beyond int64 cannot exist
        return
    assert out.dtype == np.int64 and len(out) == min(n, ntotal) and (np.diff(out) > 0).all()
    assert len(out) == 0 or (out[0] >= 0 and out[-1] < ntotal)
    np.testing.assert_array_equal(attempt(sample_ids, ntotal, n, seed), out)


@examples(60)
@given(st.sampled_from(["root", "root", "images only", "explicit", "missing root", "file root", "int root",
                        "misaligned", "nothing", "3d", "int", "fortran", "zero dim", "1d", "garbage", "truncated",
                        "empty", "mixed dims", "no shards"]))
def test_open_collection_and_broken_folders(collection, what):
    root, X, broken, misaligned = collection
    if what in broken:
        out = attempt(EmbeddingShards, broken[what], allowed=FILES)
        assert raised(out) and isinstance(out.exc, (ShardError, FileNotFoundError)), out
        out = attempt(fetch_embeddings, broken[what], [0], allowed=FILES)
        assert raised(out)
        return
    args = {"root": ((root,), {}), "images only": ((), {"images_dir": root / "img_emb"}),
            "explicit": ((), {"images_dir": root / "img_emb", "captions_dir": root / "text_emb"}),
            "missing root": ((root / "nope",), {}), "file root": ((root / "img_emb" / "img_emb_0.npy",), {}),
            "int root": ((3,), {}), "misaligned": ((), {"images_dir": root / "img_emb", "captions_dir": misaligned}),
            "nothing": ((), {})}[what]
    col = attempt(open_collection, *args[0], allowed=FILES, **args[1])
    if what in ("missing root", "file root", "int root", "misaligned", "nothing"):
        assert raised(col), what
        return
    with col:
        assert col.ntotal == N and col.images.dim == D
        np.testing.assert_array_equal(col.images.fetch(np.arange(N)), X)
        if what != "images only":
            assert col.captions is not None and col.captions.ntotal == N


# ---------------------------------------------------------------------------------------------
# sizes and build plans

UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def reference_memory(value):
    """The documented grammar: a positive int, or '<number> [k|m|g|t|p][b|ib]' in powers of 1024."""
    if isinstance(value, bool) or value is None:
        return None if value is None else BuildError
    if isinstance(value, (int, np.integer)):
        return int(value) if value > 0 else BuildError
    if not isinstance(value, str):
        return BuildError
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([kKmMgGtTpP]?)(?:[iI]?[bB])?\s*", value)
    if not m:
        return BuildError
    size = float(m.group(1)) * UNITS[m.group(2).lower()]
    return int(size) if np.isfinite(size) and size >= 1 else BuildError


sizes = st.one_of(
    st.builds(lambda num, unit, suf, sp: f"{sp}{num}{sp}{unit}{suf}{sp}",
              st.one_of(st.integers(0, 10**6).map(str), st.floats(0, 1e4).map(lambda f: f"{f:.3f}"),
                        st.sampled_from(["9" * 400, ".5", "1.", "0.0001", "007"])),
              st.sampled_from(["", "k", "K", "m", "M", "g", "G", "t", "p", "x"]),
              st.sampled_from(["", "b", "B", "ib", "iB", "bb"]), st.sampled_from(["", " ", "\t"])),
    st.integers(-5, 2**70), st.text(max_size=8),
    st.sampled_from([None, True, 1.5, float("nan"), float("inf"), "1e5", "-1GB", "inf", "nan", b"1GB", [1],
                     np.int64(4096), np.float64(1.0)]))


@examples(400)
@given(sizes)
def test_parse_memory_matches_grammar(value):
    out = attempt(parse_memory, value)
    want = reference_memory(value)
    if want is BuildError:
        assert raised(out) and isinstance(out.exc, BuildError), (value, out)
    else:
        assert out == want, (value, out, want)


PLAN_ARGS = {
    "nlist": (st.integers(1, N), st.sampled_from([0, -1, 2.5, None, "4"])),
    "codec": (st.sampled_from(["f32", "f16", "sq8", "sq4"]), st.sampled_from(["sq16", "", None, "F32", 8])),
    "train_size": (st.one_of(st.none(), st.integers(1, 40)), st.sampled_from([0, -3, 1.5, "10"])),
    "memory_budget": (st.one_of(st.none(), st.sampled_from(["1GB", "64 MiB", 2**33])),
                      st.sampled_from(["lots", -1, 0, "0.1b", 1.5, "1kb"])),
    "batch_size": (st.one_of(st.none(), st.integers(1, 20)), st.sampled_from([0, -1, 2.5])),
}


@examples(250)
@given(arguments(PLAN_ARGS), st.booleans())
def test_plan_build(collection, args, paired):
    root = collection[0]
    kwargs, broken = args
    with EmbeddingShards(root / "img_emb") as shards:
        plan = attempt(plan_build, shards, paired=paired, **kwargs)
    if broken:
        assert raised(plan), (broken, kwargs[broken])
        return
    assert not raised(plan), plan
    train = kwargs["train_size"]
    want_train = default_train_size(N, kwargs["nlist"]) if train is None else min(train, N)
    assert (plan.ntotal, plan.dim, plan.nlist, plan.codec, plan.train_size) == (N, D, kwargs["nlist"], kwargs["codec"],
                                                                               want_train)
    assert plan.n_shards == len(ROWS) and plan.paired == paired
    assert 1 <= plan.batch_rows <= max(ROWS) and plan.peak_bytes <= plan.memory_budget
    if kwargs["memory_budget"] is not None:
        assert plan.memory_budget == parse_memory(kwargs["memory_budget"])
    if kwargs["batch_size"] is not None:
        assert plan.batch_rows == min(kwargs["batch_size"], max(ROWS))


BUILD_ARGS = {
    "nlist": (st.integers(1, 4), st.sampled_from([0, N + 1, 2.0, None])),
    "codec": (st.sampled_from(["f32", "f16", "sq8", "sq4"]), st.sampled_from(["pq", None])),
    "seed": (st.integers(0, 2**40), st.sampled_from([-1, 1.5, None])),
    "max_iter": (st.integers(1, 5), st.sampled_from([0, -2, "5"])),
    "batch_size": (st.one_of(st.none(), st.integers(1, 8)), st.sampled_from([0, 1.5])),
    "train_size": (st.one_of(st.none(), st.integers(4, N)), st.sampled_from([0, -1, "x", 2.5])),
    "checkpoint_every": (st.one_of(st.none(), st.integers(0, 3)), st.sampled_from([-1, 0.5])),
    "memory_budget": (st.none(), st.sampled_from(["tiny", "1kb", -5])),
}


BUILD_ARGS["captions"] = (st.sampled_from([None, "captions"]), st.sampled_from(["misaligned", "missing"]))
BUILD_ARGS["out"] = (st.just("file"), st.sampled_from(["folder", "none"]))


@examples(20)
@given(arguments(BUILD_ARGS, valid_share=0.6))
def test_build_index_on_tiny_shards(collection, tmp_path_factory, args):
    root, X, _, misaligned = collection
    kwargs, broken = args
    folder = tmp_path_factory.getbasetemp() / "fuzz_builds"
    folder.mkdir(exist_ok=True)
    out = {"file": folder / f"ix{next(_counter)}.ivf", "folder": folder, "none": None}[kwargs.pop("out")]
    captions = kwargs.pop("captions")
    cap = {None: None, "captions": root / "text_emb", "misaligned": misaligned, "missing": root / "nope"}[captions]
    index = attempt(build_index, root / "img_emb", cap, out=out, progress=False, allowed=FILES, **kwargs)
    if broken:
        assert raised(index), (broken, kwargs.get(broken))
        assert out is None or out.is_dir() or not out.exists()        # nothing half-written is left
        return
    assert not raised(index), index
    assert index.ntotal == N and index.nlist == kwargs["nlist"] and index.codec == kwargs["codec"]
    rec = index.reconstruct(np.arange(N))
    if kwargs["codec"] == "f32":
        np.testing.assert_array_equal(rec, X)
    elif kwargs["codec"] == "f16":
        np.testing.assert_allclose(rec, X.astype(np.float16).astype(np.float32), atol=1e-6)
    assert sorted(np.concatenate([index.list_ids(i) for i in range(index.nlist)]).tolist()) == list(range(N))


# ---------------------------------------------------------------------------------------------
# the command line


def run_cli(argv):
    """(exit status, stderr) of ``mudg-fast argv``; an exception other than SystemExit fails."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            status = attempt(main, argv, name="cli.main", allowed=())
        except SystemExit as e:
            status = e.code
    return status, err.getvalue()


@pytest.fixture(scope="module")
def cli_world(collection, tmp_path_factory):
    root = collection[0]
    work = tmp_path_factory.mktemp("fuzz_cli")
    index = work / "index.ivf"
    status, err = run_cli(["build-index", "--embeddings", str(root / "img_emb"), "--out", str(index), "--nlist", "2",
                           "--no_progress"])
    assert status == 0, err
    np.save(work / "gt.npy", np.zeros((N, 3), np.int64))
    return root, work, index


NUMBERS = st.one_of(st.integers(-3, 20).map(str), st.sampled_from(["", "x", "2.5", "1e3", "-0", "99999999999999999999",
                                                                     "nan", " 4"]))


@st.composite
def command_lines(draw, root, work, index):
    """(argv, may_succeed): one command with one hostile value."""
    img, txt = str(root / "img_emb"), str(root / "text_emb")
    cmd = draw(st.sampled_from(["build-index"] * 3 + ["eval-index"] * 3 + ["augment", "retrieve", "select", "demo",
                                                                           "train", "eval", "junk"]))
    v = draw(NUMBERS)
    if cmd == "build-index":
        flag = draw(st.sampled_from(["--nlist", "--seed", "--max_iter", "--batch_size", "--num_threads",
                                     "--checkpoint_every", "--train_size", "--memory_budget", "--codec", "--nprobe"]))
        argv = ["build-index", "--embeddings", img, "--out", str(work / f"b{next(_counter)}.ivf"), "--no_progress"]
        argv += [] if flag == "--nlist" else ["--nlist", "2"]
        return argv + [flag, v], True
    if cmd == "eval-index":
        flag = draw(st.sampled_from(["--k", "--nprobes", "--num_queries", "--seed", "--num_threads", "--labels"]))
        if flag == "--nprobes":
            v = draw(st.sampled_from([v, "1,2", "1,,2", "0,1", "a,b", ",", "2," * 3]))
        argv = ["eval-index", "--index", str(index), "--queries", txt, "--report", str(work / "r.json")]
        argv += draw(st.sampled_from([["--database", img], ["--ground_truth", str(work / "gt.npy")],
                                      ["--ground_truth", str(work / "missing.npy")], []]))
        return argv + [flag, v], True
    bad = {
        # (every case fails before a CLIP model would be loaded)
        "augment": [["--classnames", ""], ["--classnames", "cat,cat"],
                    ["--classnames", "a,b", "--m", v if v.strip() in ("0", "-1", "-3", "x", "") else "0"],
                    ["--classnames", str(work)], ["--classnames", "a,b", "--template", "no placeholder"],
                    ["--classnames", "a,b", "--pool", str(work / "missing.txt")]],
        "retrieve": [["--index", str(work / "missing.ivf"), "--classnames", "a,b"],
                     ["--index", str(index), "--classnames", " , "],
                     ["--index", str(index), "--classnames", "a", "--descriptors", str(work / "missing.json")],
                     ["--index", str(index), "--classnames", "a", "--descriptors", str(work / "gt.npy"),
                      "--no_augmentation"],
                     ["--index", str(root / "img_emb" / "img_emb_0.npy"), "--classnames", "a,b"]],
        "select": [["--candidates", str(work / "missing.parquet")], ["--candidates", str(index)]],
        "demo": [["--n_images", v if v.lstrip("-").isdigit() and int(v) < 1000 else "0"], ["--nlist", "0"],
                 ["--n_classes", "300", "--n_concepts", "200"], ["--seed", "-1"], ["--n_concepts", "100000"],
                 ["--codec", "pq"]],
        "train": [["--iterations", v], []],
        "eval": [["--batch_size", v], []],
        "junk": [["--no-such-flag"], ["--nlist", v]],
    }[cmd]
    extra = draw(st.sampled_from(bad))
    outs = {"augment": ["--out", str(work / "a.json")], "retrieve": ["--out", str(work / "c.parquet")],
            "select": ["--out", str(work / "s.parquet")], "demo": ["--out", str(work / "demo")],
            "train": ["--out", str(work / "train")], "eval": [], "junk": []}[cmd]
    return ([] if cmd == "junk" else [cmd]) + extra + outs, False


@examples(60)
@given(st.data())
def test_cli_rejects_bad_arguments_with_status_2(cli_world, data):
    root, work, index = cli_world
    argv, may_succeed = data.draw(command_lines(root, work, index))
    status, err = run_cli(argv)
    if status == 0:
        assert may_succeed, (argv, err)
        if argv[0] == "eval-index":
            report = json.loads((work / "r.json").read_text())
            for r in report["results"].values():
                assert all(0.0 <= row["recall"] <= 1.0 for row in r["results"])
        elif argv[0] == "build-index":
            assert Path(argv[4]).exists()
        return
    assert status == 2, (argv, status, err)
    assert "error" in err and "Traceback" not in err, err
