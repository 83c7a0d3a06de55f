"""Prompt templates, the descriptor pool and adaptive descriptor selection (docs/method.rst §2).

select_descriptors is checked against a plain loop-based numpy reference written here from the
docs/method.rst §2, on a fake bag-of-words encoder and on the synthetic text encoder, plus invariances
and input validation.
"""

import hashlib
import re

import numpy as np
import pytest

import mudg_fast
from mudg_fast import augment
from mudg_fast.augment import (TEMPLATES, format_prompt, load_descriptor_pool, select_descriptors)
from mudg_fast.synthetic import SyntheticTextEncoder, concept_vocabulary


# ---------------------------------------------------------------------------------------------
# Test encoders
# ---------------------------------------------------------------------------------------------
class BagOfWordsEncoder:
    """Deterministic fake text encoder: sum of SHA-256 seeded word vectors plus a common offset
    (so prompts are positively correlated, like CLIP's). Counts its calls."""

    def __init__(self, dim=24, common=1.5):
        self.dim, self.common, self.calls, self.texts = dim, common, 0, 0
        self._base = self._vec("<common>")

    def _vec(self, word):
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.dim)

    def encode_text(self, texts):
        self.calls += 1
        self.texts += len(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            v = self.common * self._base
            for w in re.findall(r"[a-z]+", t.lower()):
                v = v + self._vec(w)
            out[i] = v / np.linalg.norm(v)
        return out


class TableEncoder:
    """Returns fixed vectors for known prompts; everything else goes to a fallback encoder."""

    def __init__(self, table, fallback):
        self.table, self.fallback = table, fallback

    def encode_text(self, texts):
        out = self.fallback.encode_text(texts)
        for i, t in enumerate(texts):
            if t in self.table:
                out[i] = self.table[t]
        return out


def reference_selection(encoder, classnames, template, pool, m, n_groups=16, seed=0):
    """docs/method.rst §2, written as plainly as possible (loops, float64 inner products)."""
    names = sorted(classnames)                       # documented canonical order
    plain = [template.replace("{}", c) for c in names]
    t = encoder.encode_text(plain).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    k = min(n_groups, len(names))
    labels = mudg_fast.KMeans(k, init="k-means++", spherical=True, seed=seed).fit(t).labels_

    def mean_pairwise(vectors, members):
        total = 0.0
        for i in members:
            for j in members:
                total += float(np.dot(vectors[i].astype(np.float64), vectors[j].astype(np.float64)))
        return total / len(members) ** 2

    groups = [[i for i in range(len(names)) if labels[i] == g] for g in range(k)]
    groups = [g for g in groups if len(g) >= 2]
    scores, margins = [], []
    for d in pool:
        if d:
            body = template[:-1] if template.endswith(".") else template
            prompts = [(body + d).replace("{}", c) for c in names]
        else:
            prompts = plain
        a = encoder.encode_text(prompts).astype(np.float32)
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        s = 0
        for g in groups:
            diff = mean_pairwise(a, g) - mean_pairwise(t, g)
            if diff != 0:
                margins.append(abs(diff))
            if diff < 0:
                s += 1
        scores.append(s)
    order = sorted(range(len(pool)), key=lambda i: (-scores[i], i))
    return [pool[i] for i in order[:m]], np.array(scores), margins


CLASSES = ["cat", "tiger", "lion", "dog", "wolf", "fox", "car", "truck", "bus", "van", "apple",
           "pear", "plum", "rose", "tulip", "oak tree", "pine tree", "boat", "ship", "canoe"]


# ---------------------------------------------------------------------------------------------
# Selection against the reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_groups", [1, 3, 6, 16])
@pytest.mark.parametrize("seed", [0, 7])
def test_matches_reference_on_fake_encoder(n_groups, seed):
    enc = BagOfWordsEncoder()
    pool = load_descriptor_pool()[:120] + [""]
    got = select_descriptors(enc, CLASSES, "a photo of a {}.", pool, 10, n_groups=n_groups,
                             seed=seed, return_scores=True)
    want, want_scores, margins = reference_selection(enc, CLASSES, "a photo of a {}.", pool, 10,
                                                     n_groups=n_groups, seed=seed)
    # no near-ties that float rounding could flip: the comparison below is meaningful and exact
    assert min(margins) > 1e-9
    np.testing.assert_array_equal(got.scores, want_scores)
    assert got.descriptors == want
    assert select_descriptors(enc, CLASSES, "a photo of a {}.", pool, 10, n_groups=n_groups,
                              seed=seed) == want
    assert len(set(want_scores.tolist())) > 1          # the pool is not degenerate for this encoder


@pytest.mark.parametrize("template", ["default", "flowers", "satellite", "textures"])
def test_matches_reference_on_synthetic_encoder(template):
    enc = SyntheticTextEncoder(seed=3)
    names = concept_vocabulary()[::9][:40]
    pool = load_descriptor_pool()[::5]
    tmpl = TEMPLATES[template]
    got = select_descriptors(enc, names, template, pool, 16, n_groups=8, seed=1, return_scores=True)
    want, want_scores, margins = reference_selection(enc, names, tmpl, pool, 16, n_groups=8, seed=1)
    assert min(margins) > 1e-9
    np.testing.assert_array_equal(got.scores, want_scores)
    assert got.descriptors == want
    # the synthetic encoder gives selection something to choose between
    assert want_scores.min() < want_scores.max()


def test_result_object_is_consistent():
    enc = BagOfWordsEncoder()
    pool = load_descriptor_pool()[:60]
    r = select_descriptors(enc, CLASSES, "default", pool, 7, n_groups=5, return_scores=True)
    assert isinstance(r, augment.DescriptorSelection)
    assert r.scores.dtype == np.int64 and r.scores.shape == (60,)
    assert r.ranking.dtype == np.int64 and sorted(r.ranking.tolist()) == list(range(60))
    assert r.descriptors == [pool[i] for i in r.ranking[:7]]
    # ranking: score descending, ties by pool position
    keys = [(-r.scores[i], i) for i in r.ranking]
    assert keys == sorted(keys)
    assert r.groups.shape == (len(CLASSES),) and r.groups.dtype == np.int64
    counts = np.bincount(r.groups)
    np.testing.assert_array_equal(r.scored_groups, np.flatnonzero(counts >= 2))
    assert r.augmented.shape == (60, r.scored_groups.size)
    np.testing.assert_array_equal(r.scores, (r.augmented < r.unaugmented).sum(1))
    assert ((0 <= r.scores) & (r.scores <= r.scored_groups.size)).all()
    # group statistic equals the mean pairwise inner product, checked directly for one group
    plain = enc.encode_text([format_prompt("default", c) for c in CLASSES])
    g = r.scored_groups[0]
    members = np.flatnonzero(r.groups == g)
    direct = (plain[members].astype(np.float64) @ plain[members].astype(np.float64).T).mean()
    assert r.unaugmented[0] == pytest.approx(direct, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Invariances
# ---------------------------------------------------------------------------------------------
def test_independent_of_class_order(rng):
    enc = BagOfWordsEncoder()
    pool = load_descriptor_pool()[:80]
    a = select_descriptors(enc, CLASSES, "default", pool, 12, n_groups=5, return_scores=True)
    perm = rng.permutation(len(CLASSES))
    b = select_descriptors(enc, [CLASSES[i] for i in perm], "default", pool, 12, n_groups=5,
                           return_scores=True)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.descriptors == b.descriptors
    np.testing.assert_array_equal(a.groups[perm], b.groups)


def test_empty_descriptor_ties_and_scores_zero():
    for enc in (BagOfWordsEncoder(), SyntheticTextEncoder(seed=0)):
        pool = ["", ", which can be any color.", ", in the snow."]
        r = select_descriptors(enc, CLASSES, "default", pool, 3, n_groups=4, return_scores=True)
        assert r.scores[0] == 0
        np.testing.assert_array_equal(r.augmented[0], r.unaugmented)   # bit-identical tie


def test_spreading_and_collapsing_descriptors_score_all_and_none():
    """A descriptor that makes every class prompt orthogonal lowers every group's similarity (to
    1/n_g); one that maps every class to the same vector raises it to 1."""
    fallback = BagOfWordsEncoder(dim=len(CLASSES) + 4)
    table = {}
    for i, c in enumerate(CLASSES):
        e = np.zeros(fallback.dim, dtype=np.float32)
        e[i] = 1
        table[f"a photo of a {c}, spread."] = e
        table[f"a photo of a {c}, collapse."] = np.ones(fallback.dim, dtype=np.float32)
    enc = TableEncoder(table, fallback)
    pool = [", neutral one.", ", spread.", ", collapse.", ", neutral two."]
    r = select_descriptors(enc, CLASSES, "default", pool, 2, n_groups=4, return_scores=True)
    assert r.scored_groups.size >= 1
    assert r.scores[1] == r.scored_groups.size
    assert r.scores[2] == 0
    assert r.descriptors[0] == ", spread."


def test_top_m_is_a_prefix_and_deterministic():
    enc = SyntheticTextEncoder(seed=0)
    names = concept_vocabulary()[:30]
    pool = load_descriptor_pool()[:100]
    full = select_descriptors(enc, names, "default", pool, 20, n_groups=6)
    assert select_descriptors(enc, names, "default", pool, 5, n_groups=6) == full[:5]
    assert select_descriptors(enc, names, "default", pool, 20, n_groups=6) == full
    assert len(full) == len(set(full)) == 20 and set(full) <= set(pool)


def test_batching_does_not_change_scores():
    enc = BagOfWordsEncoder()
    pool = load_descriptor_pool()[:50]
    a = select_descriptors(enc, CLASSES, "default", pool, 5, n_groups=4, return_scores=True)
    calls0 = enc.calls
    b = select_descriptors(enc, CLASSES, "default", pool, 5, n_groups=4, batch_size=7,
                           return_scores=True)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.augmented, b.augmented)
    assert enc.calls - calls0 > 50          # really made many small calls


def test_few_calls_for_large_batches():
    enc = BagOfWordsEncoder()
    pool = load_descriptor_pool()[:100]
    select_descriptors(enc, CLASSES, "default", pool, 5, n_groups=4)
    # the plain prompts once, then at most ceil(100 * 20 / 8192) calls of augmented prompts
    assert enc.calls <= 2 and enc.texts <= len(CLASSES) * (len(pool) + 1)


def test_no_group_of_two_warns_and_keeps_pool_order():
    enc = BagOfWordsEncoder()
    pool = load_descriptor_pool()[:10]
    with pytest.warns(UserWarning, match="no group has two"):
        got = select_descriptors(enc, ["cat"], "default", pool, 3)
    assert got == pool[:3]
    with pytest.warns(UserWarning):
        r = select_descriptors(enc, ["cat", "dog", "car"], "default", pool, 3, n_groups=16,
                               return_scores=True)       # 3 groups for 3 distinct classes
    assert (r.scores == 0).all() and r.descriptors == pool[:3]


def test_two_classes_one_group_by_hand():
    enc = BagOfWordsEncoder()
    pool = [", which is red.", ", which is blue.", ", in the snow."]
    r = select_descriptors(enc, ["cat", "dog"], "default", pool, 3, n_groups=1, return_scores=True)
    t = enc.encode_text(["a photo of a cat.", "a photo of a dog."]).astype(np.float64)
    plain = (1 + 1 + 2 * t[0] @ t[1]) / 4
    for i, d in enumerate(pool):
        a = enc.encode_text([f"a photo of a cat{d}", f"a photo of a dog{d}"]).astype(np.float64)
        aug = (1 + 1 + 2 * a[0] @ a[1]) / 4
        assert r.scores[i] == int(aug < plain)
        assert r.augmented[i, 0] == pytest.approx(aug, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(classnames=[]), ValueError, "empty"),
    (dict(classnames="cat"), TypeError, "single str"),
    (dict(classnames=["cat", "dog", "cat"]), ValueError, "duplicate class name"),
    (dict(classnames=["cat", ""]), ValueError, "empty"),
    (dict(classnames=["cat", 3]), TypeError, "str"),
    (dict(m=0), ValueError, "m must be >= 1"),
    (dict(m=2.0), TypeError, "integer"),
    (dict(m=True), TypeError, "integer"),
    (dict(m=11), ValueError, "larger than the pool"),
    (dict(template="a photo of a cat."), ValueError, "placeholder"),
    (dict(template="{} and {}."), ValueError, "placeholder"),
    (dict(template=None), TypeError, "template must be a str"),
    (dict(pool=[]), ValueError, "empty"),
    (dict(pool=", in the snow."), TypeError, "single str"),
    (dict(pool=[", a.", ", a."]), ValueError, "duplicate descriptor"),
    (dict(pool=[", a.", None]), TypeError, "descriptors must be str"),
    (dict(n_groups=0), ValueError, "n_groups"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(encoder=object()), TypeError, "encode_text"),
])
def test_validation(kwargs, exc, match):
    args = dict(encoder=BagOfWordsEncoder(), classnames=["cat", "dog", "car"], template="default",
                pool=load_descriptor_pool()[:10], m=3)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        select_descriptors(**args)


