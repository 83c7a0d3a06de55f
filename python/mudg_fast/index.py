"""IVFIndex: a cross-modal inverted-file index (faiss conventions, native core)."""

from __future__ import annotations

import errno
import json
import numbers
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; temporary files get unique names instead
    fcntl = None  # type: ignore[assignment]  # checked before every use

import numpy as np

from . import _core
from ._arrays import as_ids, as_matrix, check_k, resolve_threads
from .kmeans import KMeans, PairedKMeans
from .reranking import search_reranked
from .quantizer import resolve_quantizer

__all__ = ["CODECS", "IVFIndex", "atomic_write"]

CODECS = ("f32", "f16", "sq8", "sq4")
_CODEC_TRAIN_SAMPLE = 65536
MAX_DIM = _core.max_dim
MAX_NLIST = _core.max_nlist


def atomic_write(path, write, *, suffix=".tmp"):
    """Calls ``write(tmp_path)`` on a temporary file next to ``path`` and renames it into place.

    The previous content of ``path`` survives any failure (disk full, crash, Ctrl-C, SIGKILL):
    the temporary file is flushed to disk (fsync) before the rename, and the folder after it, so
    that after a power loss ``path`` holds either the old or the new content, never a torn one.

    The temporary file is ``.<name><suffix>`` in the same folder (see :func:`_open_temp`). An
    exception or Ctrl-C removes it; a process killed mid-write (SIGKILL, SIGTERM, a crash) leaves
    it behind, and the next save to ``path`` reuses and replaces it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = tmp = None
    try:
        fd, tmp = _open_temp(path, suffix)
        write(tmp)
        _fsync_file(tmp)
        os.chmod(tmp, _final_mode(path))  # temporary files are 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock only now, after the rename
    _fsync_dir(path.parent)


def _temp_path(path, suffix: str = ".tmp") -> Path:
    """Where a save to ``path`` writes first: ``.<name><suffix>`` in the same folder."""
    path = Path(path)
    return path.parent / f".{path.name}{suffix}"


def _open_temp(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """Creates (or takes over) the temporary file for a save to ``path``; returns (fd, name).

    The file is ``.<name><suffix>``, held under an exclusive ``flock`` until ``fd`` is closed.
    A save that was killed leaves that file unlocked (the kernel drops the lock with the
    process), so the next save takes it over and truncates it: leftovers never accumulate.
    While another process is saving to the same path (the file is locked), or where file locks
    are unavailable, a unique ``.<name>.<random><suffix>`` is used instead; such a file is left
    behind if that save is killed, and can be deleted by hand."""
    tmp = _temp_path(path, suffix)
    if fcntl is not None:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        for _ in range(3):
            try:
                fd = os.open(tmp, flags, 0o600)
            except OSError:  # e.g. a symlink or someone else's file: use a unique name
                break
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:  # a live save holds it (or no locks here): use a unique name
                    os.close(fd)
                    break
                # Locked; but a finished save may have renamed this inode away in between: only
                # an inode still named tmp is ours to truncate.
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(tmp, follow_symlinks=False))
                except FileNotFoundError:
                    same = False
                if same:
                    os.ftruncate(fd, 0)
                    return fd, str(tmp)
                os.close(fd)
            except BaseException:  # Ctrl-C right after the open: leave no temporary behind
                _drop_unused_temp(fd, tmp)
                raise
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    return fd, name


def _drop_unused_temp(fd: int, tmp: Path) -> None:
    """Removes the temporary at ``tmp`` unless a live save holds it, and closes ``fd``."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no-op if we already hold it
        if os.path.samestat(os.fstat(fd), os.stat(tmp, follow_symlinks=False)):
            os.unlink(tmp)
    except OSError:
        pass
    finally:
        try:
            os.close(fd)
        except OSError:  # already closed on the path that raised
            pass


def _fsync_file(name) -> None:
    """Flushes a written file's data to disk (by name: the writer may have reopened it)."""
    fd = os.open(name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder) -> None:
    """Makes a rename in ``folder`` durable, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:  # Windows cannot open folders; nothing to do there
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders (EINVAL)
        pass
    finally:
        os.close(fd)


def _final_mode(path: Path) -> int:
    """The existing file's permissions, or 0666 minus the umask for a new file."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def _seeded_sample(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded random sample of at most n rows (never "the first n rows"), in row order."""
    if x.shape[0] <= n:
        return x
    rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], n, replace=False))
    return np.ascontiguousarray(x[rows])


