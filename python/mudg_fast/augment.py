"""Label-text augmentation: prompt templates, a descriptor pool, adaptive descriptor selection.

A class name becomes a prompt through a template (``"a photo of a {}."``); a *descriptor*
(``", which can be any color."``) augments the prompt by replacing the template's final period.
:func:`select_descriptors` chooses, from text alone, the descriptors that push confusable classes
apart (docs/method.rst §2, label augmentation, after Liao et al., "Multimodal Unsupervised
Domain Generalization by Retrieving Across the Modality Gap", ICLR 2025):

1. encode the plain prompts -> prototypes ``t_c``; group them with spherical k-means++
   (``n_groups`` groups of confusable classes);
2. for every descriptor and every group with >= 2 classes, compare the mean pairwise inner
   product of the group's augmented prompt embeddings (self-pairs included) with the same
   quantity for the plain prototypes;
3. score = number of groups where the augmented value is strictly lower; keep the top ``m``.

The encoder is anything with ``encode_text(list[str]) -> array (n, d)``: a CLIP text tower
(``mudg_fast.clip``) or the deterministic ``mudg_fast.synthetic.SyntheticTextEncoder``.
"""

from __future__ import annotations

import numbers
import os
import warnings
from dataclasses import dataclass
from importlib import resources

import numpy as np

__all__ = [
    "TEMPLATES",
    "get_template",
    "format_prompt",
    "augmented_prompts",
    "load_descriptor_pool",
    "select_descriptors",
    "DescriptorSelection",
]

# Per-dataset prompt templates. "{}" is the class name; every template ends with a period, which
# a descriptor replaces.
TEMPLATES: dict[str, str] = {
    "default": "a photo of a {}.",
    "imagenet": "a photo of a {}.",
    "flowers": "a photo of a {}, a type of flower.",
    "pets": "a photo of a {}, a type of pet.",
    "birds": "a photo of a {}, a type of bird.",
    "food": "a photo of {}, a type of food.",
    "aircraft": "a photo of a {}, a type of aircraft.",
    "cars": "a photo of a {}, a type of car.",
    "satellite": "a satellite photo of {}.",
    "textures": "a photo of a {} texture.",
    "scenes": "a photo of a {}, a type of place.",
    "actions": "a photo of a person doing {}.",
    "sketch": "a sketch of a {}.",
    "painting": "a painting of a {}.",
    "clipart": "a clipart image of a {}.",
    "cartoon": "a cartoon of a {}.",
    "product": "a product photo of a {}.",
    "art": "an artwork showing a {}.",
}


def get_template(template: str) -> str:
    """A template by name (a key of ``TEMPLATES``) or a template string containing ``"{}"``
    exactly once. Raises TypeError for a non-string, ValueError otherwise."""
    if not isinstance(template, str):
        raise TypeError(f"template must be a str, got {type(template).__name__}")
    if template in TEMPLATES:
        return TEMPLATES[template]
    n = template.count("{}")
    if n != 1:
        what = "no" if n == 0 else f"{n}"
        raise ValueError(f"template {template!r} has {what} '{{}}' placeholders; it needs exactly "
                         f"one (where the class name goes), or is one of {sorted(TEMPLATES)}")
    return template


def _check_classname(classname) -> str:
    if not isinstance(classname, str):
        raise TypeError(f"class names must be str, got {type(classname).__name__}")
    if not classname.strip():
        raise ValueError("class names must not be empty or whitespace")
    return classname


def format_prompt(template: str, classname: str, descriptor: str | None = None) -> str:
    """The prompt for one class: ``template`` with ``"{}"`` replaced by ``classname``.

    With a ``descriptor``, the template's final period (after trailing whitespace) is replaced
    by the descriptor: ``format_prompt("a photo of a {}.", "cat", ", which can be any color.")``
    -> ``"a photo of a cat, which can be any color."``. A template that does not end with a
    period gets the descriptor appended. ``None`` or ``""`` leaves the prompt unaugmented.
    ``template`` may be a key of ``TEMPLATES``.
    """
    template = get_template(template)
    _check_classname(classname)
    if descriptor is not None and not isinstance(descriptor, str):
        raise TypeError(f"descriptor must be a str or None, got {type(descriptor).__name__}")
    if descriptor:
        body = template.rstrip()
        if body.endswith("."):
            body = body[:-1]
        template = body + descriptor
    head, tail = template.split("{}", 1)     # str.replace, not str.format: braces in names are fine
    return head + classname + tail


