"""Property-based fuzzing of the label-text and pipeline layer: class lists, prompt templates,
descriptor pools and their adaptive selection, retrieval, selection and the manifest.

Every call goes through ``fuzzing.attempt``: a returned result is checked against a plain python
reference or an invariant; anything else must be a clear TypeError/ValueError (OSError for files).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import mudg_fast
import numpy as np
import pytest
from fuzzing import arguments, attempt, examples, layouts, mostly, raised
from hypothesis import given
from hypothesis import strategies as st
from mudg_fast import augment, synthetic
from mudg_fast.pipeline import (
    Candidates,
    build_training_set,
    check_classnames,
    retrieve_candidates,
    select_training_set,
    write_manifest,
)
from mudg_fast.select import similarity_to_prototypes
from test_select import reference_votes

# one class per k-means group is a legitimate draw here; select_descriptors warns about it
pytestmark = pytest.mark.filterwarnings("ignore:no group has two or more classes:UserWarning")

FILES = (TypeError, ValueError, OSError)
_counter = itertools.count()

# strings that break naive code: empty, blank, braces, format fields, NUL, unicode, very long
NASTY = ["", " ", "\t\n", "{}", "{0}", "{{}}", "}{", "%s", "\x00", "日本語", "ÄÖÜ ß", "🙂", "\ud800",
         "cat", " cat ", "a.b", ".", ",", "x" * 5000, "dog " * 500, "\u2028", "#", "a\rb"]
TEXT = st.one_of(st.sampled_from(NASTY), st.text(max_size=12))
NOT_STR = st.sampled_from([None, 3, 2.5, b"cat", ["cat"], ("a",), object()])
#: class lists that are always refused: empty, blank, duplicate (after stripping), non-str names
BAD_CLASS_LISTS = st.one_of(TEXT, st.sampled_from(
    [None, 3, 2.5, b"cat", object(), [], ["cat", "cat"], ["cat", " cat "], ["", "dog"], ["dog", "\t"], ["dog", 3],
     ["dog", None], [b"dog"]]))
#: class names that are valid (non-blank str), odd ones included
NAMES = st.one_of(st.sampled_from(["cat", " cat ", "Dog", "red fox", "日本語", "a{}b", "{0}", "ÄÖÜ ß", "🙂",
                                   "x" * 300,
                                   np.str_("numpy str"), "tab\there"]),
                  st.text(min_size=1, max_size=12).filter(lambda t: t.strip()))


def _seed_ok(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v >= 0


SEEDS = mostly(st.one_of(st.integers(0, 2**40), st.just(np.int64(5))), st.sampled_from([-1, 1.5, None, "0", True]))


def ref_classnames(value):
    """The specification of check_classnames: stripped names, or the exception type."""
    if value is None or isinstance(value, str):
        return TypeError
    try:
        names = list(value)
    except TypeError:
        return TypeError
    if not names:
        return ValueError
    out = []
    for c in names:
        if not isinstance(c, str):
            return TypeError
        if not c.strip():
            return ValueError
        out.append(c.strip())
    return ValueError if len(set(out)) != len(out) else out


class_lists = mostly(
    st.one_of(st.lists(NAMES, min_size=1, max_size=6), st.lists(NAMES, min_size=1, max_size=4).map(tuple)),
    st.one_of(st.lists(st.one_of(TEXT, NOT_STR), max_size=6), TEXT, NOT_STR,
              st.builds(lambda: iter(["a", " b "]))), 0.6)


@examples(500)
@given(class_lists)
def test_check_classnames_matches_spec(value):
    if isinstance(value, Iterator):            # a one-shot iterator: the reference sees a copy
        items = list(value)
        want, value = ref_classnames(items), iter(items)
    else:
        want = ref_classnames(value)
    out = attempt(check_classnames, value)
    if isinstance(want, type):
        assert raised(out) and isinstance(out.exc, want), (value, out)
    else:
        assert out == want


# ---------------------------------------------------------------------------------------------
# templates and prompts

_no_braces = st.text(max_size=10).filter(lambda t: "{}" not in t)
templates = mostly(
    st.one_of(st.sampled_from(sorted(augment.TEMPLATES)), st.builds(lambda a, b: a + "{}" + b, _no_braces, _no_braces),
              st.sampled_from(["{}", "{{}}.", "a photo of a {}.  ", "{}.", "{}. "])),
    st.one_of(TEXT, NOT_STR, st.sampled_from(["{}{}", "a {} and {}.", "{ }", "no placeholder"])), 0.7)
descriptors = mostly(st.one_of(st.none(), st.just(""), TEXT, st.sampled_from([", which is red.", " at night.", "{}",
                                                                              ", {0}."])), NOT_STR, 0.85)


def ref_template(t):
    if not isinstance(t, str):
        return TypeError
    if t in augment.TEMPLATES:
        return augment.TEMPLATES[t]
    return t if t.count("{}") == 1 else ValueError


def ref_prompt(template, classname, descriptor):
    t = ref_template(template)
    if isinstance(t, type):
        return t
    if not isinstance(classname, str):
        return TypeError
    if not classname.strip():
        return ValueError
    if descriptor is not None and not isinstance(descriptor, str):
        return TypeError
    if descriptor:
        body = t.rstrip()
        t = (body.removesuffix(".")) + descriptor
    i = t.index("{}")                       # the template's own placeholder comes first
    return t[:i] + classname + t[i + 2:]


@examples(600)
@given(templates, mostly(NAMES, st.one_of(TEXT, NOT_STR), 0.7), descriptors)
def test_format_prompt_and_get_template(template, classname, descriptor):
    got = attempt(augment.get_template, template)
    want = ref_template(template)
    if isinstance(want, type):
        assert raised(got) and isinstance(got.exc, want)
    else:
        assert got == want
    out = attempt(augment.format_prompt, template, classname, descriptor)
    want = ref_prompt(template, classname, descriptor)
    if isinstance(want, type):
        assert raised(out) and isinstance(out.exc, want), (template, classname, descriptor, out)
    else:
        assert out == want
        assert classname in out and (not descriptor or out.endswith(descriptor))


@examples(300)
@given(templates, mostly(st.lists(NAMES, min_size=1, max_size=4, unique=True), class_lists),
       mostly(st.lists(st.one_of(st.just(""), TEXT, st.sampled_from([", which is red.", " at night."])), min_size=1,
                       max_size=4, unique=True),
              st.one_of(st.lists(descriptors, max_size=4), TEXT, NOT_STR)))
def test_augmented_prompts_layout(template, classnames, descs):
    names = list(classnames) if isinstance(classnames, Iterator) else classnames
    out = attempt(augment.augmented_prompts, template, iter(names) if names is not classnames else classnames, descs)
    if raised(out):
        return
    # success only for a valid template, distinct non-blank str names and distinct str descriptors
    names, ds = list(names), list(descs)
    assert ds and names and len(set(names)) == len(names) and len(set(ds)) == len(ds)
    assert len(out) == len(ds) and all(len(row) == len(names) for row in out)
    for row, d in zip(out, ds):
        assert row == [ref_prompt(template, c, d) for c in names]


# ---------------------------------------------------------------------------------------------
# descriptor pools

GOOD_LINES = [", which is red.", " at night.", "  in the snow.", ", seen from above.", "# a comment",
              "   # indented comment", "", "   ", ", ünïcödé wörds.", ", tab\tinside.", ", trailing spaces.   ",
              ", very" + " long" * 300 + ".", ", a.\r", ", b.\u2028, c.", ", x1.", " 2 cats."]
BAD_LINES = ["no leading comma.", ", no period", ", {} braces.", ", 123.", ",.", "\ufeff, bom.", ", which is red."]
POOL_LINES = GOOD_LINES + BAD_LINES


def check_pool_against_file(pool, lines):
    """A loaded pool holds exactly the file's non-blank, non-comment lines (right-stripped), in
    file order, each a well-formed distinct descriptor."""
    kept = [ln.rstrip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    assert pool == kept
    assert len(set(pool)) == len(pool)
    for d in pool:
        assert d[:1] in (",", " ") and d.endswith(".") and any(ch.isalpha() for ch in d)
        assert "{" not in d and "}" not in d


@examples(250)
@given(mostly(st.lists(st.sampled_from(GOOD_LINES), max_size=8, unique=True), st.lists(st.sampled_from(POOL_LINES),
                                                                                        max_size=8), 0.6),
       mostly(st.just("utf8"), st.sampled_from(["latin1", "junk"]), 0.85))
def test_load_descriptor_pool_files(tmp_path_factory, lines, encoding):
    folder = tmp_path_factory.getbasetemp() / "fuzz_pools"
    folder.mkdir(exist_ok=True)
    path = folder / f"pool_{next(_counter)}.txt"
    text = "\n".join(lines)
    if encoding == "utf8":
        path.write_text(text, encoding="utf-8")
    elif encoding == "latin1":
        path.write_bytes(text.encode("utf-8", "surrogatepass") + b"\xff\xfe")
    else:
        path.write_bytes(bytes(range(256)))
    pool = attempt(augment.load_descriptor_pool, path, allowed=FILES)
    kept = [ln.rstrip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    well_formed = encoding == "utf8" and set(lines) <= set(GOOD_LINES) and kept and len(set(kept)) == len(kept)
    if raised(pool):
        assert isinstance(pool.exc, ValueError), pool   # a readable file: only ValueError
        assert not well_formed, (lines, pool)           # ... and only for a malformed pool
        return
    assert encoding == "utf8"
    check_pool_against_file(pool, text.splitlines())


@examples(60)
@given(st.sampled_from([None, 3, b"/tmp", "/nonexistent/pool.txt", ".", 2.5, ["a"]]))
def test_load_descriptor_pool_bad_paths(path):
    pool = attempt(augment.load_descriptor_pool, path, allowed=FILES)
    if path is None:
        assert len(pool) > 100           # the built-in pool
        check_pool_against_file(pool, pool)
    else:
        assert raised(pool)


# ---------------------------------------------------------------------------------------------
# adaptive descriptor selection

ENCODER = synthetic.SyntheticTextEncoder(dim=16, seed=3)
VOCAB = synthetic.concept_vocabulary()


class ArrayEncoder:
    """An encoder that returns whatever it is told to (wrong shapes, NaN, zeros, huge values)."""

    def __init__(self, how):
        self.how = how

    def encode_text(self, texts):
        x = ENCODER.encode_text(texts)
        if self.how == "nan":
            x[0, 0] = np.nan
        elif self.how == "zeros":
            x[:] = 0
        elif self.how == "huge":
            x = x.astype(np.float64) * 1e300
        elif self.how == "tiny":
            x = x * np.float32(1e-30)
        elif self.how == "wide":
            return np.ones((len(texts), 3), np.float32) if len(texts) > 3 else x
        elif self.how == "short":
            return x[:-1]
        elif self.how == "object":
            return x.astype(object)
        elif self.how == "int":
            return (x * 100).astype(np.int32)
        return x


POOL = augment.load_descriptor_pool()[:40]
DESCRIPTOR_ARGS = {
    "names": (st.lists(st.sampled_from(VOCAB[:60]), min_size=1, max_size=7, unique=True),
              BAD_CLASS_LISTS),
    "pool": (st.lists(st.one_of(st.sampled_from(POOL), st.just("")), min_size=1, max_size=6, unique=True),
             st.one_of(st.just([]), st.sampled_from(POOL), st.just([POOL[0], POOL[0]]), st.just([POOL[0], 3]))),
    "m": (st.integers(1, 6), st.sampled_from([0, -1, 7, 1.5, None, True])),
    "n_groups": (st.integers(1, 5), st.sampled_from([0, -1, 1.5, None, "2"])),
    "seed": (st.integers(0, 2**64), st.sampled_from([-1, 1.5, None, "0", True])),
    "template": (st.sampled_from(["default", "a photo of a {}.", "{}", "flowers"]),
                 st.sampled_from(["no placeholder", "{}{}", None, 3])),
    "encoder": (st.sampled_from(["plain", "plain", "plain", "huge", "tiny", "int"]),
                st.sampled_from(["nan", "zeros", "short", "object", "none"])),
}


@examples(150)
@given(arguments(DESCRIPTOR_ARGS, valid_share=0.6))
def test_select_descriptors_properties(args):
    kw, broken = args
    names, pool, m = kw["names"], kw["pool"], kw["m"]
    if broken not in ("m", "pool"):
        m = min(m, len(pool))                  # a valid m is at most the pool size
    how = kw["encoder"]
    enc = ENCODER if how == "plain" else None if how == "none" else ArrayEncoder(how)
    sel = attempt(augment.select_descriptors, enc, names, kw["template"], pool, m, n_groups=kw["n_groups"],
                  seed=kw["seed"], return_scores=True)
    if broken:
        assert raised(sel), (broken, kw[broken])
        return
    assert not raised(sel), sel
    assert len(sel.descriptors) == m and len(set(sel.descriptors)) == m and set(sel.descriptors) <= set(pool)
    assert sel.scores.shape == (len(pool),) and sel.ranking.shape == (len(pool),)
    assert ((sel.scores >= 0) & (sel.scores <= len(sel.scored_groups))).all()
    order = sorted(range(len(pool)), key=lambda i: (-sel.scores[i], i))   # stable, score descending
    assert sel.ranking.tolist() == order and sel.descriptors == [pool[i] for i in order[:m]]
    if "" in pool:                             # the plain prompt spreads nothing
        assert sel.scores[pool.index("")] == 0
    # the class order does not matter
    again = attempt(augment.select_descriptors, enc, names[::-1], kw["template"], pool, m, n_groups=kw["n_groups"],
                    seed=kw["seed"])
    assert again == sel.descriptors


# ---------------------------------------------------------------------------------------------
# retrieval and selection on a tiny generated world


@pytest.fixture(scope="module")
def world():
    corpus = synthetic.make_corpus(400, n_concepts=6, dim=16, seed=0)
    index = mudg_fast.IVFIndex(16, 4).train(corpus.images, seed=0)
    index.add(corpus.images)
    probe = corpus.captions[:5]
    return corpus, index, index.search(probe, 5, nprobe=2), probe


def _index_unchanged(index, before, probe):
    assert index.ntotal == 400
    s, i = index.search(probe, 5, nprobe=2)
    np.testing.assert_array_equal(i, before[1])
    np.testing.assert_array_equal(s, before[0])


RETRIEVE_ARGS = {
    "names": (st.lists(st.sampled_from(synthetic.concept_vocabulary()[:30] + ["red fox", " bulldog ", "日本語"]),
                       min_size=1, max_size=4, unique_by=str.strip),
              BAD_CLASS_LISTS),
    "descriptors": (st.sampled_from(["given", "given", "empty", "choose"]), st.sampled_from(["str", "dup", "nonstr"])),
    "k": (st.one_of(st.integers(1, 30), st.just(np.int64(4))), st.sampled_from([0, -1, 1.5, None, "3", 401, True])),
    "nprobe": (st.integers(1, 6), st.sampled_from([0, -1, 1.5, None])),
    "seed": (st.integers(0, 2**40), st.sampled_from([-1, 1.5, None, "0", True])),
    "template": (st.sampled_from(["a photo of a {}.", "default", "pets"]), st.sampled_from(["a {} {}", "plain", None])),
}


@examples(100)
@given(arguments(RETRIEVE_ARGS, valid_share=0.6), st.data())
def test_retrieve_candidates_matches_a_plain_composition(world, args, data):
    corpus, index, before, probe = world
    kw, broken = args
    pool = augment.load_descriptor_pool()[:12]
    descs = {"given": data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True)),
             "empty": [], "choose": None, "str": pool[0], "dup": [pool[0], pool[0]],
             "nonstr": [pool[0], 3]}[kw["descriptors"]]
    names, k, nprobe, template = kw["names"], kw["k"], kw["nprobe"], kw["template"]
    cands = attempt(retrieve_candidates, index, corpus.text_encoder, names, template=template,
                    descriptors=descs, pool=pool, m=2, n_groups=2, k=k, nprobe=nprobe, seed=kw["seed"])
    _index_unchanged(index, before, probe)
    if broken:
        assert raised(cands), (broken, kw[broken])
        return
    assert not raised(cands), cands
    want_names = ref_classnames(names)
    assert cands.classnames == want_names
    C = len(want_names)
    assert len(cands) > 0 and (np.diff(cands.ids) > 0).all()
    assert cands.ids.min() >= 0 and cands.ids.max() < index.ntotal
    assert ((cands.labels >= 0) & (cands.labels < C)).all() and (cands.n_tied >= 1).all()
    np.testing.assert_allclose(np.linalg.norm(cands.prototypes, axis=1), 1.0, atol=1e-5)
    # the same by hand: encode, search, vote
    variants = cands.descriptors or [None]
    q = corpus.text_encoder.encode_text([augment.format_prompt(template, c, d) for d in variants for c in want_names])
    _, ids = index.search(q, int(k), nprobe=nprobe)
    votes = reference_votes(ids.reshape(len(variants), C, int(k)), int(k))
    assert cands.ids.tolist() == sorted(votes)
    for i, lab, v, tied in zip(cands.ids, cands.labels, cands.votes, cands.n_tied):
        top = max(votes[i].values())
        assert v == top and votes[i][lab] == top and tied == sum(1 for s in votes[i].values() if s == top)


@st.composite
def candidates(draw):
    """A small Candidates built directly (ids into an N x d embedding table)."""
    N, d, C = draw(st.integers(1, 60)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(0, N))
    ids = np.sort(rng.choice(N, n, replace=False)).astype(np.int64)
    protos = rng.standard_normal((C, d)).astype(np.float32)
    protos /= np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-6)
    c = Candidates(ids=ids, labels=rng.integers(0, C, n).astype(np.int64), votes=rng.integers(1, 9, n).astype(float),
                   best_score=rng.random(n).astype(np.float32), n_tied=np.ones(n, np.int64), prototypes=protos,
                   classnames=[f"class {j}" for j in range(C)], descriptors=[], template="a photo of a {}.")
    table = rng.standard_normal((N, d)).astype(np.float32)
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    return c, table


SELECTION_ARGS = {
    "embeddings": (st.sampled_from(["array", "f64", "f16", "layout", "callable", "list"]),
                   st.sampled_from(["short", "nan", "1d", "wide", "object", "none", "bad callable", "mismatch"])),
    "threshold": (st.floats(-1.0, 1.0), st.sampled_from([float("nan"), None, "0.1", np.inf, True])),
    "k_per_class": (st.one_of(st.integers(1, 8), st.just(2**40)), st.sampled_from([0, -1, 1.5, None, "2"])),
    "strategy": (st.sampled_from(["random", "nearest"]), st.sampled_from(["best", None])),
    "seed": (st.integers(0, 2**64 - 1), st.sampled_from([-1, 1.5, None, "0", True, 2**64])),
}


@examples(300)
@given(candidates(), arguments(SELECTION_ARGS, valid_share=0.6), st.data())
def test_select_training_set_properties(cand_table, args, data):
    cands, table = cand_table
    kw, broken = args
    N = table.shape[0]
    kind = kw["embeddings"]
    emb = {"array": table, "f64": table.astype(np.float64), "f16": table.astype(np.float16),
           "layout": data.draw(layouts(table)), "callable": lambda ids: table[ids], "list": table.tolist(),
           "short": table[: N // 2], "nan": np.where(np.arange(N)[:, None] == N - 1, np.nan, table),
           "1d": table[:, 0], "wide": np.hstack([table, table]), "object": table.astype(object),
           "none": None, "bad callable": lambda ids: table[ids][:, :0], "mismatch": table}[kind]
    if kind == "mismatch":
        cands = Candidates(**{**cands.__dict__, "votes": cands.votes[:-1] if len(cands) else np.ones(1)})
    threshold, k = kw["threshold"], kw["k_per_class"]
    ts = attempt(select_training_set, cands, emb, threshold=threshold, k_per_class=k, strategy=kw["strategy"],
                 seed=kw["seed"])
    n = len(cands)
    top = int(cands.ids.max()) if n else -1
    fetch_ok = (n == 0 and kind != "mismatch") or kind in ("array", "f64", "f16", "layout", "callable", "list") or (
        kind == "short" and top < N // 2) or (kind == "nan" and top < N - 1)
    if not fetch_ok or (broken and broken != "embeddings"):
        assert raised(ts), (broken, kind)
        return
    assert not raised(ts), ts
    values = table.astype(np.float16).astype(np.float32) if kind == "f16" else table
    sim_all = similarity_to_prototypes(values[cands.ids], cands.labels, cands.prototypes)
    np.testing.assert_allclose(sim_all, np.einsum("nd,nd->n", values[cands.ids].astype(np.float64),
                                                  cands.prototypes[cands.labels].astype(np.float64)), atol=1e-5)
    kept = sim_all > threshold
    assert set(ts.ids.tolist()) <= set(cands.ids[kept].tolist()) and (np.diff(ts.ids) > 0).all()
    pos = np.searchsorted(cands.ids, ts.ids)
    np.testing.assert_array_equal(ts.labels, cands.labels[pos])
    np.testing.assert_array_equal(ts.similarity, sim_all[pos])
    for c in range(len(cands.classnames)):
        f = int((kept & (cands.labels == c)).sum())
        got = int((ts.labels == c).sum())
        assert got == f if f <= k else 1 <= got <= k
    s = ts.summary
    assert s["selected"] == len(ts) and s["after_filter"] == int(kept.sum())


BUILD_SET_ARGS = {
    "threshold": (st.floats(-0.5, 0.6), st.sampled_from([float("nan"), "x", None])),
    "k_per_class": (st.integers(1, 6), st.sampled_from([0, -1, 2.5])),
    "embeddings": (st.sampled_from(["index", "array", "callable"]), st.sampled_from(["shards?", "short"])),
    "metadata": (st.sampled_from(["ok", "none"]), st.sampled_from(["short", "str", "int keys", "mixed"])),
}


@examples(40)
@given(st.data(), arguments(BUILD_SET_ARGS, valid_share=0.6))
def test_build_training_set_and_manifest(world, tmp_path_factory, data, args):
    corpus, index, before, probe = world
    kw, broken = args
    names = data.draw(st.lists(st.sampled_from(corpus.concept_names), min_size=1, max_size=3, unique=True))
    threshold, k_per_class = kw["threshold"], kw["k_per_class"]
    emb = {"index": None, "array": corpus.images, "callable": lambda ids: corpus.images[ids], "shards?": 5,
           "short": corpus.images[:3]}[kw["embeddings"]]
    ts = attempt(build_training_set, index, corpus.text_encoder, names, descriptors=[", at night."], k=10, nprobe=2,
                 threshold=threshold, k_per_class=k_per_class, seed=1, embeddings=emb)
    _index_unchanged(index, before, probe)
    if broken in ("threshold", "k_per_class", "embeddings"):
        assert raised(ts), (broken, kw[broken])
        return
    assert not raised(ts), ts
    counts = np.bincount(ts.labels, minlength=len(names))
    assert (counts <= k_per_class).all() and (ts.similarity > threshold).all()
    meta = {"ok": {"url": [f"u{i}" for i in ts.ids]}, "short": {"url": ["u"] * (len(ts) + 1)}, "str": "url",
            "int keys": {3: [1] * len(ts)}, "mixed": {"url": ([1, "a"] * len(ts))[: len(ts)]},
            "none": None}[kw["metadata"]]
    folder = tmp_path_factory.getbasetemp() / "fuzz_manifests"
    path = folder / f"m{next(_counter)}.parquet"
    out = attempt(write_manifest, ts, path, metadata=meta, allowed=FILES)
    if raised(out):
        assert broken == "metadata" and not path.exists()     # a refused manifest leaves nothing behind
        return
    assert broken is None or (kw["metadata"] == "mixed" and len(ts) < 2)
    pq = pytest.importorskip("pyarrow.parquet")
    t = pq.read_table(out[0])
    assert t.column("id").to_pylist() == ts.ids.tolist()
    assert t.column("classname").to_pylist() == [names[c] for c in ts.labels]
    assert sum(json.loads(out[1].read_text())["counts"].values()) == len(ts)


@examples(60)
@given(st.sampled_from(["str index", "str encoder", "no encode", "bad cands", "bad ts"]))
def test_pipeline_wrong_objects(world, tmp_path_factory, what):
    corpus, index, before, probe = world
    enc = corpus.text_encoder
    names = corpus.concept_names[:2]
    if what == "str index":
        out = attempt(retrieve_candidates, "index.ivf", enc, names, descriptors=[])
    elif what == "str encoder":
        out = attempt(retrieve_candidates, index, "ViT-B-16", names, descriptors=[])
    elif what == "no encode":
        out = attempt(build_training_set, index, object(), names, descriptors=[])
    elif what == "bad cands":
        out = attempt(select_training_set, {"ids": [1]}, corpus.images)
    else:
        out = attempt(write_manifest, {"ids": [1]}, tmp_path_factory.getbasetemp() / "never.parquet")
    assert raised(out) and isinstance(out.exc, TypeError)
    _index_unchanged(index, before, probe)


@examples(40)
@given(st.data())
def test_retrieve_with_a_broken_encoder(world, data):
    corpus, index, before, probe = world
    how = data.draw(st.sampled_from(["nan", "zeros", "short", "object", "huge", "tiny", "int"]))
    enc = ArrayEncoder(how)
    names = data.draw(st.lists(st.sampled_from(corpus.concept_names), min_size=1, max_size=3, unique=True))
    out = attempt(retrieve_candidates, index, enc, names, descriptors=[", at night."], k=5, nprobe=2)
    _index_unchanged(index, before, probe)
    if how in ("nan", "zeros", "short", "object", "huge"):   # 1e300 does not fit float32
        assert raised(out), how
    else:
        assert not raised(out), out
        np.testing.assert_allclose(np.linalg.norm(out.prototypes, axis=1), 1.0, atol=1e-5)
