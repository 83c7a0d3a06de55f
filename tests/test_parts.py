"""Index parts: ShardedIndex searches them as one index, merge_parts writes that one index's file."""

import json
import os

import numpy as np
import pytest

from mudg_fast import IVFIndex
from mudg_fast.parts import PartError, ShardedIndex, merge_parts, merge_topk, part_metadata
from shard_helpers import noisy_pairs

N, D, NLIST = 6_000, 19, 24
CUTS = [0, 2_000, 2_003, 2_016, 4_321, N]  # a 3-vector part; parts that end mid-block and on one
CODECS = ["f32", "f16", "sq8", "sq4"]


@pytest.fixture(scope="module")
def data():
    images, captions = noisy_pairs(N, D, seed=4)
    return images, captions


def _trained(images, codec, **quantizer):
    return IVFIndex(D, NLIST, codec=codec, **quantizer).train(images[::3], seed=1)


def _write_parts(folder, images, codec, cuts=CUTS, meta=None, **quantizer):
    """Parts of one training holding rows [cuts[i], cuts[i+1]) under their row numbers as ids, and
    the whole index; returns (whole, paths). ``quantizer``: IVFIndex's quantizer options."""
    base = _trained(images, codec, **quantizer)
    folder.mkdir(parents=True, exist_ok=True)
    base.save(folder.parent / f"trained_{codec}.ivf")
    whole = IVFIndex.load(folder.parent / f"trained_{codec}.ivf", mmap=False).add(images)
    paths = []
    n_parts = len(cuts) - 1
    for i in range(n_parts):
        p = IVFIndex.load(folder.parent / f"trained_{codec}.ivf", mmap=False)
        p.add(images[cuts[i]:cuts[i + 1]], ids=np.arange(cuts[i], cuts[i + 1]))
        p.set_metadata({**(meta or {}), "part": part_metadata(i, n_parts, (cuts[i], cuts[i + 1]), p.fingerprint)})
        paths.append(folder / f"part-{i:05d}.ivf")
        p.save(paths[-1])
    return whole, paths


def _same(a, b):
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0].view(np.int32), b[0].view(np.int32))  # score bits


# -- search ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_sharded_search_is_identical_to_one_index(data, tmp_path, codec):
    images, captions = data
    whole, paths = _write_parts(tmp_path / "p", images, codec)
    sharded = ShardedIndex(tmp_path / "p")
    assert sharded.ntotal == N and len(sharded.parts) == len(CUTS) - 1 and sharded.nlist == NLIST
    assert sharded.fingerprint == whole.fingerprint and sharded.codec == codec
    np.testing.assert_array_equal(sharded.id_ranges, np.c_[CUTS[:-1], CUTS[1:]])
    np.testing.assert_array_equal(sharded.list_sizes(), whole.list_sizes())
    q = captions[::29]
    for nprobe in (1, 3, 8, NLIST, 10 * NLIST):
        for k in (1, 10, 50):  # k > the 3-vector part
            for mode in ("auto", "list_major", "per_query"):
                _same(sharded.search(q, k, nprobe=nprobe, mode=mode), whole.search(q, k, nprobe=nprobe, mode=mode))
    for nprobe in (2, NLIST):  # k > every vector: padded with (-inf, -1) exactly as one index pads
        _same(sharded.search(q[:20], N + 7, nprobe=nprobe), whole.search(q[:20], N + 7, nprobe=nprobe))
    # single query (1-D), empty batch, and the two stages separately
    _same(sharded.search(q[0], 5), whole.search(q[0], 5))
    assert sharded.search(q[:0], 5)[1].shape == (0, 5)
    _, lists = sharded.probe(q, 4)
    _same(sharded.search_probed(q, 12, lists), whole.search_probed(q, 12, lists))


def test_sharded_search_is_identical_at_every_thread_count(data, tmp_path):
    images, captions = data
    whole, paths = _write_parts(tmp_path / "p", images, "sq4")
    q = captions[::7]
    want = whole.search(q, 20, nprobe=6)
    for threads in (1, 2, 3):
        _same(ShardedIndex(paths, num_threads=threads).search(q, 20, nprobe=6), want)