def augmented_prompts(template: str, classnames, descriptors) -> list[list[str]]:
    """``prompts[i][c]``: class ``c`` with descriptor ``i`` (a list of ``len(descriptors)`` lists
    of ``len(classnames)`` prompts), the layout retrieval and training iterate over."""
    template = get_template(template)
    names = _check_classnames(classnames)
    return [[format_prompt(template, c, d) for c in names] for d in _check_pool(descriptors)]


# ---------------------------------------------------------------------------------------------
# Descriptor pool
# ---------------------------------------------------------------------------------------------
def _validate_descriptor(d: str, where: str) -> None:
    if not (d.startswith(",") or d.startswith(" ")):
        raise ValueError(f"{where}: descriptor {d!r} must start with ',' or a space (it replaces "
                         "the prompt's final period, e.g. ', which can be any color.')")
    if not d.endswith("."):
        raise ValueError(f"{where}: descriptor {d!r} must end with a period")
    if not any(ch.isalpha() for ch in d):
        raise ValueError(f"{where}: descriptor {d!r} has no words")
    if "{" in d or "}" in d:
        raise ValueError(f"{where}: descriptor {d!r} contains a brace; the class name goes in the "
                         "template, not the descriptor")


def load_descriptor_pool(path: str | os.PathLike | None = None) -> list[str]:
    """Reads a descriptor pool: one descriptor per line, in file order.

    ``path=None`` gives the built-in pool (``mudg_fast/data/descriptors.txt``: several hundred
    generic phrases about colour, size, texture, material, setting, viewpoint, lighting, season,
    style, count, condition, ...). In a file, trailing whitespace and line endings are stripped
    (leading spaces are kept: they are part of a descriptor), and blank lines and lines whose
    first non-blank character is ``#`` are skipped. Every descriptor must start with ``,`` or a
    space, end with a period, contain a word and no braces; duplicates are not allowed.

    Raises FileNotFoundError for a missing file and ValueError (with the line number) for a
    malformed line, a duplicate, an undecodable file or an empty pool.
    """
    if path is None:
        ref = resources.files("mudg_fast") / "data" / "descriptors.txt"
        text = ref.read_text(encoding="utf-8")
        where = "built-in descriptors.txt"
    else:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str, a path or None, got {type(path).__name__}")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as e:
            raise ValueError(f"{os.fspath(path)}: not UTF-8 text ({e})") from None
        where = os.fspath(path)
    pool: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        _validate_descriptor(line, f"{where}, line {lineno}")
        if line in first_line:
            raise ValueError(f"{where}, line {lineno}: duplicate descriptor {line!r} "
                             f"(first on line {first_line[line]})")
        first_line[line] = lineno
        pool.append(line)
    if not pool:
        raise ValueError(f"{where}: the descriptor pool is empty (no lines other than blanks and "
                         "'#' comments)")
    return pool


# ---------------------------------------------------------------------------------------------
# Adaptive selection
# ---------------------------------------------------------------------------------------------
@dataclass
class DescriptorSelection:
    """What :func:`select_descriptors` computed (``return_scores=True``).

    Attributes
    ----------
    descriptors : list of str, the ``m`` chosen descriptors, best first.
    scores : int64 (len(pool),), number of groups whose mean similarity the descriptor lowers.
    ranking : int64 (len(pool),), pool indices ordered by score (descending), ties by pool order.
    groups : int64 (n_classes,), the group of every class (k-means label of its prototype).
    scored_groups : int64 (g,), the groups with >= 2 classes (the ones that count).
    unaugmented : float64 (g,), mean pairwise inner product of the plain prototypes per scored
        group (self-pairs included).
    augmented : float64 (len(pool), g), the same with each descriptor.
    """

    descriptors: list
    scores: np.ndarray
    ranking: np.ndarray
    groups: np.ndarray
    scored_groups: np.ndarray
    unaugmented: np.ndarray
    augmented: np.ndarray


def _check_classnames(classnames) -> list[str]:
    if isinstance(classnames, str):
        raise TypeError("classnames must be a list of str, got a single str")
    names = list(classnames)
    if not names:
        raise ValueError("classnames is empty; give at least one class name")
    seen: dict[str, int] = {}
    for i, c in enumerate(names):
        _check_classname(c)
        if c in seen:
            raise ValueError(f"duplicate class name {c!r} (positions {seen[c]} and {i}); "
                             "class names must be distinct")
        seen[c] = i
    return names


