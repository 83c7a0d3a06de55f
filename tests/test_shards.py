"""Reading the clip-retrieval / LAION shard layout: ids, batches, fetches, metadata, validation."""

import numpy as np
import pytest

from mudg_fast.shards import (
    EmbeddingShards,
    MetadataShards,
    ShardError,
    check_aligned,
    fetch_embeddings,
    fetch_metadata,
    gather,
    open_collection,
    read_npy_header,
    sample_ids,
    write_collection,
)
from shard_helpers import make_collection


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("coll")
    return make_collection(root, n=2_500, d=20, shard_rows=700, metadata=True)


def test_layout_ids_follow_shard_order(collection):
    root, images, captions = collection
    c = open_collection(root)
    assert (
        c.ntotal == 2_500
        and c.images.dim == 20
        and c.captions is not None
        and c.metadata is not None
    )
    assert [s.rows for s in c.images.shards] == [700, 700, 700, 400]
    assert [s.offset for s in c.images.shards] == [0, 700, 1400, 2100]
    assert all(s.dtype == np.float16 for s in c.images.shards)
    # every row, read batch by batch, is the stored row with that global id
    got = np.concatenate([x.copy() for _, _, x in c.images.iter_batches(256)])
    np.testing.assert_array_equal(got, images)
    c.close()


def test_lexicographic_order_defines_global_ids(tmp_path):
    # clip-retrieval names are not zero padded: "x_10.npy" sorts before "x_2.npy"
    folder = tmp_path / "img_emb"
    folder.mkdir()
    for i in (0, 1, 2, 10):
        np.save(folder / f"img_emb_{i}.npy", np.full((3, 4), i, dtype=np.float32))
    (folder / "notes.txt").write_text("ignored")
    s = EmbeddingShards(folder)
    assert [sh.name for sh in s.shards] == [
        "img_emb_0.npy",
        "img_emb_1.npy",
        "img_emb_10.npy",
        "img_emb_2.npy",
    ]
    np.testing.assert_array_equal(s.fetch([0, 3, 6, 9])[:, 0], [0, 1, 10, 2])


def test_batches_never_span_shards_and_respect_size(collection):
    root, images, _ = collection
    with EmbeddingShards(root / "img_emb") as s:
        seen = 0
        for shard, first, x in s.iter_batches(300):
            sh = s.shards[shard]
            assert x.dtype == np.float32 and x.flags.c_contiguous
            assert x.shape[0] <= 300 and sh.offset <= first and first + x.shape[0] <= sh.stop
            assert first == seen
            np.testing.assert_array_equal(x, images[first : first + x.shape[0]])
            seen += x.shape[0]
        assert seen == s.ntotal
        assert not s._maps  # every shard's map was closed after its batches


def test_read_into_buffer_and_fp16_conversion(collection):
    root, images, _ = collection
    with EmbeddingShards(root / "img_emb") as s:
        buf = np.empty((500, s.dim), dtype=np.float32)
        x = s.read(1, 100, 450, out=buf)
        assert np.shares_memory(x, buf) and x.shape == (350, 20)
        np.testing.assert_array_equal(x, images[800:1150])
        with pytest.raises(ValueError, match="at least 600 rows"):
            s.read(0, 0, 600, out=buf)
        with pytest.raises(IndexError):
            s.read(3, 0, 401)


def test_fetch_by_global_id_any_order_with_repeats(collection):
    root, images, captions = collection
    ids = np.array([2499, 0, 700, 699, 1400, 5, 5, 2100])
    np.testing.assert_array_equal(fetch_embeddings(root / "img_emb", ids), images[ids])
    np.testing.assert_array_equal(fetch_embeddings(root / "text_emb", ids), captions[ids])
    with EmbeddingShards(root / "img_emb") as s:
        assert s.fetch([]).shape == (0, 20)
        for bad in (-1, 2500):
            with pytest.raises(IndexError, match=str(bad)):
                s.fetch([3, bad])
        with pytest.raises(TypeError):
            s.fetch([0.5])