def test_parts_in_any_order_objects_and_files_without_part_metadata(data, tmp_path):
    images, captions = data
    whole, paths = _write_parts(tmp_path / "p", images, "sq8")
    q = captions[::13]
    want = whole.search(q, 15, nprobe=5)
    shuffled = [paths[3], paths[0], paths[4], paths[2], paths[1]]
    sh = ShardedIndex(shuffled, mmap=False, verify=True)
    assert sh.paths == paths  # ordered by ids
    _same(sh.search(q, 15, nprobe=5), want)
    # in-memory objects without any part metadata: id ranges come from the ids they hold
    objs = [IVFIndex.load(p, mmap=False) for p in shuffled]
    for o in objs:
        o.set_metadata({})
    sh = ShardedIndex(objs)
    np.testing.assert_array_equal(sh.id_ranges, np.c_[CUTS[:-1], CUTS[1:]])
    _same(sh.search(q, 15, nprobe=5), want)
    assert sh.paths == [None] * 5


def test_reconstruct_and_metadata(data, tmp_path):
    images, _ = data
    whole, paths = _write_parts(tmp_path / "p", images, "f16", meta={"source": {"ntotal": N}})
    sh = ShardedIndex(tmp_path / "p")
    ids = np.array([0, N - 1, 2_001, 2_002, 1_999, 4_321, 17])
    np.testing.assert_array_equal(sh.reconstruct(ids), whole.reconstruct(ids))
    np.testing.assert_array_equal(sh.reconstruct(5), whole.reconstruct(5))
    with pytest.raises(ValueError, match=f"id {N} is not in the index"):
        sh.reconstruct([3, N])
    with pytest.raises(ValueError):
        sh.reconstruct([-1])
    assert sh.metadata == {"source": {"ntotal": N}}  # the common part, without "part"
    assert sh.parts[1].metadata["part"]["ids"] == [2_000, 2_003]


def test_merge_topk_of_per_part_scans_equals_the_whole(data, tmp_path):
    """The fan-out route (each part scanned on its own, merged on the driver) is identical too."""
    images, captions = data
    whole, paths = _write_parts(tmp_path / "p", images, "sq8")
    q = captions[::11]
    for k in (1, 9, 64):
        _, lists = whole.probe(q, 5)
        per_part = [IVFIndex.load(p).search_probed(q, k, lists) for p in paths]
        _same(merge_topk([r[0] for r in per_part], [r[1] for r in per_part], k), whole.search(q, k, nprobe=5))
    with pytest.raises(ValueError, match="one \\(scores, ids\\) pair"):
        merge_topk([], [], 3)


# -- merge --------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["f32", "sq4"])
def test_parts_with_a_two_level_quantizer(data, tmp_path, codec):
    """A two-level coarse quantizer (an approximate one: 2 of 5 cells) travels with every part:
    the parts search and merge exactly as the one index that holds every vector."""
    images, captions = data
    two_level = {"quantizer": "two_level", "quantizer_cells": 5, "quantizer_probe": 2}
    whole, paths = _write_parts(tmp_path / "p", images, codec, **two_level)
    assert whole.quantizer == "two_level"
    flat_lists = IVFIndex(D, NLIST, codec=codec).set_centroids(whole.centroids).probe(captions[::29], 3)[1]
    sharded = ShardedIndex(tmp_path / "p")
    q = captions[::29]
    _, lists = sharded.probe(q, 3)
    np.testing.assert_array_equal(lists, whole.probe(q, 3)[1])
    assert (lists != flat_lists).any()  # the quantizer is approximate here: its own choice counts
    for nprobe in (1, 3, NLIST):
        for mode in ("list_major", "per_query"):
            _same(sharded.search(q, 10, nprobe=nprobe, mode=mode), whole.search(q, 10, nprobe=nprobe, mode=mode))
    whole.save(tmp_path / "whole.ivf")
    merge_parts(tmp_path / "p", tmp_path / "merged.ivf")
    assert (tmp_path / "merged.ivf").read_bytes() == (tmp_path / "whole.ivf").read_bytes()
    _same(IVFIndex.load(tmp_path / "merged.ivf").search(q, 10, nprobe=3), whole.search(q, 10, nprobe=3))