class BadEncoder:
    def __init__(self, result):
        self.result = result

    def encode_text(self, texts):
        return self.result(len(texts))


@pytest.mark.parametrize("result, exc, match", [
    (lambda n: np.ones((n + 1, 4)), ValueError, "shape"),
    (lambda n: np.ones(n), ValueError, "shape"),
    (lambda n: np.full((n, 4), np.nan), ValueError, "NaN"),
    (lambda n: np.zeros((n, 4)), ValueError, "all-zero"),
    (lambda n: np.array([["a"] * 4] * n), TypeError, "dtype"),
])
def test_bad_encoder_output(result, exc, match):
    with pytest.raises(exc, match=match):
        select_descriptors(BadEncoder(result), ["cat", "dog"], "default", [", a."], 1)


# ---------------------------------------------------------------------------------------------
# Templates and prompts
# ---------------------------------------------------------------------------------------------
def test_format_prompt():
    assert format_prompt("a photo of a {}.", "cat") == "a photo of a cat."
    assert format_prompt("a photo of a {}.", "cat", ", which can be any color.") == \
        "a photo of a cat, which can be any color."
    assert format_prompt("flowers", "rose", ", in the rain.") == \
        "a photo of a rose, a type of flower, in the rain."
    assert format_prompt("a photo of a {}.  ", "cat", ", in the snow.") == \
        "a photo of a cat, in the snow."
    assert format_prompt("itap of a {}", "cat", ", in the snow.") == "itap of a cat, in the snow."
    assert format_prompt("a photo of a {}.", "cat", "") == \
        format_prompt("a photo of a {}.", "cat", None)
    # braces in class names are kept literally (no str.format)
    assert format_prompt("a photo of a {}.", "{x} cat") == "a photo of a {x} cat."
    with pytest.raises(ValueError, match="placeholder"):
        format_prompt("a photo.", "cat")
    with pytest.raises(TypeError):
        format_prompt("a photo of a {}.", "cat", 3)
    with pytest.raises(ValueError):
        format_prompt("a photo of a {}.", "  ")


