"""From label names to a training set: the pipeline against a plain numpy composition."""

import hashlib
import json

import numpy as np
import pytest
from test_select import reference_votes

import mudg_fast
from mudg_fast.pipeline import (build_training_set, check_classnames, retrieve_candidates, select_training_set,
                                write_manifest)

DIM = 48
CLASSES = ["red fox", "tabby cat", "golden retriever", "barn owl", "sea turtle", "fire truck"]


def _hash_vec(text, dim=DIM):
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim)
    return v / np.linalg.norm(v)


class AnchorEncoder:
    """Deterministic stand-in for CLIP's text tower: a prompt that names a known class lands near
    that class's anchor, the rest of its words move it a little."""

    def __init__(self, anchors):
        self.anchors = anchors  # name -> unit vector
        self.calls = 0

    def encode_text(self, texts):
        self.calls += 1
        out = []
        for t in texts:
            name = next((n for n in self.anchors if n in t), None)
            base = self.anchors[name] if name else _hash_vec(t)
            v = base + 0.25 * _hash_vec(t)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, np.float32)


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    anchors = {c: _hash_vec("anchor:" + c) for c in CLASSES + ["distractor one", "distractor two"]}
    names = list(anchors)
    # images: around each anchor (offset by a shared "modality gap" vector), plus background
    gap = _hash_vec("gap")
    labels = np.repeat(np.arange(len(names)), 300)
    x = np.stack([anchors[names[i]] for i in labels]) * 0.6 + 0.5 * gap + 0.6 * rng.standard_normal(
        (len(labels), DIM)) / np.sqrt(DIM)
    x = np.concatenate([x, rng.standard_normal((1200, DIM))])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    truth = np.concatenate([labels, np.full(1200, -1)])
    index = mudg_fast.IVFIndex(DIM, 16).train(x, seed=0)
    index.add(x)
    return x, truth, names, AnchorEncoder(anchors), index


def test_retrieval_matches_a_plain_composition(world):
    from mudg_fast import augment

    x, truth, names, enc, index = world
    desc = [", which can be any color.", ", seen from above.", ", in the snow."]
    K = 20
    cands = retrieve_candidates(index, enc, CLASSES, descriptors=desc, k=K, nprobe=4, seed=1)
    # the same by hand: encode, search, vote
    q = enc.encode_text([augment.format_prompt("a photo of a {}.", c, d) for d in desc for c in CLASSES])
    _, ids = index.search(q, K, nprobe=4)
    votes = reference_votes(ids.reshape(len(desc), len(CLASSES), K), K)
    assert cands.ids.tolist() == sorted(votes)
    for i, lab, v, tied in zip(cands.ids, cands.labels, cands.votes, cands.n_tied):
        top = max(votes[i].values())
        assert v == top and votes[i][lab] == top
        assert tied == sum(1 for s in votes[i].values() if s == top)
    np.testing.assert_allclose(cands.prototypes,
                               enc.encode_text([f"a photo of a {c}." for c in CLASSES]), atol=1e-6)


def test_training_set_properties(world):
    x, truth, names, enc, index = world
    ts = build_training_set(index, enc, CLASSES, descriptors=[", in the wild.", ", at night."], k=40, nprobe=4,
                            threshold=0.2, k_per_class=10, seed=3, embeddings=x)
    assert len(ts) > 0 and (np.diff(ts.ids) > 0).all()
    counts = np.bincount(ts.labels, minlength=len(CLASSES))
    assert (counts <= 10).all() and (counts > 0).all()
    protos = enc.encode_text([f"a photo of a {c}." for c in CLASSES])
    np.testing.assert_allclose(ts.similarity, np.einsum("nd,nd->n", x[ts.ids], protos[ts.labels]), atol=1e-5)
    assert (ts.similarity > 0.2).all()
    # pseudo-labels are right far more often than chance
    want = np.array([names.index(CLASSES[c]) for c in ts.labels])
    assert (truth[ts.ids] == want).mean() > 0.8
    # the summary adds up
    s = ts.summary
    assert s["selected"] == len(ts) and s["after_filter"] >= s["selected"]
    assert sum(v["selected"] for v in s["per_class"].values()) == len(ts)
    # the same seed gives the same set; reconstructing from the index (f32) gives the same too
    again = build_training_set(index, enc, CLASSES, descriptors=[", in the wild.", ", at night."], k=40, nprobe=4,
                               threshold=0.2, k_per_class=10, seed=3)
    np.testing.assert_array_equal(again.ids, ts.ids)
    np.testing.assert_array_equal(again.labels, ts.labels)