def _check_pool(pool) -> list[str]:
    if isinstance(pool, str):
        raise TypeError("pool must be a list of descriptor strings, got a single str")
    pool = list(pool)
    if not pool:
        raise ValueError("the descriptor pool is empty")
    seen: dict[str, int] = {}
    for i, d in enumerate(pool):
        if not isinstance(d, str):
            raise TypeError(f"descriptors must be str, got {type(d).__name__} at position {i}")
        if d in seen:
            raise ValueError(f"duplicate descriptor {d!r} (positions {seen[d]} and {i})")
        seen[d] = i
    return pool


def _check_positive_int(v, name) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    return int(v)


def _encode(encoder, prompts: list[str], dim: int | None) -> np.ndarray:
    """encoder.encode_text(prompts) as a float32 (n, d) array with L2-normalised rows."""
    out = np.asarray(encoder.encode_text(prompts))
    if out.dtype.kind not in "fiu" or out.dtype == np.bool_:
        raise TypeError(f"encoder.encode_text returned dtype {out.dtype}; expected a float array")
    if out.ndim != 2 or out.shape[0] != len(prompts) or out.shape[1] == 0:
        raise ValueError(f"encoder.encode_text returned shape {out.shape} for {len(prompts)} "
                         "texts; expected (n_texts, dim)")
    if dim is not None and out.shape[1] != dim:
        raise ValueError(f"encoder.encode_text returned {out.shape[1]} dimensions, earlier {dim}")
    if not np.isfinite(out).all():
        raise ValueError("encoder.encode_text returned NaN or infinite values")
    raw = out
    with np.errstate(over="ignore", under="ignore"):
        out = np.array(raw, dtype=np.float32)        # own copy: normalised in place below
        norms = np.linalg.norm(out, axis=1, keepdims=True)
    # Rows whose float32 sum of squares overflows or underflows (or that overflow float32
    # themselves) are normalised in float64 after scaling by their largest magnitude.
    extreme = ~((norms > 1e-18) & (norms < 1e18))[:, 0]
    if extreme.any():
        rows = raw[extreme].astype(np.float64)
        scale = np.abs(rows).max(axis=1, keepdims=True)
        if (scale == 0).any():
            raise ValueError("encoder.encode_text returned an all-zero embedding; cannot normalise it")
        rows /= scale
        out[extreme] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        norms[extreme] = 1.0
    out /= norms
    return out


