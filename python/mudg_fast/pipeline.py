"""From label names to a pseudo-labelled training set (docs/method.rst §2-§5) and its manifest.

``build_training_set(index, encoder, classnames, ...)`` runs: class prototypes -> adaptive
descriptor selection -> one list-major batch search of every augmented prompt -> rank-vote
pseudo-labels -> similarity filter -> per-class k-means selection. The encoder is anything with
``encode_text(list[str]) -> (n, d) float32`` (``mudg_fast.clip.ClipEncoder``, or the synthetic
text encoder of ``mudg_fast.synthetic``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .index import IVFIndex, atomic_write
from .retrieve import combine_retrievals
from .select import check_threshold, select_by_clustering, similarity_to_prototypes

__all__ = ["Candidates", "TrainingSet", "build_training_set", "check_classnames", "retrieve_candidates",
           "select_training_set", "write_manifest"]

logger = logging.getLogger("mudg_fast.pipeline")


def _reporter(log):
    """The progress messages of a retrieval go to the ``mudg_fast.pipeline`` logger (INFO) and,
    when ``log`` is a callable, to it as well."""
    if log is not None and not callable(log):
        raise TypeError(f"log must be None or a callable(str), got {type(log).__name__}")

    def say(msg: str) -> None:
        logger.info("%s", msg)
        if log is not None:
            log(msg)

    return say


def check_classnames(classnames) -> list[str]:
    """Validated list of class names: non-empty strings, no duplicates (after stripping)."""
    if isinstance(classnames, str) or classnames is None:
        raise TypeError("classnames must be a list of strings, not a single string")
    names = list(classnames)
    if not names:
        raise ValueError("the class list is empty: give at least one class name")
    clean = []
    for i, c in enumerate(names):
        if not isinstance(c, str):
            raise TypeError(f"class name #{i} is {type(c).__name__}, expected str")
        c = c.strip()
        if not c:
            raise ValueError(f"class name #{i} is empty")
        clean.append(c)
    seen, dups = set(), []
    for c in clean:
        if c in seen:
            dups.append(c)
        seen.add(c)
    if dups:
        raise ValueError(f"duplicate class names: {sorted(set(dups))}; every class needs a distinct name")
    return clean


@dataclass
class TrainingSet:
    """The selected, pseudo-labelled images (rows sorted by id)."""

    ids: np.ndarray            # int64 source ids (global row ids in the embedding shards)
    labels: np.ndarray         # int64 class index
    classnames: list[str]
    vote_score: np.ndarray     # float64: the winning class's sum of (K - rank)
    similarity: np.ndarray     # float32: <image, unaugmented class prototype>
    retrieval_score: np.ndarray  # float32: best search score among the winning class's queries
    descriptors: list[str]
    summary: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.ids)

    def counts(self) -> dict[str, int]:
        """Selected images per class name, in class order."""
        c = np.bincount(self.labels, minlength=len(self.classnames))
        return {name: int(n) for name, n in zip(self.classnames, c)}


def _encode(encoder, texts):
    x = np.asarray(encoder.encode_text(list(texts)))
    if x.dtype.kind not in "fiu" or x.dtype == np.bool_:
        raise TypeError(f"encoder.encode_text returned dtype {x.dtype}; expected a float array")
    if x.ndim != 2 or x.shape[0] != len(texts) or x.shape[1] == 0:
        raise ValueError(f"encoder.encode_text returned shape {x.shape} for {len(texts)} texts")
    with np.errstate(over="ignore"):
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError("encoder.encode_text returned NaN, infinite or beyond-float32 values")
    return x


def _check_text_list(values, what: str) -> list:
    """A list of distinct str (descriptors, a descriptor pool); a single str is refused."""
    if isinstance(values, str):
        raise TypeError(f"{what} must be a list of strings, got a single str")
    values = list(values)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise TypeError(f"{what} must hold strings, got {type(v).__name__} at position {i}")
    if len(set(values)) != len(values):
        dups = sorted({v for v in values if values.count(v) > 1})
        raise ValueError(f"duplicate {what}: {dups}")
    return values


@dataclass
class Candidates:
    """Pseudo-labelled retrievals before filtering and selection (docs/method.rst §3)."""

    ids: np.ndarray          # int64, unique, ascending
    labels: np.ndarray       # int64 class index
    votes: np.ndarray        # float64 winning vote
    best_score: np.ndarray   # float32 best retrieval score for the winning class
    n_tied: np.ndarray       # int64 classes tied at the top vote
    prototypes: np.ndarray   # float32 (C, d) unaugmented class-prompt embeddings
    classnames: list[str]
    descriptors: list[str]
    template: str
    summary: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.ids)


def _plan_rerank(index, k: int, rerank, rerank_source, say) -> tuple[int, object]:
    """(shortlist length, source) for the retrieval search; (0, None) when not re-ranking.

    rerank None: ``default_rerank(codec, k)`` when the original vectors are known (rerank_source,
    or the img_emb folder recorded in the index metadata and still in place), else off.
    rerank 0: off. rerank N: on; the source is rerank_source or the recorded folder ("auto")."""
    from .reranking import default_rerank  # noqa: PLC0415

    if rerank is not None:
        if isinstance(rerank, bool) or not isinstance(rerank, (int, np.integer)) or rerank < 0:
            raise ValueError(f"rerank must be None (automatic), 0 (off) or a shortlist length >= 1, got {rerank!r}")
        rerank = int(rerank)
        if rerank == 0:
            return 0, None
        return max(rerank, k), ("auto" if rerank_source is None else rerank_source)
    n = default_rerank(getattr(index, "codec", "f32"), k)
    if not n:
        return 0, None
    if rerank_source is not None:
        return n, rerank_source
    if not (getattr(index, "metadata", None) or {}).get("source"):
        say(f"not re-ranking: the {index.codec} index records no source of its vectors (give rerank_source=)")
        return 0, None
    from .reranking import _source_from_metadata  # noqa: PLC0415

    try:
        _source_from_metadata(index).close()
    except ValueError as e:
        say(f"not re-ranking: {e}")
        return 0, None
    return n, "auto"


def retrieve_candidates(index: IVFIndex, encoder, classnames, *, template: str = "a photo of a {}.",
                        descriptors=None, pool=None, m: int = 16, n_groups: int = 16, k: int = 64, nprobe: int = 8,
                        rerank: int | None = None, rerank_source=None, seed: int = 0,
                        num_threads: int | None = None, log=None) -> Candidates:
    """Encodes the class prompts (plain and with each descriptor), searches them all in one
    list-major batch, and rank-votes the results into pseudo-labels.

    descriptors : the label-text descriptors; None selects ``m`` from ``pool`` (the built-in pool
        when None) with ``mudg_fast.augment.select_descriptors``; an empty list uses the plain
        prompt only. k : neighbours per query [64], at most the index size. nprobe : lists probed [8].
    rerank : shortlist length re-scored exactly from the original vectors (see
        :func:`mudg_fast.rerank`). None [default]: automatic, ``mudg_fast.reranking.default_rerank``
        (max(4 k, 100) for sq4 indexes, max(2 k, 20) for sq8, off for f32 / f16) when the vectors
        are known; 0: off.
    rerank_source : the original vectors: an img_emb folder of .npy shards, a .npy file, an array
        or memory map, or a callable ids -> rows; None: the folder ``build_index`` recorded in the
        index metadata (``source="auto"``).
    log : an optional callable(str) that receives the progress messages (descriptors chosen,
        re-ranking, queries retrieved); they are logged to ``mudg_fast.pipeline`` at INFO level
        in any case.
    """
    from . import augment  # noqa: PLC0415

    say = _reporter(log)
    names = check_classnames(classnames)
    template = augment.get_template(template)
    missing = [a for a in ("ntotal", "dim", "search") if not hasattr(index, a)]
    if missing:
        raise TypeError(f"index must be an IVFIndex, got {type(index).__name__}")
    if not callable(getattr(encoder, "encode_text", None)):
        raise TypeError(f"encoder must have an encode_text(list[str]) method, got {type(encoder).__name__}")
    if index.ntotal == 0:
        raise ValueError("the index is empty: add image embeddings before retrieving")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > index.ntotal:
        raise ValueError(f"k={k} neighbours per query is larger than the index ({index.ntotal} images)")
    t0 = time.perf_counter()
    prototypes = _encode(encoder, [augment.format_prompt(template, c) for c in names])
    if prototypes.shape[1] != index.dim:
        raise ValueError(f"the encoder gives {prototypes.shape[1]}-d vectors but the index holds {index.dim}-d ones")
    norms = np.linalg.norm(prototypes.astype(np.float64), axis=1, keepdims=True)
    if (norms == 0).any():
        bad = names[int(np.flatnonzero(norms[:, 0] == 0)[0])]
        raise ValueError(f"encoder.encode_text gave an all-zero prototype (class {bad!r}); cannot normalise it")
    prototypes = (prototypes / norms).astype(np.float32)
    if descriptors is None:
        pool = augment.load_descriptor_pool() if pool is None else _check_text_list(pool, "descriptor pool")
        descriptors = augment.select_descriptors(encoder, names, template, pool, m=min(m, len(pool)),
                                                 n_groups=n_groups, seed=seed)
        say(f"selected {len(descriptors)} descriptors from a pool of {len(pool)}")
    descriptors = _check_text_list(descriptors, "descriptors")
    variants = descriptors if descriptors else [None]
    prompts = [augment.format_prompt(template, c, d) for d in variants for c in names]
    queries = _encode(encoder, prompts)
    t_encode = time.perf_counter() - t0
    n_rerank, source = _plan_rerank(index, k, rerank, rerank_source, say)
    t1 = time.perf_counter()
    if n_rerank:
        scores, ids = index.search(queries, k, nprobe=nprobe, rerank=n_rerank, source=source)
        auto = isinstance(source, str) and source == "auto"
        where = index.metadata["source"]["img_emb"] if auto else "rerank_source"
        say(f"re-ranked a shortlist of {n_rerank} per query exactly from {where}")
    else:
        scores, ids = index.search(queries, k, nprobe=nprobe)
    t_search = time.perf_counter() - t1
    shape = (len(variants), len(names), k)
    comb = combine_retrievals(ids.reshape(shape), scores.reshape(shape), seed=seed, return_details=True,
                              num_threads=num_threads)
    say(f"{len(prompts)} queries retrieved {len(comb)} unique images")
    summary = {"classes": len(names), "template": template, "descriptors": descriptors, "k": k, "nprobe": nprobe,
               "rerank": n_rerank, "seed": seed, "queries": len(prompts), "retrieved_unique": int(len(comb)),
               "index": {"nlist": index.nlist, "codec": index.codec, "ntotal": index.ntotal, "dim": index.dim},
               "seconds": {"encode": t_encode, "search": t_search}}
    return Candidates(ids=comb.ids, labels=comb.labels, votes=comb.votes, best_score=comb.best_score,
                      n_tied=comb.n_tied, prototypes=prototypes, classnames=names, descriptors=descriptors,
                      template=template, summary=summary)


def _fetch(embeddings, ids, dim):
    if callable(embeddings):
        emb = embeddings(ids)
    elif hasattr(embeddings, "reconstruct"):
        emb = embeddings.reconstruct(ids)
    elif hasattr(embeddings, "fetch"):  # EmbeddingShards
        emb = embeddings.fetch(ids)
    else:
        a = embeddings if isinstance(embeddings, np.ndarray) else np.asarray(embeddings)
        if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
            raise TypeError("embeddings must be an IVFIndex, a callable ids -> (n, d) or a numeric array "
                            f"indexed by id, got {type(embeddings).__name__} of dtype {a.dtype}")
        if a.ndim != 2:
            raise ValueError(f"an embeddings array must be 2-D (n, {dim}), got shape {a.shape}")
        if len(ids) and (ids.min() < 0 or ids.max() >= a.shape[0]):
            bad = ids.min() if ids.min() < 0 else ids.max()
            raise ValueError(f"id {bad} is out of range for an embeddings array of {a.shape[0]} rows")
        if a.dtype == np.float32 and a.flags.c_contiguous:
            from . import _core  # parallel row copies (also from memory maps)

            emb = _core.gather_rows(a, np.ascontiguousarray(ids, dtype=np.int64), 0)
        else:
            emb = a[ids]
    emb = np.asarray(emb)
    if emb.dtype.kind not in "fiu" or emb.dtype == np.bool_:
        raise TypeError(f"embeddings for {len(ids)} ids came back with dtype {emb.dtype}")
    emb = emb.astype(np.float32, copy=False)
    if emb.shape != (len(ids), dim):
        raise ValueError(f"embeddings for {len(ids)} ids came back with shape {emb.shape}")
    return emb


def _check_candidates(c) -> None:
    if not isinstance(c, Candidates):
        raise TypeError(f"cands must be a Candidates (from retrieve_candidates), got {type(c).__name__}")
    ids = np.asarray(c.ids)
    if ids.dtype.kind not in "iu" or ids.ndim != 1:
        raise ValueError(f"cands.ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    for name in ("labels", "votes", "best_score"):
        v = np.asarray(getattr(c, name))
        if v.shape != ids.shape:
            raise ValueError(f"cands.{name} has shape {v.shape} but cands.ids has {ids.shape}")
    p = np.asarray(c.prototypes)
    if p.ndim != 2 or p.shape[0] != len(c.classnames):
        raise ValueError(f"cands.prototypes must have one row per class ({len(c.classnames)}), got {p.shape}")


def select_training_set(cands: Candidates, embeddings, *, threshold: float = 0.25, k_per_class: int = 48,
                        strategy: str = "random", seed: int = 0, num_threads: int | None = None) -> TrainingSet:
    """Similarity filter against the unaugmented prototypes, then per-class k-means selection
    (docs/method.rst §4-§5). ``embeddings``: an IVFIndex (reconstructed codes), an array / memory map indexed by
    id, or a callable ``ids -> (n, d)`` (e.g. reading the source shards)."""
    _check_candidates(cands)
    threshold = check_threshold(threshold)
    # checked here too, not only when some candidate passes the filter and reaches the selection
    select_by_clustering(np.zeros((0, 1), np.float32), np.zeros(0, np.int64), k_per_class, strategy=strategy,
                         seed=seed, num_threads=num_threads)
    t0 = time.perf_counter()
    dim = cands.prototypes.shape[1]
    emb = _fetch(embeddings, cands.ids, dim) if len(cands) else np.zeros((0, dim), np.float32)
    sim = similarity_to_prototypes(emb, cands.labels, cands.prototypes, num_threads=num_threads)
    kept = np.flatnonzero(sim > threshold)
    sel = kept[select_by_clustering(emb[kept], cands.labels[kept], k_per_class, strategy=strategy, seed=seed,
                                    num_threads=num_threads)] if len(kept) else kept
    C = len(cands.classnames)
    summary = dict(cands.summary)
    summary.update({
        "threshold": threshold, "k_per_class": k_per_class, "strategy": strategy, "selection_seed": seed,
        "after_filter": int(len(kept)), "selected": int(len(sel)),
        "per_class": {
            name: {"retrieved": int(r), "after_filter": int(f), "selected": int(s)}
            for name, r, f, s in zip(cands.classnames, np.bincount(cands.labels, minlength=C),
                                     np.bincount(cands.labels[kept], minlength=C),
                                     np.bincount(cands.labels[sel], minlength=C))},
    })
    summary.setdefault("seconds", {})
    summary["seconds"] = dict(summary["seconds"], select=time.perf_counter() - t0)
    return TrainingSet(ids=cands.ids[sel], labels=cands.labels[sel], classnames=cands.classnames,
                       vote_score=cands.votes[sel], similarity=sim[sel], retrieval_score=cands.best_score[sel],
                       descriptors=cands.descriptors, summary=summary)


def build_training_set(index: IVFIndex, encoder, classnames, *, template: str = "a photo of a {}.",
                       descriptors=None, pool=None, m: int = 16, n_groups: int = 16, k: int = 64, nprobe: int = 8,
                       rerank: int | None = None, rerank_source=None,
                       threshold: float = 0.25, k_per_class: int = 48, strategy: str = "random", seed: int = 0,
                       embeddings=None, num_threads: int | None = None, log=None) -> TrainingSet:
    """Retrieves, pseudo-labels, filters and selects a training set for ``classnames``
    (retrieve_candidates, then select_training_set).

    rerank, rerank_source : exact re-ranking of the retrieval (see :func:`retrieve_candidates`;
        automatic for sq4 indexes whose source is known).
    embeddings : where the selection reads image embeddings: an array / memory map indexed by
        id, a callable ``ids -> (n, d)``, or None to reconstruct them from the index.
    log : an optional callable(str) that also receives the progress messages (see
        :func:`retrieve_candidates`).
    """
    cands = retrieve_candidates(index, encoder, classnames, template=template, descriptors=descriptors, pool=pool,
                                m=m, n_groups=n_groups, k=k, nprobe=nprobe, rerank=rerank, rerank_source=rerank_source,
                                seed=seed, num_threads=num_threads, log=log)
    return select_training_set(cands, index if embeddings is None else embeddings, threshold=threshold,
                               k_per_class=k_per_class, strategy=strategy, seed=seed, num_threads=num_threads)


def write_manifest(ts: TrainingSet, path, *, metadata=None, summary_path=None, extra_summary=None) -> tuple[Path, Path]:
    """Writes the selection as a parquet manifest that img2dataset reads directly
    (``--input_format parquet --url_col url --caption_col caption``) and a JSON summary.

    Columns: id, label, classname, vote_score, similarity, retrieval_score, plus every column of
    ``metadata`` (a dict of equal-length sequences or a pyarrow Table aligned with ``ts.ids``, e.g.
    url and caption joined from the shard metadata). Both files are written atomically.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("writing the manifest needs pyarrow: pip install 'mudg_fast[pipeline]'") from e
    if not isinstance(ts, TrainingSet):
        raise TypeError(f"ts must be a TrainingSet, got {type(ts).__name__}")
    if metadata is not None and not (isinstance(metadata, Mapping) or hasattr(metadata, "to_pydict")):
        raise TypeError(f"metadata must be a dict of columns or a pyarrow Table, got {type(metadata).__name__}")
    if extra_summary is not None and not isinstance(extra_summary, Mapping):
        raise TypeError(f"extra_summary must be a dict, got {type(extra_summary).__name__}")
    path = Path(path)
    cols = {
        "id": pa.array(ts.ids, pa.int64()),
        "label": pa.array(ts.labels, pa.int64()),
        "classname": pa.array([ts.classnames[i] for i in ts.labels], pa.string()),
        "vote_score": pa.array(ts.vote_score, pa.float64()),
        "similarity": pa.array(ts.similarity, pa.float32()),
        "retrieval_score": pa.array(ts.retrieval_score, pa.float32()),
    }
    if metadata is not None:
        items = (metadata.to_pydict().items() if hasattr(metadata, "to_pydict") else dict(metadata).items())
        for name, values in items:
            if not isinstance(name, str):
                raise TypeError(f"metadata column names must be str, got {type(name).__name__}")
            if name in cols:
                continue
            if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
                raise TypeError(f"metadata column {name!r} must be a sequence, got {type(values).__name__}")
            values = list(values)
            if len(values) != len(ts):
                raise ValueError(f"metadata column {name!r} has {len(values)} rows, the manifest {len(ts)}")
            try:
                cols[name] = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                raise ValueError(f"metadata column {name!r} cannot be stored: {e}") from None
    table = pa.table(cols)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    summary_path = Path(summary_path) if summary_path else path.with_suffix(".json")
    summary = dict(ts.summary)
    summary["classnames"] = ts.classnames
    summary["counts"] = ts.counts()
    summary["manifest"] = str(path)
    if extra_summary:
        summary.update(extra_summary)
    text = json.dumps(summary, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    atomic_write(summary_path, lambda tmp: Path(tmp).write_text(text))
    return path, summary_path
