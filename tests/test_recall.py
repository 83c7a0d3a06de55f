"""recall@k per nprobe, the recall plot, the modality-gap report and the eval-index command."""

import json

import numpy as np
import pytest

import mudg_fast
from mudg_fast import IVFIndex
from mudg_fast.recall import (
    RecallResult,
    evaluate_recall,
    exact_ground_truth,
    modality_gap,
    plot_recall,
    recall_at_k,
)
from mudg_fast.shards import EmbeddingShards, write_collection
from shard_helpers import noisy_pairs

D, NLIST = 19, 16


@pytest.fixture(scope="module")
def setup():
    images, captions = noisy_pairs(6_000, D, seed=4)
    ix = IVFIndex(D, NLIST, codec="f32").train(images, seed=0)
    ix.add(images)
    return ix, images, captions[:300]


def test_recall_at_k_by_hand():
    found = np.array([[1, 2, 3], [4, 5, 6], [7, 7, 8], [1, 2, 3]])
    truth = np.array([[3, 2, 9], [7, 8, -1], [7, 8, 9], [-1, -1, -1]])
    r = recall_at_k(found, truth)
    np.testing.assert_allclose(r[:3], [2 / 3, 0 / 2, 2 / 3])
    assert np.isnan(r[3])  # no true neighbour: not counted
    np.testing.assert_allclose(recall_at_k(found, truth, k=1), [0, 0, 1, np.nan])
    with pytest.raises(ValueError):
        recall_at_k(found[:2], truth)


def test_evaluate_recall_matches_a_hand_computation(setup):
    ix, images, q = setup
    res = evaluate_recall(ix, q, images, k=10, nprobes=(1, 2, 4, NLIST), min_seconds=0.05)
    _, exact = mudg_fast.knn(q, images, 10)
    for j, nprobe in enumerate((1, 2, 4, NLIST)):
        _, ids = ix.search(q, 10, nprobe=nprobe)
        hand = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), exact.tolist())])
        assert res.recall[j] == pytest.approx(hand, abs=1e-12)
        assert res[nprobe]["recall"] == res.recall[j]
        assert res.seconds[j] > 0 and res.qps[j] == pytest.approx(len(q) / res.seconds[j])
    assert res.recall[-1] == 1.0  # all lists probed, no quantisation: exact
    assert 0 < res.recall[0] < 1
    # probing more lists never loses a true neighbour (nested probe sets, exact scores)
    assert (np.diff(res.per_query, axis=0) >= 0).all()
    assert res.n_queries == 300 and res.k == 10 and res.nlist == NLIST


def test_ground_truth_instead_of_database(setup):
    ix, images, q = setup
    _, gt = mudg_fast.knn(q, images, 20)
    a = evaluate_recall(ix, q, ground_truth=gt, k=5, nprobes=[1, 3], min_seconds=0)
    b = evaluate_recall(ix, q, images, k=5, nprobes=[1, 3], min_seconds=0)
    assert a.recall == b.recall


def test_shard_database_is_streamed_exactly(setup, tmp_path):
    _, images, q = setup
    write_collection(tmp_path, images, shard_rows=1_700, dtype=np.float32)
    with EmbeddingShards(tmp_path / "img_emb") as shards:
        s1, i1 = exact_ground_truth(q, shards, 10, batch_rows=500)
    s2, i2 = mudg_fast.knn(q, images, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)
    # a float16 memory-mapped .npy is converted batch by batch: same neighbours as knn on its values
    np.save(tmp_path / "db16.npy", images.astype(np.float16))
    db16 = np.load(tmp_path / "db16.npy", mmap_mode="r")
    s3, i3 = exact_ground_truth(q, db16, 10, batch_rows=777)
    s4, i4 = mudg_fast.knn(q, np.asarray(db16, dtype=np.float32), 10)
    np.testing.assert_array_equal(i3, i4)
    np.testing.assert_array_equal(s3, s4)
    with EmbeddingShards(tmp_path / "img_emb") as shards:  # fewer rows than k: padded like knn
        _, few = exact_ground_truth(q[:2], shards, 7_000)
    assert (few[:, 6_000:] == -1).all() and (few[:, :6_000] >= 0).all()