def _group_mean_similarity(emb: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """emb: float32 (b, n, d) with rows sorted by group; groups are ``[starts[g], starts[g] +
    sizes[g])``. Returns float64 (b, g): mean over i, j in the group of <e_i, e_j> (self-pairs
    included) = ||sum_i e_i||^2 / n_g^2. The same float64 operations for every slice ``b``, so
    identical embeddings give identical values."""
    sums = np.add.reduceat(emb.astype(np.float64), starts, axis=1)      # (b, g, d)
    return (sums * sums).sum(axis=-1) / (sizes.astype(np.float64) ** 2)


def select_descriptors(encoder, classnames, template: str, pool, m: int, n_groups: int = 16,
                       seed: int = 0, *, batch_size: int = 8192, return_scores: bool = False):
    """Chooses the ``m`` descriptors of ``pool`` that best spread confusable classes apart.

    Parameters
    ----------
    encoder : object with ``encode_text(list[str]) -> array (n, d)``. Only prompts are encoded;
        rows are L2-normalised here (as CLIP's are) before any statistic.
    classnames : list of distinct, non-empty str.
    template : a template string with one ``"{}"``, or a key of ``TEMPLATES``.
    pool : list of distinct descriptor strings (e.g. ``load_descriptor_pool()``). ``""`` is
        allowed and means "no augmentation" (it then ties with the plain prompt and scores 0).
    m : how many to keep, 1 <= m <= len(pool).
    n_groups : groups of confusable classes [16]; ``min(n_groups, len(classnames))`` are used.
    seed : seed of the spherical k-means++ grouping (``mudg_fast.KMeans``).
    batch_size : at most this many prompts per ``encode_text`` call (memory bound).
    return_scores : return a :class:`DescriptorSelection` instead of the list.

    Returns
    -------
    list of ``m`` descriptors, best first (score descending; equal scores keep pool order), or a
    DescriptorSelection.

    The classes are processed in sorted-name order, so the result does not depend on the order
    of ``classnames``. Augmented prompts identical to the plain prompt (descriptor ``""``) reuse
    the plain embedding, so they tie exactly and do not count as lower.

    A group with a single class cannot be spread and does not count; if no group has two
    classes (e.g. one class), every score is 0, the first ``m`` of the pool are returned and a
    UserWarning says so.
    """
    from .kmeans import KMeans

    if not hasattr(encoder, "encode_text") or not callable(encoder.encode_text):
        raise TypeError("encoder must have an encode_text(list[str]) method, "
                        f"got {type(encoder).__name__}")
    names = _check_classnames(classnames)
    template = get_template(template)
    pool = _check_pool(pool)
    m = _check_positive_int(m, "m")
    if m > len(pool):
        raise ValueError(f"m={m} is larger than the pool ({len(pool)} descriptors)")
    n_groups = _check_positive_int(n_groups, "n_groups")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    batch_size = _check_positive_int(batch_size, "batch_size")

    # Work in a canonical class order (sorted names), so the result does not depend on the order
    # the classes are given in (k-means++ seeding would otherwise see a different sequence).
    canon = np.array(sorted(range(len(names)), key=names.__getitem__), dtype=np.int64)
    names_in = names
    names = [names_in[i] for i in canon]
    base_prompts = [format_prompt(template, c) for c in names]
    protos = np.concatenate([_encode(encoder, base_prompts[i:i + batch_size], None)
                             for i in range(0, len(names), batch_size)])
    dim = protos.shape[1]
    k = min(n_groups, len(names))
    groups = KMeans(k, init="k-means++", spherical=True, seed=int(seed)).fit(protos).labels_
    groups = np.asarray(groups, dtype=np.int64)

    counts = np.bincount(groups, minlength=k)
    scored = np.flatnonzero(counts >= 2).astype(np.int64)
    n_pool = len(pool)
    if scored.size == 0:
        warnings.warn("no group has two or more classes, so no descriptor can spread classes "
                      "apart: all scores are 0 and the first m descriptors of the pool are "
                      "returned", UserWarning, stacklevel=2)
        scores = np.zeros(n_pool, dtype=np.int64)
        unaug = np.zeros(0)
        aug = np.zeros((n_pool, 0))
    else:
        # classes of the scored groups, sorted by group (stable: class order within a group)
        active = np.flatnonzero(counts[groups] >= 2)
        active = active[np.argsort(groups[active], kind="stable")]
        sizes = counts[scored]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        unaug = _group_mean_similarity(protos[active][None], starts, sizes)[0]
        aug = np.empty((n_pool, scored.size))
        per_call = max(1, batch_size // active.size)      # descriptors per encode_text call
        for d0 in range(0, n_pool, per_call):
            chunk = pool[d0:d0 + per_call]
            emb = np.empty((len(chunk), active.size, dim), dtype=np.float32)
            todo, where = [], []
            for j, d in enumerate(chunk):
                for a, c in enumerate(active):
                    p = format_prompt(template, names[c], d)
                    if p == base_prompts[c]:           # unaugmented: reuse, bit for bit
                        emb[j, a] = protos[c]
                    else:
                        todo.append(p)
                        where.append((j, a))
            for t0 in range(0, len(todo), batch_size):
                e = _encode(encoder, todo[t0:t0 + batch_size], dim)
                for (j, a), row in zip(where[t0:t0 + batch_size], e):
                    emb[j, a] = row
            aug[d0:d0 + len(chunk)] = _group_mean_similarity(emb, starts, sizes)
        scores = (aug < unaug[None, :]).sum(axis=1).astype(np.int64)
    groups_in = np.empty_like(groups)
    groups_in[canon] = groups                   # back to the caller's class order
    groups = groups_in
    ranking = np.argsort(-scores, kind="stable").astype(np.int64)
    chosen = [pool[i] for i in ranking[:m]]
    if not return_scores:
        return chosen
    return DescriptorSelection(descriptors=chosen, scores=scores, ranking=ranking, groups=groups,
                               scored_groups=scored, unaugmented=unaug, augmented=aug)
