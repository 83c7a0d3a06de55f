"""Index parts: one IVF index stored as several files, searched together or merged into one file.

A part is an ordinary :class:`~mudg_fast.IVFIndex` file. The parts of one index share one training
(their :attr:`~mudg_fast.IVFIndex.fingerprint` is equal: same centroids, codec and codec
parameters) and hold disjoint ranges of global ids. A build writes each part with a ``"part"``
entry in its metadata::

    {"part": {"number": 3, "count": 16, "ids": [lo, hi], "fingerprint": "..."}, ...}

(part 3 of 16, holding ids ``lo <= id < hi``); everything else in the metadata is common to the
parts and to the merged file.

:class:`ShardedIndex` opens a folder of parts (or a list of part files), memory-mapped by
default, and searches them as one index: a single coarse stage (the centroids are shared), then
one list-major scan in which every probed list is read in each part with the same packed
queries. Its results are identical, ids and score bits, to one ``IVFIndex`` holding every vector
(the order is the project's total order: score, then lower id). :func:`merge_parts` writes that
one index file, list by list, in memory bounded by the largest list rather than by the index;
its bytes equal those of an index that added every vector itself.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np

from . import _core
from ._arrays import as_ids, as_matrix, check_k, resolve_threads
from .index import IVFIndex, _metadata_bytes, atomic_write
from .reranking import search_reranked

__all__ = ["ShardedIndex", "merge_parts", "merge_topk", "open_index", "PartError", "PART_KEY", "part_metadata"]

PART_KEY = "part"
PART_SUFFIX = ".ivf"


class PartError(ValueError):
    """A set of parts that cannot form one index (trained differently, overlapping ids, a part
    missing); the message names the part."""


def part_metadata(number: int, count: int, ids: tuple[int, int], fingerprint: str) -> dict:
    """The ``"part"`` metadata entry of part ``number`` of ``count`` holding ids in
    ``[ids[0], ids[1])`` of the index with training ``fingerprint``."""
    return {"number": int(number), "count": int(count), "ids": [int(ids[0]), int(ids[1])],
            "fingerprint": str(fingerprint)}


def part_files(folder) -> list[Path]:
    """The part files of a folder: its ``*.ivf`` files in name order."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.suffix == PART_SUFFIX and p.is_file() and not p.name.startswith("."))