def _metadata_bytes(metadata) -> bytes:
    """The stored form of user metadata: sorted-key JSON in UTF-8 (empty for an empty mapping)."""
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping (e.g. a dict), got {type(metadata).__name__}")
    bad = [k for k in metadata if not isinstance(k, str)]
    if bad:
        raise ValueError(f"metadata keys must be str, got {bad[0]!r}")
    try:
        text = json.dumps(dict(metadata), sort_keys=True, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata must hold str keys and finite JSON values: {e}") from None
    raw = text.encode("utf-8") if metadata else b""
    if len(raw) > _core.max_metadata_bytes:
        raise ValueError(f"metadata is {len(raw)} bytes as JSON, at most {_core.max_metadata_bytes} are stored")
    return raw


class IVFIndex:
    """Inverted-file index for maximum inner product search over L2-normalised embeddings.

    Parameters
    ----------
    dim : vector dimension.
    nlist : number of inverted lists (cells).
    codec : storage of the vectors in the lists: "f32" (exact), "f16", "sq8" (8-bit per-dimension
        scalar quantiser over the training sample's range), "sq4" (4-bit: each vector's residual
        to its list centroid, divided by a per-list scale, against 16 per-dimension levels fitted
        by 1-D Lloyd-Max; see ``train_codec``).
    metric : "ip" (inner product; cosine for normalised vectors).
    quantizer : the coarse quantizer that decides which list a vector joins and which lists a
        query visits: "flat" (every centroid scored: exact), "two_level" (cell centres first, then
        the centroids of the ``quantizer_probe`` best cells; ~20x fewer scores at nlist 131072) or
        "auto" (two-level from 16384 lists). See :mod:`mudg_fast.quantizer`. A two-level
        quantizer is trained on the centroids by ``train`` / ``train_paired`` / ``set_centroids``
        (or ``set_quantizer``) and saved with the index.
    quantizer_cells : two-level: number of cells (default round(sqrt(nlist))).
    quantizer_probe : two-level: cells scanned per vector, the accuracy parameter (>= 1; at least
        the number of cells scans every centroid and equals flat; default max(8, ceil(cells / 30))).
        Change it later with ``quantizer_probe = ...``.

    Usage follows faiss: ``train`` (or ``train_paired`` / ``set_centroids``), ``add``, ``search``.
    Large query batches are searched list-major (each probed list is scanned once per batch by
    GEMM-style tile kernels); small batches per query; both give identical results.
    """

    def __init__(self, dim: int, nlist: int, *, codec: str = "f32", metric: str = "ip",
                 num_threads: int | None = None, quantizer: str = "auto", quantizer_cells: int | None = None,
                 quantizer_probe: int | None = None):
        for name, v, top in (("dim", dim, MAX_DIM), ("nlist", nlist, MAX_NLIST)):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or not 1 <= v <= top:
                raise ValueError(f"{name} must be an integer in [1, {top}], got {v!r}")
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
        if metric != "ip":
            raise ValueError(f"metric must be 'ip' (inner product), got {metric!r}")
        self._quantizer_spec = resolve_quantizer(int(nlist), quantizer, quantizer_cells, quantizer_probe)
        self.metric = metric
        self.num_threads = num_threads
        self._ix = _core.IvfIndex(int(dim), int(nlist), codec)

    @classmethod
    def _wrap(cls, native, num_threads=None):
        self = cls.__new__(cls)
        self.metric = "ip"
        self.num_threads = num_threads
        self._ix = native
        self._quantizer_spec = ("flat", None, None)
        if native.quantizer == "two_level":
            st = native.quantizer_state()
            self._quantizer_spec = ("two_level", int(st["cells"]), int(st["probe"]))
        return self

    # -- properties -------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Dimension of the vectors."""
        return self._ix.dim

    @property
    def nlist(self) -> int:
        """Number of inverted lists (cells)."""
        return self._ix.nlist

    @property
    def codec(self) -> str:
        """The codec of the stored vectors: "f32", "f16", "sq8" or "sq4"."""
        return self._ix.codec

    @property
    def ntotal(self) -> int:
        """Number of vectors in the index."""
        return self._ix.ntotal

    @property
    def is_trained(self) -> bool:
        """True once the centroids (and the codec, when it needs training) are set: the index can add."""
        return self._ix.is_trained

    @property
    def centroids(self) -> np.ndarray:
        """float32 (nlist, dim) copy of the coarse centroids."""
        return self._ix.centroids()

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self):
        return (f"IVFIndex(dim={self.dim}, nlist={self.nlist}, codec={self.codec!r}, ntotal={self.ntotal}, "
                f"trained={self.is_trained}, quantizer={self.quantizer!r})")

    # -- coarse quantizer -------------------------------------------------------------------------
    @property
    def quantizer(self) -> str:
        """"flat" or "two_level": the coarse quantizer in use (before training: the one chosen)."""
        return self._ix.quantizer if self._ix.has_centroids else self._quantizer_spec[0]

    @property
    def quantizer_cells(self) -> int | None:
        """Two-level: the number of cells; None for flat."""
        return self._quantizer_spec[1]

    @property
    def quantizer_probe(self) -> int | None:
        """Two-level: cells scanned per vector (the accuracy parameter); None for flat."""
        return self._quantizer_spec[2]

    @quantizer_probe.setter
    def quantizer_probe(self, probe: int) -> None:
        kind, cells, _ = self._quantizer_spec
        if kind != "two_level":
            raise ValueError("quantizer_probe applies to a two-level quantizer; this index's is flat "
                             "(it scores every centroid)")
        _, _, checked = resolve_quantizer(self.nlist, "two_level", cells, probe)
        assert checked is not None  # resolve_quantizer fills the probe for two_level
        if self._ix.has_centroids:
            self._ix.set_quantizer_probe(checked)
        self._quantizer_spec = (kind, cells, checked)

    def set_quantizer(self, quantizer: str = "two_level", *, cells: int | None = None, probe: int | None = None,
                      seed: int = 0) -> IVFIndex:
        """Chooses the coarse quantizer ("flat", "two_level" or "auto", see the class docs) and, when
        the index has centroids, trains it on them now. Allowed at any time: vectors added before
        stay in their lists, later ones are assigned by the new quantizer (the fingerprint
        changes). Not while another thread searches or adds."""
        spec = resolve_quantizer(self.nlist, quantizer, cells, probe)
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self._quantizer_spec = spec
        if self._ix.has_centroids:
            self._apply_quantizer(int(seed))
        return self

    def quantizer_info(self) -> dict:
        """The coarse quantizer: {"quantizer", "cells", "probe", "scores_per_vector" (centroids
        plus cell centres scored per vector on average; nlist for flat), "cell_sizes"}."""
        if self._ix.has_centroids and self._ix.quantizer == "two_level":
            st = self._ix.quantizer_state()
            return {"quantizer": "two_level", "cells": int(st["cells"]), "probe": int(st["probe"]),
                    "scores_per_vector": float(st["expected_scores"]),
                    "cell_sizes": np.bincount(st["cell_of"], minlength=int(st["cells"]))}
        kind, cells, probe = self._quantizer_spec
        return {"quantizer": kind, "cells": cells, "probe": probe,
                "scores_per_vector": float(self.nlist) if kind == "flat" else None, "cell_sizes": None}

    def _apply_quantizer(self, seed: int) -> None:
        kind, cells, probe = self._quantizer_spec
        if kind == "flat":
            self._ix.set_flat_quantizer()
        else:
            assert cells is not None and probe is not None  # resolve_quantizer fills both for two_level
            self._ix.set_two_level_quantizer(cells, probe, seed & 0xFFFFFFFFFFFFFFFF,
                                             resolve_threads(self.num_threads))

    # -- training ---------------------------------------------------------------------------------
    def _check_empty(self, what):
        if self.ntotal:
            raise RuntimeError(f"{what} on an index that already holds {self.ntotal} vectors; "
                               "train before adding")

    def train(self, x, *, max_iter: int = 20, seed: int = 0, max_points_per_centroid: int = 256,
              verbose: bool = False, method: str = "auto", n_coarse: int | None = None) -> IVFIndex:
        """Spherical k-means centroids on x (a seeded sample of nlist * max_points_per_centroid
        rows when x is larger), the coarse quantizer on them, and the codec's parameters on a
        seeded sample of x. ``method`` / ``n_coarse``: flat or two-level k-means, as for
        :class:`~mudg_fast.KMeans` ("auto": two-level from 4096 lists)."""
        self._check_empty("train()")
        x = as_matrix(x, name="x", dim=self.dim)
        if x.shape[0] < self.nlist:
            raise ValueError(f"need at least nlist={self.nlist} training vectors, got {x.shape[0]}")
        km = KMeans(self.nlist, max_iter=max_iter, seed=seed, spherical=True,
                    max_points_per_centroid=max_points_per_centroid, num_threads=self.num_threads,
                    verbose=verbose, method=method, n_coarse=n_coarse).fit(x)
        self._ix.set_centroids(km.cluster_centers_)
        self._apply_quantizer(int(seed))
        self.train_codec(x, seed=seed)
        return self

    def train_paired(self, images, captions, pairing: str = "nearest", *, max_iter: int = 20, seed: int = 0,
                     max_points_per_centroid: int = 256, verbose: bool = False, method: str = "auto",
                     n_coarse: int | None = None) -> IVFIndex:
        """Paired k-means centroids in caption space (docs/method.rst §1), so that text queries probe the
        cells that hold their nearest images; then the coarse quantizer; the codec is trained on
        the images. ``method`` / ``n_coarse`` as for :meth:`train` (two-level k-means is paired at
        both levels)."""
        self._check_empty("train_paired()")
        images = as_matrix(images, name="images", dim=self.dim)
        captions = as_matrix(captions, name="captions", dim=self.dim)
        if captions.shape[0] < self.nlist:
            raise ValueError(f"need at least nlist={self.nlist} training pairs, got {captions.shape[0]}")
        pk = PairedKMeans(self.nlist, max_iter=max_iter, seed=seed, spherical=True,
                          max_points_per_centroid=max_points_per_centroid, num_threads=self.num_threads,
                          verbose=verbose, method=method, n_coarse=n_coarse).fit(images, captions, pairing=pairing)
        self._ix.set_centroids(pk.cluster_centers_)
        self._apply_quantizer(int(seed))
        self.train_codec(images, seed=seed)
        return self

    def set_centroids(self, centroids, *, seed: int = 0) -> IVFIndex:
        """Use given coarse centroids (nlist, dim); a two-level quantizer is trained on them (with
        ``seed``). Quantised codecs still need train_codec()."""
        self._check_empty("set_centroids()")
        c = as_matrix(centroids, name="centroids", dim=self.dim)
        if c.shape[0] != self.nlist:
            raise ValueError(f"centroids must have {self.nlist} rows, got {c.shape[0]}")
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self._ix.set_centroids(c)
        self._apply_quantizer(int(seed))
        return self

    def codec_params(self) -> tuple[np.ndarray, np.ndarray]:
        """The scalar quantiser's parameters: sq8 -> (vmin[dim], step[dim]) with decode
        vmin + code * step; sq4 -> (levels[dim * 16], list_scales[nlist]) with decode
        centroid[l, k] + list_scales[l] * levels[k * 16 + code] for a vector of list l (residual
        form), or (levels, empty) with decode levels[k * 16 + code] (direct form); f32 / f16 ->
        two empty arrays."""
        return self._ix.codec_params()

    @property
    def sq4_residual(self) -> bool:
        """Whether the sq4 codes encode residuals to the list centroids (the default since the
        residual form exists; files written before it hold the direct form)."""
        return self._ix.sq4_residual

    def set_codec_params(self, a, b=()) -> IVFIndex:
        """Installs quantiser parameters (as returned by codec_params) instead of training them,
        e.g. to give several shards of one collection the same codec before merging."""
        self._check_empty("set_codec_params()")
        def vector(v, name):
            v = np.asarray(v)
            if v.dtype.kind not in "fiu" or v.dtype == np.bool_:
                raise TypeError(f"codec parameter {name} must be a numeric array, got dtype {v.dtype}")
            return np.ascontiguousarray(v, dtype=np.float32).reshape(-1)

        self._ix.set_codec_params(vector(a, "a"), vector(b, "b"))
        return self

    def train_codec(self, x, *, seed: int = 0, sq4_residual: bool = True) -> IVFIndex:
        """Fits the scalar quantiser (sq8/sq4) on a seeded random sample of x; no-op for f32/f16.

        sq4 encodes, by default, each vector's residual to its list centroid divided by the
        list's scale (``x = c_l + s_l * r``): the sample rows are assigned to their nearest
        centroids (as ``add`` assigns), ``s_l`` is the list's RMS residual norm relative to the
        sample's (shrunk towards 1 where the list has few sample rows), and the 16 levels of each
        dimension are fitted to the pooled ``r``. This needs the centroids (``train`` /
        ``train_paired`` / ``set_centroids`` first). ``sq4_residual=False`` fits the levels to x
        itself (the direct form of files written before the residual form existed)."""
        self._check_empty("train_codec()")
        if not isinstance(sq4_residual, (bool, np.bool_)):
            raise TypeError(f"sq4_residual must be a bool, got {type(sq4_residual).__name__}")
        if self.codec in ("sq8", "sq4"):
            if self.codec == "sq4" and sq4_residual and not self._ix.has_centroids:
                raise RuntimeError("the sq4 codec encodes residuals to the list centroids: call set_centroids() "
                                   "(or train / train_paired) before train_codec(), or pass sq4_residual=False")
            x = as_matrix(x, name="x", dim=self.dim)
            self._ix.train_codec(_seeded_sample(x, _CODEC_TRAIN_SAMPLE, seed), bool(sq4_residual),
                                 resolve_threads(self.num_threads))
        return self

    # -- adding and searching ---------------------------------------------------------------------
    def add(self, x, ids=None, *, progress=None) -> IVFIndex:
        """Adds vectors (n, dim). ``ids``: int64 (n,), by default ntotal, ntotal+1, ...
        ``progress``: optional callable(done, total) called from the native loop.

        All or nothing: when the call raises (bad input, Ctrl-C, an exception from ``progress``)
        the index is left exactly as it was before."""
        if not self._ix.has_centroids:
            raise RuntimeError("add() before train(): train the index (or set_centroids) first")
        if not self._ix.codec_trained:
            raise RuntimeError(f"add() before the {self.codec} codec is trained: call train_codec()")
        x = as_matrix(x, name="x", dim=self.dim, allow_empty=True)
        if ids is not None:
            ids = as_ids(ids, x.shape[0])
            if ids.size and ids.min() < 0:
                raise ValueError(f"ids must be non-negative (-1 marks an empty result slot), got {ids.min()}")
        self._ix.add(x, ids, resolve_threads(self.num_threads), progress)
        return self

    def search(self, queries, k: int, *, nprobe: int = 8, mode: str = "auto", rerank: int = 0,
               source=None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product over the nprobe nearest lists of each query.

        Returns (scores float32 (nq, k), ids int64 (nq, k)), best first, padded with (-inf, -1).
        ``mode``: "auto" | "list_major" | "per_query" (identical results; a speed choice).
        ``rerank``: with quantised codecs, take a shortlist of ``max(k, rerank)`` candidates from
        the codes and re-score it exactly against ``source`` (see :func:`mudg_fast.rerank`): the
        original float32 / float16 vectors as an array or memory map indexed by id, a folder of
        ``.npy`` shards (clip-retrieval ``img_emb/``), a callable ``ids -> (len(ids), dim)`` rows,
        or ``"auto"``: the shard folder ``build_index`` recorded in ``metadata["source"]``.
        The scores are then exact (the f32 index's scores for the same pairs).
        """
        k = check_k(k)
        nprobe = check_k(nprobe, "nprobe")
        if not self._ix.has_centroids:
            raise RuntimeError("search() on an untrained index: call train() first")
        q = as_matrix(queries, name="queries", dim=self.dim, allow_1d=True, allow_empty=True)
        if not rerank:
            return self._ix.search(q, k, nprobe, resolve_threads(self.num_threads), mode)
        threads = resolve_threads(self.num_threads)
        return search_reranked(lambda qc, n: self._ix.search(qc, n, nprobe, threads, mode), q, k, rerank, source,
                               self, threads)

    def probe(self, queries, nprobe: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """The coarse stage of ``search``: the ``nprobe`` lists nearest to each query by the coarse
        quantizer (the exact nearest with a flat one; see ``quantizer``).

        Returns (scores float32 (nq, nprobe), lists int64 (nq, nprobe)), best first, padded with
        (-inf, -1) past nlist. ``search_probed(queries, k, lists)`` then gives exactly what
        ``search(queries, k, nprobe=nprobe)`` gives."""
        nprobe = check_k(nprobe, "nprobe")
        if not self._ix.has_centroids:
            raise RuntimeError("probe() on an untrained index: call train() first")
        q = as_matrix(queries, name="queries", dim=self.dim, allow_1d=True, allow_empty=True)
        return self._ix.probe(q, nprobe, resolve_threads(self.num_threads))

    def search_probed(self, queries, k: int, probes, *, mode: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """The scan stage of ``search`` over given lists (faiss's search_preassigned).

        ``probes``: int (nq, nprobe) list numbers per query, -1 for none; a list may appear once
        per query. Indexes that share centroids (the parts of one index) can share one
        ``probe`` and merge their results under the order (score, then lower id)."""
        k = check_k(k)
        if not self._ix.has_centroids:
            raise RuntimeError("search_probed() on an untrained index: call train() first")
        q = as_matrix(queries, name="queries", dim=self.dim, allow_1d=True, allow_empty=True)
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
        p = np.ascontiguousarray(p, dtype=np.int64)
        return self._ix.search_probed(q, k, p, resolve_threads(self.num_threads), mode)

    def reconstruct(self, ids) -> np.ndarray:
        """Decoded vectors (n, dim) float32 for the given ids (KeyError-like ValueError if absent)."""
        a = np.asarray(ids)
        scalar = a.ndim == 0
        a = as_ids(a.reshape(-1), a.size)
        out = self._ix.reconstruct(a)
        return out[0] if scalar else out

    def list_sizes(self) -> np.ndarray:
        """int64 (nlist,): vectors per list."""
        return self._ix.list_sizes()

    def list_ids(self, list_no: int) -> np.ndarray:
        """int64 ids stored in one list, in storage order."""
        if isinstance(list_no, (bool, np.bool_)) or not isinstance(list_no, numbers.Integral):
            raise TypeError(f"list_no must be an integer, got {type(list_no).__name__}")
        if not 0 <= list_no < self.nlist:
            raise ValueError(f"list_no {list_no} is out of range [0, {self.nlist})")
        return self._ix.list_ids(int(list_no))

    def memory_bytes(self) -> int:
        """Bytes of the inverted lists' storage (codes and ids)."""
        return self._ix.memory_bytes()

    # -- identity and metadata --------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """16 hex digits identifying how vectors are assigned and encoded: dim, nlist, codec,
        centroids, codec parameters (and any other trained state that decides them). Indexes
        with equal fingerprints were trained together: they can be merged, and searched together
        as parts of one index. The vectors held and the metadata do not enter it."""
        return f"{self._ix.fingerprint():016x}"

    @property
    def metadata(self) -> dict:
        """User metadata saved with the index (a copy; change it with ``set_metadata``)."""
        raw = self._ix.metadata
        return json.loads(raw.decode("utf-8")) if raw else {}

    def set_metadata(self, metadata: Mapping) -> IVFIndex:
        """Replaces the metadata saved with the index: a mapping with str keys and JSON values
        (at most 1 MiB as JSON). It does not change how the index searches."""
        self._ix.set_metadata(_metadata_bytes(metadata))
        return self

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Writes the versioned, checksummed binary format atomically (temporary file, then rename)."""
        atomic_write(path, lambda tmp: self._ix.save(str(tmp)))

    @classmethod
    def load(cls, path, *, mmap: bool = True, verify: bool = True, num_threads: int | None = None) -> IVFIndex:
        """Reads an index written by save(). ``mmap``: list data is paged in from the file on use
        (the file must stay in place). ``verify``: also check the list data (codes, ids) against
        the data checksum; the header, centroids, codec parameters, directory and layout are
        always checked. A damaged, truncated or newer-version file raises ValueError (see "File
        safety" in the README); a missing path FileNotFoundError, a folder IsADirectoryError."""
        path = os.fspath(path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "no index file at this path", path) from None
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder, not an index file", path)
        return cls._wrap(_core.IvfIndex.load(path, bool(mmap), bool(verify)), num_threads)

    def merge(self, other: IVFIndex) -> IVFIndex:
        """Appends all vectors of ``other`` (trained with the same centroids and codec), keeping
        their ids unchanged: give the shards disjoint ids when you add them."""
        if not isinstance(other, IVFIndex):
            raise TypeError(f"merge() takes an IVFIndex, got {type(other).__name__}")
        self._ix.merge_from(other._ix)
        return self

    # -- interoperability -------------------------------------------------------------------------
    def to_faiss(self):
        """An equivalent faiss index (needs faiss): IndexIVFFlat for f32, IndexIVFScalarQuantizer
        (QT_fp16 / QT_8bit) for f16 / sq8, with our centroids and lists. sq4 uses non-uniform
        per-dimension levels and per-list scales of the residuals that faiss's QT_4bit (uniform
        levels, one range for all lists) cannot express: it is exported as IndexIVFFlat holding
        the decoded vectors. See :mod:`mudg_fast.interop` for details."""
        from .interop import ivf_to_faiss

        return ivf_to_faiss(self)