def test_descriptors_are_chosen_when_not_given(world):
    x, truth, names, enc, index = world
    ts = build_training_set(index, enc, CLASSES, m=4, n_groups=3, k=10, nprobe=2, seed=0)
    assert len(ts.descriptors) == 4
    assert all(d in mudg_fast.augment.load_descriptor_pool() for d in ts.descriptors)


def test_selection_stage_alone(world):
    x, truth, names, enc, index = world
    cands = retrieve_candidates(index, enc, CLASSES, descriptors=[], k=30, nprobe=4)
    a = select_training_set(cands, x, threshold=-1.0, k_per_class=1000)  # keep everything
    np.testing.assert_array_equal(a.ids, cands.ids)
    b = select_training_set(cands, lambda ids: x[ids], threshold=-1.0, k_per_class=1000)
    np.testing.assert_array_equal(b.ids, a.ids)
    c = select_training_set(cands, x, threshold=2.0, k_per_class=5)  # nothing passes
    assert len(c) == 0
    with pytest.raises(ValueError, match="shape"):
        select_training_set(cands, lambda ids: x[ids][:, :5], k_per_class=5)


@pytest.mark.parametrize("classnames, exc, match", [
    ([], ValueError, "empty"),
    (["cat", "dog", "cat"], ValueError, "duplicate"),
    ("cat", TypeError, "list"),
    (["cat", 3], TypeError, "str"),
    (["cat", "  "], ValueError, "empty"),
])
def test_bad_class_lists(world, classnames, exc, match):
    x, truth, names, enc, index = world
    with pytest.raises(exc, match=match):
        build_training_set(index, enc, classnames, descriptors=[])


def test_bad_retrieval_parameters(world):
    x, truth, names, enc, index = world
    with pytest.raises(ValueError, match="larger than the index"):
        retrieve_candidates(index, enc, CLASSES, descriptors=[], k=index.ntotal + 1)
    with pytest.raises(ValueError, match="placeholder|'\\{\\}'"):
        retrieve_candidates(index, enc, CLASSES, template="a photo", descriptors=[])

    class Wrong:
        def encode_text(self, texts):
            return np.ones((len(texts), DIM + 1), np.float32)

    with pytest.raises(ValueError, match="dimension|-d vectors"):
        retrieve_candidates(index, Wrong(), CLASSES, descriptors=[])
    empty = mudg_fast.IVFIndex(DIM, 4).set_centroids(x[:4])
    with pytest.raises(ValueError, match="empty"):
        retrieve_candidates(empty, enc, CLASSES, descriptors=[])