def test_bad_arguments(setup):
    ix, images, q = setup
    with pytest.raises(ValueError, match="database .* or the ground_truth"):
        evaluate_recall(ix, q)
    with pytest.raises(ValueError, match="ground_truth"):
        evaluate_recall(ix, q, ground_truth=np.zeros((len(q), 3), np.int64), k=10)
    with pytest.raises(ValueError):
        evaluate_recall(ix, q, images, nprobes=[], min_seconds=0)
    with pytest.raises(ValueError):
        evaluate_recall(ix, q, images, nprobes=[0], min_seconds=0)
    with pytest.raises(ValueError):
        evaluate_recall(ix, q, images, k=0)
    with pytest.raises(ValueError, match="dimensions"):
        evaluate_recall(ix, q[:, :5], images)
    with pytest.raises(ValueError, match="min_seconds"):
        evaluate_recall(ix, q, images, min_seconds=-1)


def test_result_round_trip(setup):
    ix, images, q = setup
    res = evaluate_recall(ix, q[:50], images, k=3, nprobes=[2, 8], min_seconds=0)
    d = json.loads(json.dumps(res.to_dict()))
    back = RecallResult.from_dict(d)
    assert back.recall == res.recall and back.nprobes == [2, 8] and back.k == 3
    with pytest.raises(KeyError, match="was not evaluated"):
        res[4]
    assert "recall@3" in res.table()


def test_faiss_export_has_the_same_recall(setup):
    pytest.importorskip("faiss")
    ix, images, q = setup
    a = evaluate_recall(ix, q, images, nprobes=[1, 4], min_seconds=0)
    b = evaluate_recall(ix.to_faiss(), q, images, nprobes=[1, 4], min_seconds=0)
    np.testing.assert_allclose(a.recall, b.recall, atol=0.01)