@pytest.mark.parametrize("codec", CODECS)
def test_merge_parts_bytes_equal_one_index(data, tmp_path, codec):
    images, _ = data
    meta = {"source": {"img_emb": "/x/img_emb", "ntotal": N, "dim": D, "dtype": "float16"}}
    whole, paths = _write_parts(tmp_path / "p", images, codec, meta=meta)
    whole.set_metadata(meta)
    whole.save(tmp_path / "whole.ivf")
    merged = merge_parts(tmp_path / "p", tmp_path / "merged.ivf")
    assert (tmp_path / "merged.ivf").read_bytes() == (tmp_path / "whole.ivf").read_bytes()
    assert merged.ntotal == N and merged.metadata == meta
    # a list of paths in any order, or an open ShardedIndex, give the same file; one thread too
    merge_parts(paths[::-1], tmp_path / "m2.ivf", num_threads=1)
    assert (tmp_path / "m2.ivf").read_bytes() == (tmp_path / "whole.ivf").read_bytes()
    merge_parts(ShardedIndex(paths), tmp_path / "m3.ivf", metadata={"mine": 1})
    assert IVFIndex.load(tmp_path / "m3.ivf").metadata == {"mine": 1}


def test_merge_of_block_aligned_and_single_parts(data, tmp_path):
    images, _ = data
    for cuts in ([0, N], [0, 16, 32, 48, N], [0, 1, 2, 3, N]):
        folder = tmp_path / f"c{len(cuts)}_{cuts[1]}"
        whole, paths = _write_parts(folder, images, "sq4", cuts=cuts)
        whole.save(folder.parent / "w.ivf")
        merge_parts(folder, folder.parent / "m.ivf")
        assert (folder.parent / "m.ivf").read_bytes() == (folder.parent / "w.ivf").read_bytes()


# -- errors -------------------------------------------------------------------------------------


def test_parts_trained_differently_are_refused_by_name(data, tmp_path):
    images, _ = data
    _, paths = _write_parts(tmp_path / "a", images, "sq8")
    other = IVFIndex(D, NLIST, codec="sq8").train(images[1::3], seed=2)
    other.add(images[:10], ids=np.arange(10_000, 10_010))
    other.save(tmp_path / "other.ivf")
    with pytest.raises(PartError, match=r"other\.ivf.*trained differently"):
        ShardedIndex([paths[0], tmp_path / "other.ivf"])
    with pytest.raises(PartError, match=r"other\.ivf.*trained differently"):
        merge_parts([paths[0], tmp_path / "other.ivf"], tmp_path / "m.ivf")
    # same centroids, other codec parameters
    same_cent = IVFIndex(D, NLIST, codec="sq8").set_centroids(IVFIndex.load(paths[0]).centroids)
    same_cent.train_codec(images[:100]).add(images[:5], ids=np.arange(20_000, 20_005))
    same_cent.save(tmp_path / "codec.ivf")
    with pytest.raises(PartError, match=r"codec\.ivf was trained differently"):
        ShardedIndex([paths[0], tmp_path / "codec.ivf"])
    f16 = IVFIndex(D, NLIST, codec="f16").set_centroids(IVFIndex.load(paths[0]).centroids)
    f16.save(tmp_path / "f16.ivf")
    with pytest.raises(PartError, match=r"f16\.ivf.*codec f16"):
        ShardedIndex([paths[0], tmp_path / "f16.ivf"])
    assert not (tmp_path / "m.ivf").exists()


def test_overlapping_missing_and_duplicate_parts(data, tmp_path):
    images, _ = data
    _, paths = _write_parts(tmp_path / "a", images, "f16")
    _, overlap = _write_parts(tmp_path / "b", images, "f16", cuts=[0, 2_500, N])
    # overlap[0] holds [0, 2500): overlaps part 0 of the other set (and is part 0 of 2)
    with pytest.raises(PartError, match="disagree on how many parts"):
        ShardedIndex([paths[0], overlap[1]])
    bare = IVFIndex.load(overlap[0], mmap=False)
    bare.set_metadata({})
    bare.save(tmp_path / "bare.ivf")
    with pytest.raises(PartError, match="bare.ivf has no 'part' metadata"):
        ShardedIndex([paths[1], tmp_path / "bare.ivf"])
    objs = [IVFIndex.load(paths[0], mmap=False), IVFIndex.load(tmp_path / "bare.ivf", mmap=False)]
    objs[0].set_metadata({})
    with pytest.raises(PartError, match=r"holds ids \[0, 2000\).*holds \[0, 2500\): the id ranges overlap"):
        ShardedIndex(objs)
    os.unlink(paths[2])
    with pytest.raises(PartError, match=r"part 2 of 5 is missing from .*a; finish the build"):
        ShardedIndex(tmp_path / "a")
    with pytest.raises(PartError, match="part 2 of 5 is missing"):
        merge_parts(tmp_path / "a", tmp_path / "m.ivf")
    with pytest.raises(PartError, match="part 1 appears twice"):
        ShardedIndex([paths[0], paths[1], paths[1], paths[3], paths[4]])
    with pytest.raises(FileNotFoundError, match="part-00002.ivf does not exist"):
        ShardedIndex(paths)
    # a part whose metadata does not match what it holds
    lying = IVFIndex.load(paths[0], mmap=False)
    meta = lying.metadata
    meta["part"]["ids"] = [0, 1_999]
    lying.set_metadata(meta)
    with pytest.raises(PartError, match=r"says it holds ids \[0, 1999\) but holds 2000 vectors"):
        ShardedIndex([lying])