def test_templates_are_well_formed():
    assert {"default", "flowers", "satellite", "aircraft", "food", "pets", "cars", "textures",
            "sketch"} <= set(TEMPLATES)
    for name, t in TEMPLATES.items():
        assert t.count("{}") == 1, name
        assert t.endswith("."), name
        assert augment.get_template(name) == t


def test_augmented_prompts_layout():
    p = augment.augmented_prompts("default", ["cat", "dog"], [", in the snow.", ", at night."])
    assert p == [["a photo of a cat, in the snow.", "a photo of a dog, in the snow."],
                 ["a photo of a cat, at night.", "a photo of a dog, at night."]]


# ---------------------------------------------------------------------------------------------
# Descriptor pool
# ---------------------------------------------------------------------------------------------
def test_builtin_pool():
    pool = load_descriptor_pool()
    assert 400 <= len(pool) <= 700
    assert len(set(pool)) == len(pool)
    assert len({d.lower().strip(" ,.") for d in pool}) == len(pool)      # not trivially repeated
    for d in pool:
        assert d.startswith(", ") and d.endswith(".") and d == d.rstrip(), d
        assert "{" not in d and "}" not in d and "  " not in d, d
        assert re.fullmatch(r", [a-z0-9][a-z0-9 ,'\-]*[a-z0-9]\.", d), d
        assert format_prompt("default", "cat", d).startswith("a photo of a cat, ")
    # covers many aspects, not one template repeated
    firsts = {d.split()[1] for d in pool}
    assert len(firsts) >= 20


