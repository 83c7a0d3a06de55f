"""The mudg-fast CLI end to end on generated shards with a tiny random open_clip model
(build-index -> augment -> retrieve -> select, and run), plus its error messages."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("open_clip")
pq = pytest.importorskip("pyarrow.parquet")

import contextlib  # noqa: E402

import clip_helpers as ch  # noqa: E402

from mudg_fast import cli  # noqa: E402
from mudg_fast.shards import write_collection  # noqa: E402

CLASSES = "red fox,tabby cat,golden retriever,barn owl"
one_thread = contextlib.contextmanager(ch.single_thread)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    spec = ch.write_local_dir(root / "tiny_model", seed=0)
    dim = ch.TINY_CONFIG["embed_dim"]
    rng = np.random.default_rng(0)
    n = 3000
    images = rng.standard_normal((n, dim)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    captions = images + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    captions /= np.linalg.norm(captions, axis=1, keepdims=True)
    meta = {"url": [f"https://example.org/{i}.jpg" for i in range(n)], "caption": [f"caption {i}" for i in range(n)]}
    coll = write_collection(root / "coll", images, captions, shard_rows=1000, metadata=meta)
    index = root / "coll.ivf"
    with one_thread():
        assert cli.main(["build-index", "--embeddings", str(coll / "img_emb"), "--captions_dir",
                         str(coll / "text_emb"), "--nlist", "8", "--codec", "f32", "--out", str(index),
                         "--no_resume"]) == 0
    model = ["--model", spec, "--pretrained", "none", "--offline"]
    return root, coll, index, model, images


def test_augment_retrieve_select_and_run_agree(setup, tmp_path):
    root, coll, index, model, images = setup
    desc = tmp_path / "desc.json"
    with one_thread():
        assert cli.main(["augment", "--classnames", CLASSES, "--m", "3", "--n_groups", "2", "--out", str(desc)]
                        + model) == 0
        chosen = json.loads(desc.read_text())["descriptors"]
        assert len(chosen) == 3
        cand = tmp_path / "cand.parquet"
        assert cli.main(["retrieve", "--index", str(index), "--classnames", CLASSES, "--descriptors", str(desc),
                         "--k", "32", "--nprobe", "3", "--out", str(cand)] + model) == 0
        man = tmp_path / "man.parquet"
        assert cli.main(["select", "--candidates", str(cand), "--embeddings", str(coll), "--metadata", str(coll),
                         "--threshold", "-1", "--k_per_class", "5", "--out", str(man)]) == 0
        run = tmp_path / "run.parquet"
        assert cli.main(["run", "--index", str(index), "--classnames", CLASSES, "--descriptors", str(desc),
                         "--k", "32", "--nprobe", "3", "--embeddings", str(coll), "--metadata", str(coll),
                         "--threshold", "-1", "--k_per_class", "5", "--out", str(run)] + model) == 0
    c = pq.read_table(cand)
    assert set(c.column_names) >= {"id", "label", "classname", "vote_score", "retrieval_score"}
    m = pq.read_table(man)
    assert set(m.column_names) >= {"id", "label", "classname", "similarity", "url", "caption"}
    ids = m.column("id").to_numpy()
    assert set(ids) <= set(c.column("id").to_numpy())
    assert m.column("url").to_pylist() == [f"https://example.org/{i}.jpg" for i in ids]
    assert np.bincount(m.column("label").to_numpy()).max() <= 5
    np.testing.assert_allclose(  # similarity is against the stored image embeddings
        m.column("similarity").to_numpy(),
        np.einsum("nd,nd->n", images[ids], np.load(cand.with_suffix(".prototypes.npy"))[m.column("label").to_numpy()]),
        atol=2e-3)  # shards are float16
    r = pq.read_table(run)
    assert r.column("id").to_pylist() == m.column("id").to_pylist()
    assert r.column("label").to_pylist() == m.column("label").to_pylist()
    summary = json.loads(run.with_suffix(".json").read_text())
    assert summary["classnames"] == CLASSES.split(",") and summary["descriptors"] == chosen
    assert summary["rerank"] == 0  # an f32 index: no re-ranking by default


def test_retrieve_with_rerank(setup, tmp_path):
    """--rerank on the f32 index re-scores exactly what it found (same candidates as without),
    from the folder build-index recorded or from --rerank_source."""
    root, coll, index, model, images = setup
    outs = {}
    with one_thread():
        for name, extra in (("plain", []), ("auto", ["--rerank", "64"]),
                            ("given", ["--rerank", "64", "--rerank_source", str(coll)])):
            outs[name] = tmp_path / f"{name}.parquet"
            assert cli.main(["retrieve", "--index", str(index), "--classnames", CLASSES, "--no_augmentation",
                             "--k", "16", "--nprobe", "3", "--out", str(outs[name])] + extra + model) == 0
    tables = {n: pq.read_table(p) for n, p in outs.items()}
    for name in ("auto", "given"):
        assert tables[name].column("id").to_pylist() == tables["plain"].column("id").to_pylist()
        assert json.loads(outs[name].with_suffix(".json").read_text())["rerank"] == 64


@pytest.mark.parametrize("args, message", [
    (["--no_augmentation", "--classnames", ","], "no class names"),
    (["--no_augmentation", "--classnames", "cat,dog,cat"], "duplicate class names"),
    (["--no_augmentation", "--classnames", "cat,dog", "--k", "100000"], "larger than the index"),
    (["--no_augmentation", "--classnames", "missing_classes.txt"], "class list file not found"),
    (["--no_augmentation", "--classnames", "cat,dog", "--metadata", "{root}/nowhere"], "cannot read metadata"),
    (["--classnames", "cat,dog", "--descriptors", "{root}/none.json"], "descriptor file not found"),
    (["--no_augmentation", "--classnames", "cat,dog", "--descriptors", "{root}/none.json"], "exclude each other"),
    (["--no_augmentation", "--classnames", "cat,dog", "--rerank", "-1"], "--rerank must be >= 0"),
    (["--no_augmentation", "--classnames", "cat,dog", "--rerank_source", "{root}/nowhere"], "--rerank_source not found"),
])
def test_run_reports_bad_input_clearly(setup, tmp_path, capsys, args, message):
    root, coll, index, model, _ = setup
    args = [a.replace("{root}", str(root)) for a in args]
    with one_thread():
        rc = cli.main(["run", "--index", str(index), "--k", "8", "--embeddings", str(coll),
                       "--out", str(tmp_path / "x.parquet")] + args + model)
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_missing_index_and_candidates(setup, tmp_path, capsys):
    root, coll, index, model, _ = setup
    assert cli.main(["run", "--index", str(root / "nope.ivf"), "--classnames", "a,b", "--out",
                     str(tmp_path / "x.parquet")] + model) == 2
    assert "index file not found" in capsys.readouterr().err
    assert cli.main(["select", "--candidates", str(tmp_path / "none.parquet"), "--index", str(index), "--out",
                     str(tmp_path / "y.parquet")]) == 2
    assert "written by mudg-fast retrieve" in capsys.readouterr().err


def test_retrieve_from_a_folder_of_parts_equals_the_single_file(setup, tmp_path):
    root, coll, index, model, _ = setup
    parts = tmp_path / "parts"
    with one_thread():
        assert cli.main(["build-index", "--embeddings", str(coll / "img_emb"), "--captions_dir",
                         str(coll / "text_emb"), "--nlist", "8", "--codec", "f32", "--out", str(parts),
                         "--part_size", "700", "--no_progress"]) == 0
        assert len(list(parts.glob("part-*.ivf"))) == 5
        outs = []
        for ix in (index, parts):
            outs.append(tmp_path / f"{ix.name}.parquet")
            assert cli.main(["retrieve", "--index", str(ix), "--classnames", CLASSES, "--no_augmentation",
                             "--k", "32", "--nprobe", "3", "--out", str(outs[-1])] + model) == 0
    a, b = pq.read_table(outs[0]), pq.read_table(outs[1])
    for col in ("id", "label", "vote_score", "retrieval_score"):
        assert a.column(col).to_pylist() == b.column(col).to_pylist()