def merge_topk(scores: Sequence[np.ndarray], ids: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merges per-part top-k results (each (nq, k_i), best first, padded with (-inf, -1)) into
    the global top k under the total order (score, then lower id), vectorised over queries.

    Given the parts' results for the same probes, this equals the search of one index holding
    every part (each part's top k contains its share of the global top k)."""
    k = check_k(k)
    if not len(scores) or len(scores) != len(ids):
        raise ValueError("merge_topk needs one (scores, ids) pair per part, at least one")
    s = np.concatenate([np.asarray(a, np.float32) for a in scores], axis=1)
    i = np.concatenate([np.asarray(a, np.int64) for a in ids], axis=1)
    if s.shape != i.shape or s.ndim != 2:
        raise ValueError(f"scores and ids must have matching 2-D shapes, got {s.shape} and {i.shape}")
    nq, width = s.shape
    out_s = np.full((nq, k), -np.inf, np.float32)
    out_i = np.full((nq, k), -1, np.int64)
    if width == 0 or nq == 0:
        return out_s, out_i
    key_id = np.where(i < 0, np.iinfo(np.int64).max, i)  # padding sorts last
    key_s = np.where(i < 0, np.inf, -s.astype(np.float64))
    order = np.lexsort((key_id, key_s), axis=1)[:, :k]
    take = order.shape[1]
    out_s[:, :take] = np.take_along_axis(s, order, 1)
    out_i[:, :take] = np.take_along_axis(i, order, 1)
    pad = out_i < 0
    out_s[pad] = -np.inf
    return out_s, out_i


def _part_entry(ix: IVFIndex, where: str) -> Optional[dict]:
    meta = ix.metadata
    entry = meta.get(PART_KEY)
    if entry is None:
        return None
    ok = (isinstance(entry, dict) and isinstance(entry.get("ids"), list) and len(entry["ids"]) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in entry["ids"])
          and isinstance(entry.get("number"), int) and isinstance(entry.get("count"), int)
          and 0 <= entry["number"] < entry["count"] and 0 <= entry["ids"][0] <= entry["ids"][1])
    if not ok:
        raise PartError(f"{where} has an invalid {PART_KEY!r} metadata entry: {entry!r}")
    if entry["ids"][1] - entry["ids"][0] != ix.ntotal:
        raise PartError(f"{where} says it holds ids [{entry['ids'][0]}, {entry['ids'][1]}) but holds "
                        f"{ix.ntotal} vectors: the part is inconsistent")
    return entry


def _id_range(ix: IVFIndex) -> tuple[int, int]:
    """[min id, max id + 1) of a part without part metadata ((0, 0) when empty)."""
    found: Optional[tuple[int, int]] = None
    for l, n in enumerate(ix.list_sizes()):
        if n:
            ids = ix.list_ids(l)
            a, b = int(ids.min()), int(ids.max()) + 1
            found = (a, b) if found is None else (min(found[0], a), max(found[1], b))
    return (0, 0) if found is None else found


def _load_part(path: Path, mmap: bool, verify: bool, first: Optional[IVFIndex]):
    """Loads a part file; parts after the first share its centroids in memory."""
    if first is None:
        return _core.IvfIndex.load(os.fspath(path), bool(mmap), bool(verify), None)
    try:
        return _core.IvfIndex.load(os.fspath(path), bool(mmap), bool(verify), first._ix)
    except ValueError:
        # Damaged, or a sound file with another training: the plain load tells which.
        alone = IVFIndex.load(path, mmap=True, verify=verify)
        raise PartError(f"{path} (dim {alone.dim}, nlist {alone.nlist}, codec {alone.codec}, training "
                        f"{alone.fingerprint}) was trained differently from the first part (dim {first.dim}, "
                        f"nlist {first.nlist}, codec {first.codec}, training {first.fingerprint}): the parts "
                        "of one index share one training") from None


PartsArg = Union[str, os.PathLike, Sequence[Union[str, os.PathLike, IVFIndex]]]


class ShardedIndex:
    """An IVF index made of parts, searched as one.

    Parameters
    ----------
    parts : a folder of part files (its ``*.ivf`` files), or a list of part files or of
        :class:`~mudg_fast.IVFIndex` objects.
    mmap, verify : as for :meth:`IVFIndex.load` (list data is paged in from the files on use;
        ``verify`` checks every part's list data against its checksums when opening).
    num_threads : threads for search (None: all cores).

    Raises :class:`PartError` (a ValueError) naming the part when parts were trained
    differently, hold overlapping id ranges, or a part of a build is missing; ValueError for a
    truncated or corrupt part file (its path in the message) and FileNotFoundError for a missing
    one.
    """

    def __init__(self, parts: PartsArg, *, mmap: bool = True, verify: bool = True,
                 num_threads: Optional[int] = None):
        if num_threads is not None:
            resolve_threads(num_threads)  # validates
        self.num_threads = num_threads
        folder = None
        if isinstance(parts, (str, os.PathLike)):
            folder = Path(parts)
            if not folder.exists():
                raise FileNotFoundError(f"no index parts at {folder}: the folder does not exist")
            if not folder.is_dir():
                raise PartError(f"{folder} is a file, not a folder of parts; open it with IVFIndex.load")
            items: list = list(part_files(folder))
            if not items:
                raise PartError(f"{folder} holds no index parts (*{PART_SUFFIX} files)")
        elif isinstance(parts, Sequence) and not isinstance(parts, (bytes, bytearray)):
            items = list(parts)
            if not items:
                raise PartError("parts is empty: give a folder of parts or a list of part files")
        else:
            raise TypeError(f"parts must be a folder or a list of part files / IVFIndex objects, got "
                            f"{type(parts).__name__}")
        loaded: list[tuple[Optional[Path], IVFIndex]] = []
        first: Optional[IVFIndex] = None
        for item in items:
            if isinstance(item, IVFIndex):
                if not item.is_trained:
                    raise PartError("a part is an untrained IVFIndex")
                loaded.append((None, item))
            elif isinstance(item, (str, os.PathLike)):
                path = Path(item)
                if not path.exists():
                    raise FileNotFoundError(f"index part {path} does not exist")
                if path.is_dir():
                    raise PartError(f"index part {path} is a folder, not a part file")
                loaded.append((path, IVFIndex._wrap(_load_part(path, mmap, verify, first), num_threads)))
            else:
                raise TypeError(f"a part must be a path or an IVFIndex, got {type(item).__name__}")
            if first is None:
                first = loaded[0][1]
        self._check_and_order(loaded, folder)

    def _check_and_order(self, loaded, folder) -> None:
        def name(i):
            p = loaded[i][0]
            return str(p) if p is not None else f"part {i} (an IVFIndex)"

        ref = loaded[0][1]
        fp = ref.fingerprint
        for i, (_, ix) in enumerate(loaded[1:], 1):
            if (ix.dim, ix.nlist, ix.codec) != (ref.dim, ref.nlist, ref.codec):
                raise PartError(f"{name(i)} (dim {ix.dim}, nlist {ix.nlist}, codec {ix.codec}) does not belong "
                                f"with {name(0)} (dim {ref.dim}, nlist {ref.nlist}, codec {ref.codec})")
            if ix.fingerprint != fp:
                raise PartError(f"{name(i)} was trained differently from {name(0)} (fingerprints "
                                f"{ix.fingerprint} and {fp}): the parts of one index share one training")
        found = [_part_entry(ix, name(i)) for i, (_, ix) in enumerate(loaded)]
        if any(e is not None for e in found):
            missing_meta = [name(i) for i, e in enumerate(found) if e is None]
            if missing_meta:
                raise PartError(f"{missing_meta[0]} has no {PART_KEY!r} metadata while other parts do: "
                                "it is not a part of this build")
            entries = [e for e in found if e is not None]
            for i, e in enumerate(entries):
                if e.get("fingerprint", fp) != fp:
                    raise PartError(f"{name(i)} records training {e['fingerprint']}, but its own is {fp}: "
                                    "the part is inconsistent")
            counts = {e["count"] for e in entries}
            if len(counts) != 1:
                raise PartError(f"the parts disagree on how many parts the index has ({sorted(counts)}): "
                                "they come from different builds")
            count = counts.pop()
            numbers_ = [e["number"] for e in entries]
            dup = sorted({n for n in numbers_ if numbers_.count(n) > 1})
            if dup:
                raise PartError(f"part {dup[0]} appears twice ({', '.join(name(i) for i, n in enumerate(numbers_) if n == dup[0])})")
            missing = sorted(set(range(count)) - set(numbers_))
            if missing:
                where = f" from {folder}" if folder is not None else ""
                shown = ", ".join(str(m) for m in missing[:10]) + (", ..." if len(missing) > 10 else "")
                raise PartError(f"part{'s' if len(missing) > 1 else ''} {shown} of {count} "
                                f"{'are' if len(missing) > 1 else 'is'} missing{where}; "
                                "finish the build (run it again to resume) or give every part")
            ranges = [tuple(e["ids"]) for e in entries]
        else:
            ranges = [_id_range(ix) for _, ix in loaded]
        order = sorted(range(len(loaded)), key=lambda i: (ranges[i][0], ranges[i][1]))
        prev = None
        for i in order:
            lo, hi = ranges[i]
            if lo == hi:
                continue
            if prev is not None and lo < ranges[prev][1]:
                raise PartError(f"{name(prev)} holds ids [{ranges[prev][0]}, {ranges[prev][1]}) and {name(i)} "
                                f"holds [{lo}, {hi}): the id ranges overlap; parts must hold disjoint ids")
            prev = i
        self._paths = [loaded[i][0] for i in order]
        self._parts = [loaded[i][1] for i in order]
        self._ranges = np.array([ranges[i] for i in order], dtype=np.int64).reshape(-1, 2)
        self._fingerprint = fp
        meta = dict(self._parts[0].metadata)
        meta.pop(PART_KEY, None)
        self._metadata = meta
        self._native = [p._ix for p in self._parts]

    # -- properties -------------------------------------------------------------------------------
    @property
    def parts(self) -> list[IVFIndex]:
        """The parts, ordered by their ids."""
        return list(self._parts)

    @property
    def paths(self) -> list[Optional[Path]]:
        """The part files in the order of :attr:`parts` (None for a part given as an object)."""
        return list(self._paths)

    @property
    def id_ranges(self) -> np.ndarray:
        """int64 (n_parts, 2): part i holds ids in ``[id_ranges[i, 0], id_ranges[i, 1])``."""
        return self._ranges.copy()

    @property
    def dim(self) -> int:
        """Dimension of the vectors."""
        return self._parts[0].dim

    @property
    def nlist(self) -> int:
        """Number of inverted lists (the same for every part)."""
        return self._parts[0].nlist

    @property
    def codec(self) -> str:
        """The codec of the parts' stored vectors (the same for every part)."""
        return self._parts[0].codec

    @property
    def ntotal(self) -> int:
        """Number of vectors over all parts."""
        return int(sum(p.ntotal for p in self._parts))

    @property
    def fingerprint(self) -> str:
        """The training shared by every part (see :attr:`IVFIndex.fingerprint`)."""
        return self._fingerprint

    @property
    def metadata(self) -> dict:
        """The metadata common to the parts (a part's metadata without its ``"part"`` entry)."""
        return json.loads(json.dumps(self._metadata))

    @property
    def centroids(self) -> np.ndarray:
        """float32 (nlist, dim) centroids, shared by every part."""
        return self._parts[0].centroids

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self):
        return (f"ShardedIndex({len(self._parts)} parts, dim={self.dim}, nlist={self.nlist}, "
                f"codec={self.codec!r}, ntotal={self.ntotal})")

    def list_sizes(self) -> np.ndarray:
        """int64 (nlist,): vectors per list over all parts."""
        return np.sum([p.list_sizes() for p in self._parts], axis=0).astype(np.int64)

    def memory_bytes(self) -> int:
        """Bytes of the inverted lists' storage (codes and ids), summed over the parts."""
        return int(sum(p.memory_bytes() for p in self._parts))

    # -- search -----------------------------------------------------------------------------------
    def probe(self, queries, nprobe: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """The coarse stage, shared by every part (see :meth:`IVFIndex.probe`)."""
        return self._parts[0].probe(queries, nprobe)

    def search(self, queries, k: int, *, nprobe: int = 8, mode: str = "auto", rerank: int = 0,
               source=None, engine=None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over the nprobe nearest lists, exactly as :meth:`IVFIndex.search` on one index
        holding every part's vectors (same keywords, same results bit for bit).

        ``engine``: None searches every part here, in one list-major pass; "ray" (or an
        :class:`~mudg_fast.engines.Engine`) fans the parts out as tasks (each searches its part
        file for the probes computed here) and merges their top-k here: the same results.

        Returns (scores float32 (nq, k), ids int64 (nq, k)), best first, padded with (-inf, -1)."""
        k = check_k(k)
        nprobe = check_k(nprobe, "nprobe")
        q = as_matrix(queries, name="queries", dim=self.dim, allow_1d=True, allow_empty=True)
        if not rerank:
            return self._search(q, k, nprobe, mode, engine)
        return search_reranked(lambda qc, n: self._search(qc, n, nprobe, mode, engine), q, k, rerank, source, self,
                               resolve_threads(self.num_threads))

    def _search(self, q: np.ndarray, k: int, nprobe: int, mode: str, engine=None):
        _, lists = self._parts[0].probe(q, min(nprobe, self.nlist))
        if engine is None:
            return self._search_probed(q, k, lists, mode)
        if any(p is None for p in self._paths):
            raise TypeError("engine= searches part files: open the ShardedIndex from files, not IVFIndex objects")
        from .engines import get_engine

        eng = get_engine(engine, num_threads=self.num_threads)
        try:
            res = eng.search_parts([os.fspath(p) for p in self._paths], q, k, lists, mode)
        finally:
            if eng is not engine:
                eng.close()
        return merge_topk([r[0] for r in res], [r[1] for r in res], k)

    def _search_probed(self, q, k, lists, mode):
        return _core.IvfIndex.search_probed_parts(self._native, q, k, lists,
                                                  resolve_threads(self.num_threads), mode)

    def search_probed(self, queries, k: int, probes, *, mode: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """The scan stage over given lists (see :meth:`IVFIndex.search_probed`), over every part."""
        k = check_k(k)
        q = as_matrix(queries, name="queries", dim=self.dim, allow_1d=True, allow_empty=True)
        # the first part validates the probes exactly as IVFIndex.search_probed does
        p = np.asarray(probes)
        if p.ndim == 1 and q.shape[0] == 1:
            p = p.reshape(1, -1)
        if p.ndim != 2 or p.shape[0] != q.shape[0]:
            raise ValueError(f"probes must have shape ({q.shape[0]}, nprobe), got {p.shape}")
        if p.dtype.kind not in "iu" or p.dtype == np.bool_:
            raise ValueError(f"probes must be integers (list numbers), got dtype {p.dtype}")
        if p.size and (int(p.min()) < -1 or int(p.max()) >= self.nlist):
            raise ValueError(f"probes must be list numbers in [-1, {self.nlist}), got values in "
                             f"[{int(p.min())}, {int(p.max())}]")
        return self._search_probed(q, k, np.ascontiguousarray(p, dtype=np.int64), mode)

    def reconstruct(self, ids) -> np.ndarray:
        """Decoded vectors (n, dim) float32 for the given ids, from the parts that hold them
        (ValueError for an id no part holds)."""
        a = np.asarray(ids)
        scalar = a.ndim == 0
        flat = as_ids(a.reshape(-1), a.size)
        out = np.empty((flat.size, self.dim), np.float32)
        which = np.searchsorted(self._ranges[:, 0], flat, side="right") - 1
        inside = (which >= 0) & (flat < self._ranges[np.maximum(which, 0), 1])
        if not inside.all():
            bad = int(flat[~inside][0])
            raise ValueError(f"id {bad} is not in the index (no part holds it)")
        for p in np.unique(which):
            sel = which == p
            out[sel] = self._parts[p].reconstruct(flat[sel])
        return out[0] if scalar else out


def open_index(path, *, mmap: bool = True, verify: bool = True, num_threads: Optional[int] = None):
    """An index file (:meth:`IVFIndex.load`) or a folder of parts (:class:`ShardedIndex`): both
    search, reconstruct and describe themselves the same way."""
    path = Path(path)
    if path.is_dir():
        return ShardedIndex(path, mmap=mmap, verify=verify, num_threads=num_threads)
    return IVFIndex.load(path, mmap=mmap, verify=verify, num_threads=num_threads)


def merge_parts(parts, out, *, metadata: Optional[Mapping] = None, num_threads: Optional[int] = None,
                batch_bytes: int = 64 << 20) -> IVFIndex:
    """Writes the index made of ``parts`` (a folder of part files, a list of part files, or a
    :class:`ShardedIndex` opened from files) as one index file ``out`` (atomically).

    The parts are checked as :class:`ShardedIndex` checks them and merged in the order of their
    ids, list by list: memory stays bounded by the largest list plus buffers, never by the
    index. The file's bytes equal those of one index that added every vector itself in id
    order (the way an in-memory build does). Its metadata is the parts' common metadata (their
    ``"part"`` entry removed) unless ``metadata`` is given. Every part's list data is checked
    against its checksums as it is read; a damaged part is named in the error and ``out`` is
    left as it was. ``batch_bytes``: lists assembled per step (at least one list); the merge holds
    about twice that plus two copies of the centroids. Returns the merged index, memory-mapped."""
    sharded = parts if isinstance(parts, ShardedIndex) else ShardedIndex(parts, mmap=True, verify=False)
    part_paths = [p for p in sharded.paths if p is not None]
    if len(part_paths) != len(sharded.paths):
        raise TypeError("merge_parts merges part files: give a folder or a list of paths, not IVFIndex objects")
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"out {str(out)!r} is a folder; give the path of the index file to write")
    resolved = {p.resolve() for p in part_paths}
    if out.resolve() in resolved:
        raise ValueError(f"out {out} is one of the parts; write the merged index elsewhere")
    meta = sharded.metadata if metadata is None else metadata
    raw = _metadata_bytes(meta)
    paths = [os.fspath(p) for p in part_paths]
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral)):
        raise TypeError(f"num_threads must be an int or None, got {num_threads!r}")
    threads = resolve_threads(num_threads)
    if isinstance(batch_bytes, bool) or not isinstance(batch_bytes, numbers.Integral) or batch_bytes < 1:
        raise ValueError(f"batch_bytes must be a positive integer, got {batch_bytes!r}")
    atomic_write(out, lambda tmp: _core.IvfIndex.merge_files(paths, str(tmp), raw, threads, int(batch_bytes)))
    return IVFIndex.load(out, mmap=True, verify=False, num_threads=num_threads)