def test_truncated_or_corrupt_parts_are_named(data, tmp_path):
    images, _ = data
    _, paths = _write_parts(tmp_path / "a", images, "sq4")
    good = paths[3].read_bytes()
    paths[3].write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"part-00003\.ivf' is truncated"):
        ShardedIndex(tmp_path / "a")
    with pytest.raises(ValueError, match=r"part-00003\.ivf' is truncated"):
        merge_parts(tmp_path / "a", tmp_path / "m.ivf")
    bad = bytearray(good)
    bad[-200] ^= 0x21  # list data near the end (an id)
    paths[3].write_bytes(bytes(bad))
    with pytest.raises(ValueError, match=r"part-00003\.ivf' is corrupted \(list data checksum"):
        ShardedIndex(tmp_path / "a")  # verify=True by default
    ShardedIndex(tmp_path / "a", verify=False)  # opens: the list data is not read
    (tmp_path / "m.ivf").write_bytes(b"previous")
    with pytest.raises(ValueError, match=r"part-00003\.ivf' is corrupted \(list data checksum"):
        merge_parts(tmp_path / "a", tmp_path / "m.ivf")  # checked while merging
    assert (tmp_path / "m.ivf").read_bytes() == b"previous"  # left as it was
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.ivf")]  # no temporary left


def test_bad_arguments(data, tmp_path):
    images, _ = data
    _, paths = _write_parts(tmp_path / "a", images, "f32")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ShardedIndex(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PartError, match="holds no index parts"):
        ShardedIndex(tmp_path / "empty")
    with pytest.raises(PartError, match="is a file, not a folder"):
        ShardedIndex(paths[0])
    with pytest.raises(PartError, match="parts is empty"):
        ShardedIndex([])
    with pytest.raises(TypeError):
        ShardedIndex(3)
    with pytest.raises(TypeError, match="a part must be a path or an IVFIndex"):
        ShardedIndex([3])
    with pytest.raises(ValueError, match="num_threads"):
        ShardedIndex(paths, num_threads=0)
    with pytest.raises(ValueError, match="is one of the parts"):
        merge_parts(paths, paths[2])
    with pytest.raises(ValueError, match="is a folder"):
        merge_parts(paths, tmp_path)
    with pytest.raises(TypeError, match="merges part files"):
        merge_parts(ShardedIndex([IVFIndex.load(p) for p in paths]), tmp_path / "x.ivf")
    sh = ShardedIndex(paths)
    q = images[:3]
    with pytest.raises(ValueError, match="k must be >= 1"):
        sh.search(q, 0)
    with pytest.raises(ValueError, match="queries has 5 dimensions"):
        sh.search(images[:3, :5], 3)
    with pytest.raises(ValueError, match="rerank needs source"):
        sh.search(q, 3, rerank=10)
    with pytest.raises(ValueError, match="mode must be"):
        sh.search(q, 3, mode="fast")
    with pytest.raises(ValueError, match="more than once"):
        sh.search_probed(q, 3, np.array([[1, 1]] * 3))
    with pytest.raises(ValueError, match=r"in \[-1, 24\)"):
        sh.search_probed(q, 3, np.full((3, 2), 24))


def test_rerank_over_parts_equals_one_index(data, tmp_path):
    images, captions = data
    whole, paths = _write_parts(tmp_path / "a", images, "sq4")
    q = captions[::31]
    _same(ShardedIndex(paths).search(q, 10, nprobe=4, rerank=40, source=images),
          whole.search(q, 10, nprobe=4, rerank=40, source=images))


def test_part_metadata_is_json():
    m = part_metadata(2, 5, (10, 20), "00ff")
    assert json.loads(json.dumps(m)) == {"number": 2, "count": 5, "ids": [10, 20], "fingerprint": "00ff"}