def test_load_pool_from_file(tmp_path):
    f = tmp_path / "pool.txt"
    f.write_text("# my pool\n\n, which is red.\n   # indented comment\n, in the snow.  \n"
                 " with a leading space.\r\n", encoding="utf-8")
    assert load_descriptor_pool(f) == [", which is red.", ", in the snow.",
                                       " with a leading space."]
    assert load_descriptor_pool(str(f)) == load_descriptor_pool(f)


@pytest.mark.parametrize("text, match", [
    ("", "empty"),
    ("# only comments\n\n   \n", "empty"),
    (", which is red.\nwhich is blue.\n", "line 2"),
    (", which is red\n", "period"),
    (", which is red.\n, 123.\n", "no words"),
    (", which is {} red.\n", "brace"),
    (", a.\n, b.\n, a.\n", "line 3: duplicate"),
])
def test_load_pool_errors(tmp_path, text, match):
    f = tmp_path / "pool.txt"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        load_descriptor_pool(f)


def test_load_pool_bad_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_descriptor_pool(tmp_path / "missing.txt")
    f = tmp_path / "latin1.txt"
    f.write_bytes(", caf\xe9 au lait.\n".encode("latin-1"))
    with pytest.raises(ValueError, match="UTF-8"):
        load_descriptor_pool(f)
    with pytest.raises(TypeError):
        load_descriptor_pool(3)