def test_manifest_columns_metadata_and_summary(world, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    x, truth, names, enc, index = world
    ts = build_training_set(index, enc, CLASSES, descriptors=[", in the wild."], k=20, nprobe=4, k_per_class=5,
                            embeddings=x)
    meta = {"url": [f"https://example.org/{i}.jpg" for i in ts.ids], "caption": [f"img {i}" for i in ts.ids]}
    path, summary = write_manifest(ts, tmp_path / "sel.parquet", metadata=meta, extra_summary={"note": "x"})
    t = pq.read_table(path)
    assert t.column_names[:6] == ["id", "label", "classname", "vote_score", "similarity", "retrieval_score"]
    assert t.column("id").to_pylist() == ts.ids.tolist()
    assert t.column("url").to_pylist() == meta["url"]
    assert t.column("classname").to_pylist() == [CLASSES[c] for c in ts.labels]
    s = json.loads(summary.read_text())
    assert s["classnames"] == CLASSES and s["note"] == "x" and sum(s["counts"].values()) == len(ts)
    with pytest.raises(ValueError, match="rows"):
        write_manifest(ts, tmp_path / "bad.parquet", metadata={"url": ["a"]})
    assert not (tmp_path / "bad.parquet").exists()


def test_check_classnames_strips():
    assert check_classnames([" cat ", "dog"]) == ["cat", "dog"]


def test_retrieval_reranks_a_4bit_index_from_its_recorded_source(world, tmp_path):
    """sq4 + build_index: re-ranked by default (max(4 k, 100) from the img_emb folder in the metadata),
    exactly as a composition of IVFIndex.search(rerank=, source=) and the vote; rerank=0 turns it
    off; an explicit rerank without a known source is refused; a moved folder turns the default off."""
    from mudg_fast import augment
    from mudg_fast.shards import write_collection

    x, truth, names, enc, _ = world
    write_collection(tmp_path / "col", x, shard_rows=1000, dtype=np.float32)
    index = mudg_fast.build_index(tmp_path / "col" / "img_emb", nlist=16, codec="sq4", out=tmp_path / "ix.bin",
                                  progress=False, max_iter=5)
    desc = [", which can be any color.", ", seen from above."]
    K = 20
    q = enc.encode_text([augment.format_prompt("a photo of a {}.", c, d) for d in desc for c in CLASSES])

    def composed(**search):
        _, ids = index.search(q, K, nprobe=4, **search)
        return sorted(reference_votes(ids.reshape(len(desc), len(CLASSES), K), K))

    logs = []
    auto = retrieve_candidates(index, enc, CLASSES, descriptors=desc, k=K, nprobe=4, seed=1, log=logs.append)
    assert auto.summary["rerank"] == 100 and any("re-ranked a shortlist of 100" in s for s in logs)
    assert auto.ids.tolist() == composed(rerank=100, source=x)
    off = retrieve_candidates(index, enc, CLASSES, descriptors=desc, k=K, nprobe=4, seed=1, rerank=0)
    assert off.summary["rerank"] == 0 and off.ids.tolist() == composed()
    assert off.ids.tolist() != auto.ids.tolist()
    given = retrieve_candidates(index, enc, CLASSES, descriptors=desc, k=K, nprobe=4, seed=1, rerank=30,
                                rerank_source=lambda ids: x[ids])
    assert given.summary["rerank"] == 30 and given.ids.tolist() == composed(rerank=30, source=x)
    # build_training_set passes the choice through
    ts = build_training_set(index, enc, CLASSES, descriptors=desc, k=K, nprobe=4, rerank=0, threshold=0.2,
                            k_per_class=5, seed=1, embeddings=x)
    assert ts.summary["rerank"] == 0
    for bad in (-1, True, 2.5):
        with pytest.raises(ValueError, match="rerank must be None"):
            retrieve_candidates(index, enc, CLASSES, descriptors=desc, k=K, rerank=bad)
    # the folder moves away: the default quietly stays exact-less, an explicit request fails
    (tmp_path / "col").rename(tmp_path / "moved")
    logs.clear()
    moved = retrieve_candidates(index, enc, CLASSES, descriptors=desc, k=K, nprobe=4, seed=1, log=logs.append)
    assert moved.summary["rerank"] == 0 and any("not re-ranking" in s for s in logs)
    with pytest.raises(ValueError, match="cannot be read now"):
        retrieve_candidates(index, enc, CLASSES, descriptors=desc, k=K, nprobe=4, rerank=40)
    # an index that records no source: no default re-ranking, an explicit one needs rerank_source
    bare = mudg_fast.IVFIndex(DIM, 16, codec="sq4").train(x, seed=0)
    bare.add(x)
    assert retrieve_candidates(bare, enc, CLASSES, descriptors=desc, k=K, nprobe=4).summary["rerank"] == 0
    with pytest.raises(ValueError, match="records no source"):
        retrieve_candidates(bare, enc, CLASSES, descriptors=desc, k=K, nprobe=4, rerank=40)