def test_gather_and_sample(collection):
    root, images, _ = collection
    ids = sample_ids(2500, 300, seed=7)
    assert ids.shape == (300,) and np.all(np.diff(ids) > 0) and ids[0] >= 0 and ids[-1] < 2500
    np.testing.assert_array_equal(ids, sample_ids(2500, 300, seed=7))
    assert not np.array_equal(ids, sample_ids(2500, 300, seed=8))
    assert ids[-1] > 2100  # a random sample over all shards, not the first rows
    assert sample_ids(10, 50, seed=0).tolist() == list(range(10))
    with EmbeddingShards(root / "img_emb") as s:
        np.testing.assert_array_equal(gather(s, ids), images[ids])
        with pytest.raises(ValueError, match="sorted"):
            gather(s, ids[::-1])


def test_metadata_by_global_id(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    root, _, _ = make_collection(tmp_path, n=1_000, d=8, shard_rows=300, metadata=True)
    # rewrite one shard with small row groups, so that fetches have to pick groups
    f = sorted((root / "metadata").iterdir())[1]
    pq.write_table(pq.read_table(f), f, row_group_size=37)
    meta = MetadataShards(root / "metadata", EmbeddingShards(root / "img_emb"))
    ids = np.array([999, 0, 301, 450, 598, 301, 650])
    t = meta.fetch(ids)
    assert t.column("key").to_pylist() == ids.tolist()
    assert t.column("url").to_pylist() == [f"https://example.org/{i}.jpg" for i in ids]
    t2 = fetch_metadata(root / "metadata", ids, columns=["caption"])
    assert (
        t2.column_names == ["caption"]
        and t2.column("caption").to_pylist()[0] == "caption number 999"
    )
    assert meta.fetch([]).num_rows == 0
    with pytest.raises(IndexError):
        meta.fetch([1000])
    assert isinstance(t, pa.Table)


# -- validation: every broken input names the offending file ------------------------------------


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        EmbeddingShards(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="no .npy shards"):
        EmbeddingShards(tmp_path / "empty")
    (tmp_path / "file.npy").write_bytes(b"")
    with pytest.raises(ShardError, match="not a folder"):
        EmbeddingShards(tmp_path / "file.npy")


@pytest.mark.parametrize(
    "damage", ["garbage", "truncated", "header_only", "ints", "three_d", "fortran"]
)
def test_damaged_shards_are_named(tmp_path, damage):
    folder = tmp_path / "img_emb"
    folder.mkdir()
    np.save(folder / "a_0.npy", np.ones((10, 6), np.float16))
    bad = folder / "a_1.npy"
    if damage == "garbage":
        bad.write_bytes(b"this is not an npy file at all")
        msg = "not a readable .npy"
    elif damage == "truncated":
        np.save(bad, np.ones((10, 6), np.float16))
        bad.write_bytes(bad.read_bytes()[:-7])
        msg = "truncated"
    elif damage == "header_only":
        bad.write_bytes(b"\x93NUMPY\x01\x00\x20\x00{'descr': '<f2', 'fortran_order'")
        msg = "not a readable .npy"
    elif damage == "ints":
        np.save(bad, np.ones((10, 6), np.int32))
        msg = "float16, float32"
    elif damage == "three_d":
        np.save(bad, np.ones((2, 5, 6), np.float16))
        msg = "2-D"
    else:
        np.save(bad, np.asfortranarray(np.ones((10, 6), np.float16)))
        msg = "Fortran"
    with pytest.raises(ShardError, match=msg) as e:
        EmbeddingShards(folder)
    assert "a_1.npy" in str(e.value)


def test_dim_mismatch_names_file(tmp_path):
    folder = tmp_path / "img_emb"
    folder.mkdir()
    np.save(folder / "a_0.npy", np.ones((4, 6), np.float32))
    np.save(folder / "a_1.npy", np.ones((4, 7), np.float32))
    with pytest.raises(ShardError, match=r"a_1.npy has dim 7 .*a_0.npy has dim 6"):
        EmbeddingShards(folder)


def test_nan_rows_are_reported_with_their_id(tmp_path):
    folder = tmp_path / "img_emb"
    folder.mkdir()
    np.save(folder / "a_0.npy", np.ones((4, 3), np.float16))
    x = np.ones((5, 3), np.float16)
    x[3, 1] = np.nan
    np.save(folder / "a_1.npy", x)
    with EmbeddingShards(folder) as s:
        with pytest.raises(ShardError, match=r"a_1.npy row 3 \(global id 7\)"):
            list(s.iter_batches(2))
        with pytest.raises(ShardError, match="global id 7"):
            gather(s, np.arange(9))


def test_alignment_checks(tmp_path):
    root = tmp_path
    for name, shards in (
        ("img_emb", [(0, 5), (1, 6)]),
        ("text_emb", [(0, 5), (1, 6)]),
        ("bad_rows", [(0, 5), (1, 7)]),
        ("bad_count", [(0, 11)]),
        ("bad_keys", [(0, 5), (2, 6)]),
    ):
        (root / name).mkdir()
        for key, rows in shards:
            np.save(root / name / f"{name}_{key}.npy", np.ones((rows, 4), np.float16))
    (root / "bad_dim").mkdir()
    np.save(root / "bad_dim" / "x_0.npy", np.ones((5, 5), np.float16))
    np.save(root / "bad_dim" / "x_1.npy", np.ones((6, 5), np.float16))
    img = EmbeddingShards(root / "img_emb", label="images")
    check_aligned(img, EmbeddingShards(root / "text_emb", label="captions"))
    with pytest.raises(ShardError, match=r"bad_rows_1.npy has 7 rows .*img_emb_1.npy has 6"):
        check_aligned(img, EmbeddingShards(root / "bad_rows"))
    with pytest.raises(ShardError, match="2 images shards but 1"):
        check_aligned(img, EmbeddingShards(root / "bad_count"))
    with pytest.raises(
        ShardError, match=r"img_emb_1.npy pairs with .*bad_keys_2.npy.* numbers differ"
    ):
        check_aligned(img, EmbeddingShards(root / "bad_keys"))
    with pytest.raises(ShardError, match="dim 4 .* dim 5"):
        check_aligned(img, EmbeddingShards(root / "bad_dim"))


def test_metadata_must_match_shards(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, _, _ = make_collection(tmp_path, n=600, d=8, shard_rows=300, metadata=True)
    f = sorted((root / "metadata").iterdir())[1]
    pq.write_table(pa.table({"url": ["x"] * 299}), f)
    with pytest.raises(ShardError, match=r"metadata_1.parquet has 299 rows"):
        open_collection(root)
    f.write_bytes(b"PAR1 garbage")
    with pytest.raises(ShardError, match="metadata_1.parquet is not a readable parquet"):
        open_collection(root)


def test_read_npy_header_reads_only_the_header(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.zeros((7, 3), np.float32))
    shape, fortran, dtype, offset, size = read_npy_header(p)
    assert shape == (7, 3) and not fortran and dtype == np.float32 and size == offset + 7 * 3 * 4


def test_write_collection_round_trip(tmp_path, rng):
    x = rng.standard_normal((25, 5)).astype(np.float32)
    write_collection(tmp_path, x, x * 2, shard_rows=10, dtype=np.float32)
    assert sorted(p.name for p in (tmp_path / "img_emb").iterdir()) == [
        "img_emb_0.npy",
        "img_emb_1.npy",
        "img_emb_2.npy",
    ]
    c = open_collection(tmp_path)
    np.testing.assert_array_equal(c.images.fetch(np.arange(25)), x)
    np.testing.assert_array_equal(c.captions.fetch(np.arange(25)), 2 * x)
    with pytest.raises(ValueError):
        write_collection(tmp_path / "b", x, x[:3], shard_rows=10)