def test_plot_is_a_png(setup, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    ix, images, q = setup
    res = evaluate_recall(ix, q[:100], images, nprobes=[1, 2, 4, 8, 16], min_seconds=0)
    other = evaluate_recall(ix, q[100:200], images, nprobes=[1, 2, 4, 8, 16], min_seconds=0)
    out = plot_recall({"standard": res, "paired": other}, tmp_path / "sub" / "recall.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 600
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "recall.png"
    ]  # no temporary left behind
    with pytest.raises(ValueError):
        plot_recall({}, tmp_path / "x.png")
    with pytest.raises(TypeError):
        plot_recall({"a": {"recall": 1}}, tmp_path / "x.png")


def test_modality_gap_by_hand(rng):
    x = rng.standard_normal((300, 7))
    p = x + rng.standard_normal((300, 7))
    g = modality_gap(x * 3, p, sample=1_000)  # scale does not matter: cosines
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    pn = p / np.linalg.norm(p, axis=1, keepdims=True)
    full = xn @ pn.T
    assert g["n_pairs"] == 300
    assert g["matched_cosine"] == pytest.approx(np.diag(full).mean(), abs=1e-6)
    assert g["random_cosine"] == pytest.approx(full[~np.eye(300, dtype=bool)].mean(), abs=1e-6)
    assert g["mean_distance"] == pytest.approx(np.linalg.norm(xn.mean(0) - pn.mean(0)), abs=1e-6)
    sub = modality_gap(x, p, sample=100, seed=1)
    assert sub["n_pairs"] == 100 and sub == modality_gap(x, p, sample=100, seed=1)
    assert sub != modality_gap(x, p, sample=100, seed=2)
    with pytest.raises(ValueError, match="row-aligned"):
        modality_gap(x, p[:10])
    z = x.copy()
    z[3] = 0
    with pytest.raises(ValueError, match="all zeros"):
        modality_gap(z, p)


def test_modality_gap_of_coco500(coco500):
    g = modality_gap(*coco500)
    # the values documented for the real COCO-500 CLIP embeddings (datasets.load_coco500)
    assert g["matched_cosine"] == pytest.approx(0.310, abs=0.0015)
    assert g["random_cosine"] == pytest.approx(0.162, abs=0.0015)
    assert g["mean_distance"] == pytest.approx(0.851, abs=0.0015)


def test_modality_gap_from_shards(tmp_path):
    images, captions = noisy_pairs(3_000, 8, seed=2)
    write_collection(tmp_path, images, captions, shard_rows=700, dtype=np.float32)
    with EmbeddingShards(tmp_path / "img_emb") as a, EmbeddingShards(tmp_path / "text_emb") as b:
        g = modality_gap(a, b, sample=1_000, seed=3)
    assert g == modality_gap(images, captions, sample=1_000, seed=3)
    assert g["matched_cosine"] > g["random_cosine"] and g["mean_distance"] > 0.1


# -- the command line --------------------------------------------------------------------------


def test_cli_eval_index(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from mudg_fast.cli import main

    images, captions = noisy_pairs(5_000, D, seed=5)
    write_collection(tmp_path / "c", images, captions, shard_rows=2_000, dtype=np.float16)
    images16 = images.astype(np.float16).astype(np.float32)
    captions16 = captions.astype(np.float16).astype(np.float32)
    std = IVFIndex(D, NLIST, codec="f32").train(images16)
    std.add(images16).save(tmp_path / "std.ivf")
    paired = IVFIndex(D, NLIST, codec="f32").train_paired(images16, captions16)
    paired.add(images16).save(tmp_path / "paired.ivf")
    rc = main(
        [
            "eval-index",
            "--index",
            str(tmp_path / "std.ivf"),
            "--paired_index",
            str(tmp_path / "paired.ivf"),
            "--queries",
            str(tmp_path / "c" / "text_emb"),
            "--database",
            str(tmp_path / "c" / "img_emb"),
            "--num_queries",
            "200",
            "--k",
            "10",
            "--nprobes",
            "1,4,16",
            "--pairs",
            "--plot",
            str(tmp_path / "r.png"),
            "--report",
            str(tmp_path / "r.json"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "standard R@10" in out and "paired R@10" in out and "modality gap" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert set(rep["results"]) == {"standard", "paired"} and rep["n_queries"] == 200
    assert [r["nprobe"] for r in rep["results"]["paired"]["results"]] == [1, 4, 16]
    assert rep["results"]["standard"]["results"][-1]["recall"] == 1.0  # nprobe == nlist, f32
    assert rep["modality_gap"]["n_pairs"] == 5_000
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    # the same numbers from the library
    ids = mudg_fast.shards.sample_ids(5_000, 200, 0)
    res = evaluate_recall(paired, captions16[ids], images16, nprobes=[1, 4, 16], min_seconds=0)
    assert [r["recall"] for r in rep["results"]["paired"]["results"]] == res.recall

    np.save(tmp_path / "q.npy", captions16[:50])
    rc = main(
        ["eval-index", "--index", str(tmp_path / "std.ivf"), "--queries", str(tmp_path / "q.npy")]
    )
    assert rc == 2 and "--database" in capsys.readouterr().err
    rc = main(
        [
            "eval-index",
            "--index",
            str(tmp_path / "nope.ivf"),
            "--queries",
            str(tmp_path / "q.npy"),
            "--database",
            str(tmp_path / "q.npy"),
        ]
    )
    assert rc == 2 and "cannot load index" in capsys.readouterr().err
    rc = main(
        [
            "eval-index",
            "--index",
            str(tmp_path / "std.ivf"),
            "--queries",
            str(tmp_path / "q.npy"),
            "--database",
            str(tmp_path / "q.npy"),
            "--nprobes",
            "1,x",
        ]
    )
    assert rc == 2 and "--nprobes" in capsys.readouterr().err
