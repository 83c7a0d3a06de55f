"""Embedding shards in the clip-retrieval / LAION layout.

A collection is a root folder with row-aligned parts::

    root/img_emb/img_emb_0.npy      (rows, dim) float16 or float32, one row per image
    root/text_emb/text_emb_0.npy    same rows: the caption of each image (optional)
    root/metadata/metadata_0.parquet  same rows: url, caption, ... (optional)

Shards are taken in lexicographic order of their file names (Python string order, so
``img_emb_10.npy`` comes before ``img_emb_2.npy``, as in clip-retrieval and embedding-reader).
The *global id* of a row is its running offset over the shards in that order. Image, caption
and metadata shards are joined by that order; when all file names end in a number
(``img_emb_3`` / ``text_emb_3`` / ``metadata_3``) the numbers must agree pair by pair.

Files are read through read-only memory maps (``np.load(mmap_mode="r")`` semantics, with our own
mapping so that pages can be released): a batch is converted to float32 into a caller's buffer and
the pages it touched are dropped from this process's resident set (``madvise(MADV_DONTNEED)``),
so reading a terabyte of shards never holds more than one batch in memory. Whole fp16 shards are
never converted to float32.

Public API: :class:`EmbeddingShards` (one folder), :class:`MetadataShards` (parquet),
:func:`open_collection`, :func:`fetch_embeddings`, :func:`fetch_metadata`,
:func:`check_aligned`, :class:`ShardError`.
"""

from __future__ import annotations

import mmap
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from . import _core

__all__ = [
    "ShardError",
    "IdOutOfRangeError",
    "NpyShard",
    "EmbeddingShards",
    "MetadataShards",
    "Collection",
    "open_collection",
    "check_aligned",
    "fetch_embeddings",
    "fetch_metadata",
    "read_npy_header",
]

_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)


class ShardError(ValueError):
    """An input folder or file does not follow the shard layout; the message names the file."""


class IdOutOfRangeError(IndexError, ValueError):
    """An id (or row range) outside the collection. Both an IndexError (as documented since the
    start) and a ValueError (like every other bad argument)."""


# ---------------------------------------------------------------------------------------------
# one .npy file


@dataclass(frozen=True)
class NpyShard:
    """Header facts of one ``.npy`` shard (the data is not read).

    ``offset`` is the global id of the shard's first row; ``data_offset`` the byte offset of the
    array data inside the file."""

    path: Path
    rows: int
    dim: int
    dtype: np.dtype
    data_offset: int
    file_size: int
    offset: int

    @property
    def name(self) -> str:
        """The shard's file name."""
        return self.path.name

    @property
    def row_bytes(self) -> int:
        """Bytes of one row (dim x itemsize)."""
        return self.dim * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """Bytes of the shard's data (rows x row_bytes, without the header)."""
        return self.rows * self.row_bytes

    @property
    def stop(self) -> int:
        """One past the global id of the last row."""
        return self.offset + self.rows


def read_npy_header(path) -> tuple[tuple, bool, np.dtype, int, int]:
    """(shape, fortran_order, dtype, data_offset, file_size) of a ``.npy`` file, reading only its
    header. Raises ShardError naming the file when it is not a readable ``.npy`` file."""
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:  # version 3 (utf-8 field names): let numpy parse it through a memory map
                f.close()
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
                return (
                    arr.shape,
                    bool(arr.flags.f_contiguous and not arr.flags.c_contiguous),
                    arr.dtype,
                    int(arr.offset),
                    file_size,
                )
            data_offset = f.tell()
    except OSError as e:
        raise ShardError(f"cannot read {path}: {e.strerror or e}") from e
    except Exception as e:  # numpy raises ValueError/EOFError/SyntaxError for damaged headers
        raise ShardError(f"{path} is not a readable .npy file: {e}") from e
    return tuple(shape), bool(fortran), np.dtype(dtype), int(data_offset), int(file_size)


def _inspect_npy(path: Path, offset: int) -> NpyShard:
    shape, fortran, dtype, data_offset, file_size = read_npy_header(path)
    if dtype.hasobject or dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
        raise ShardError(
            f"{path} holds {dtype} values; embedding shards must be float16, float32 or float64"
        )
    if len(shape) != 2:
        raise ShardError(f"{path} has shape {shape}; embedding shards must be 2-D (rows, dim)")
    rows, dim = int(shape[0]), int(shape[1])
    if dim < 1:
        raise ShardError(f"{path} has shape {shape}: zero-dimensional vectors")
    if fortran and rows > 1 and dim > 1:
        raise ShardError(
            f"{path} is stored in Fortran (column-major) order, which cannot be read "
            "row batch by row batch; re-save it with np.save(path, np.ascontiguousarray(x))"
        )
    need = data_offset + rows * dim * dtype.itemsize
    if file_size < need:
        raise ShardError(
            f"{path} is truncated: its header announces {rows} x {dim} {dtype} "
            f"({need} bytes with the header), the file has {file_size} bytes"
        )
    return NpyShard(path, rows, dim, dtype, data_offset, file_size, offset)


class _Mapped:
    """A read-only memory map of one shard and the (rows, dim) array view over it."""

    def __init__(self, shard: NpyShard):
        self.shard = shard
        self._file = open(shard.path, "rb")  # noqa: SIM115 - lives as long as the map
        try:
            self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except BaseException:
            self._file.close()
            raise
        self.array = np.ndarray(
            (shard.rows, shard.dim), dtype=shard.dtype, buffer=self._mm, offset=shard.data_offset
        )

    def release(self, row_start: int = 0, row_stop: Optional[int] = None) -> None:
        """Drops the pages of rows [row_start, row_stop) from the resident set (they stay in the
        page cache; a later access faults them back in)."""
        if _MADV_DONTNEED is None or self._mm.closed:
            return
        s = self.shard
        row_stop = s.rows if row_stop is None else row_stop
        lo = s.data_offset + row_start * s.row_bytes
        hi = min(s.data_offset + row_stop * s.row_bytes, len(self._mm))
        lo -= lo % _PAGE
        if hi > lo:
            try:
                self._mm.madvise(_MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError):  # advice only; never fail a read over it
                pass

    def close(self) -> None:
        # drops the view so that the map can close; a closed shard is never read again
        self.array = None  # type: ignore[assignment]
        try:
            self._mm.close()
        except BufferError:  # a view is still alive somewhere; the GC closes it later
            pass
        self._file.close()


def _as_id_array(ids) -> np.ndarray:
    a = np.asarray(ids)
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers, got dtype {a.dtype}")
    if a.dtype.kind == "u" and a.max() > np.iinfo(np.int64).max:
        raise IdOutOfRangeError(f"id {a.max()} is out of range (does not fit in int64)")
    return a.reshape(-1).astype(np.int64, copy=False)


def _check_index(v, name: str, lo: int, hi: int) -> int:
    """An integer in [lo, hi] (TypeError / IdOutOfRangeError otherwise)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    v = int(v)
    if not lo <= v <= hi:
        raise IdOutOfRangeError(f"{name} {v} is out of range [{lo}, {hi}]")
    return v


def _numeric_key(name: str) -> Optional[int]:
    m = re.search(r"(\d+)$", Path(name).stem)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------
# a folder of .npy shards


class EmbeddingShards:
    """The ``.npy`` shards of one folder, in lexicographic order of file names.

    Parameters
    ----------
    folder : a folder of ``*.npy`` files, each (rows, dim) float16/float32/float64, all of the
        same dim. Zero-row shards are allowed. Other files are ignored.
    label : word used in error messages ("images", "captions").

    Only headers are read on construction; every problem (missing folder, no shards, a damaged or
    truncated file, a different dim) raises :class:`ShardError` (or FileNotFoundError) naming the
    file. Use as a context manager (or call :meth:`close`) to release the memory maps early.
    """

    def __init__(self, folder, *, label: str = "embeddings"):
        folder = Path(folder)
        self.label = label
        if not folder.exists():
            raise FileNotFoundError(f"{label} folder {str(folder)!r} does not exist")
        if not folder.is_dir():
            raise ShardError(f"{label} path {str(folder)!r} is not a folder of .npy shards")
        files = sorted(
            (p for p in folder.iterdir() if p.name.endswith(".npy") and not p.name.startswith(".")),
            key=lambda p: p.name,
        )
        files = [p for p in files if p.is_file()]
        if not files:
            raise ShardError(f"{label} folder {str(folder)!r} contains no .npy shards")
        shards: list[NpyShard] = []
        offset = 0
        for p in files:
            s = _inspect_npy(p, offset)
            if shards and s.dim != shards[0].dim:
                raise ShardError(
                    f"{p} has dim {s.dim} but {shards[0].path.name} has dim {shards[0].dim}; "
                    f"all {label} shards must have the same dim"
                )
            shards.append(s)
            offset += s.rows
        self.folder = folder
        self.shards: list[NpyShard] = shards
        self.ntotal = offset
        self.dim = shards[0].dim
        self._offsets = np.array([s.offset for s in shards] + [offset], dtype=np.int64)
        self._maps: dict[int, _Mapped] = {}

    # -- facts --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self):
        return (
            f"EmbeddingShards({str(self.folder)!r}, shards={len(self.shards)}, ntotal={self.ntotal}, "
            f"dim={self.dim})"
        )

    @property
    def dtypes(self) -> list[np.dtype]:
        """The distinct dtypes of the shards (float16 and/or float32), sorted by name."""
        return sorted({s.dtype for s in self.shards}, key=str)

    def shard_of(self, ids: np.ndarray) -> np.ndarray:
        """Index of the shard holding each global id (ids must be in range)."""
        return np.searchsorted(self._offsets, ids, side="right") - 1

    # -- memory maps --------------------------------------------------------------------------
    def _map(self, i: int) -> _Mapped:
        m = self._maps.get(i)
        if m is None:
            m = self._maps[i] = _Mapped(self.shards[i])
        return m

    def _unmap(self, i: int) -> None:
        m = self._maps.pop(i, None)
        if m is not None:
            m.close()

    def close(self) -> None:
        """Releases every memory map opened so far (reading again maps the shards anew)."""
        for i in list(self._maps):
            self._unmap(i)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- reading ------------------------------------------------------------------------------
    def read(
        self,
        shard: int,
        start: int,
        stop: int,
        out: Optional[np.ndarray] = None,
        check_finite: bool = True,
    ) -> np.ndarray:
        """Rows [start, stop) of one shard as float32 (stop - start, dim), written into
        ``out[:stop-start]`` when given (a C-contiguous float32 buffer with enough rows). The pages
        read are released afterwards. NaN/inf values raise ShardError naming file and row."""
        shard = _check_index(shard, "shard", 0, len(self.shards) - 1)
        s = self.shards[shard]
        for name, v in (("start", start), ("stop", stop)):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
        start, stop = int(start), int(stop)
        if not (0 <= start <= stop <= s.rows):
            raise IdOutOfRangeError(f"rows [{start}, {stop}) out of range for {s.path} ({s.rows} rows)")
        m = stop - start
        if out is not None and not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
        if out is None:
            dst = np.empty((m, s.dim), dtype=np.float32)
        else:
            if (
                out.dtype != np.float32
                or not out.flags.c_contiguous
                or out.ndim != 2
                or out.shape[1] != s.dim
                or out.shape[0] < m
            ):
                raise ValueError(
                    f"out must be a C-contiguous float32 array with at least {m} rows "
                    f"and {s.dim} columns"
                )
            dst = out[:m]
        if m:
            mapped = self._map(shard)
            np.copyto(dst, mapped.array[start:stop], casting="same_kind")
            mapped.release(start, stop)
            if check_finite and not _core.all_finite(dst):  # type: ignore[arg-type]  # an ndarray exports the buffer protocol; numpy's stubs declare __buffer__ only from Python 3.12
                bad = int(np.flatnonzero(~np.isfinite(dst).all(axis=1))[0])
                raise ShardError(
                    f"{s.path} row {start + bad} (global id {s.offset + start + bad}) "
                    "contains NaN or infinite values"
                )
        return dst

    def iter_batches(
        self, batch_size: int, *, start_shard: int = 0, buffer: Optional[np.ndarray] = None
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yields (shard index, global id of the first row, float32 rows) for batches of at most
        ``batch_size`` rows, shard by shard from ``start_shard``; batches never span two shards.

        The rows live in one reused buffer (``buffer`` or a new one of batch_size x dim): copy
        them if you keep them past the next iteration. Each shard's map is closed after use.
        """
        if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, numbers.Integral):
            raise TypeError(f"batch_size must be an integer, got {type(batch_size).__name__}")
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        start_shard = _check_index(start_shard, "start_shard", 0, len(self.shards))
        if buffer is None:
            largest = max((s.rows for s in self.shards[start_shard:]), default=0)
            buffer = np.empty((max(1, min(batch_size, largest)), self.dim), dtype=np.float32)
        for i in range(start_shard, len(self.shards)):
            s = self.shards[i]
            try:
                for a in range(0, s.rows, batch_size):
                    b = min(s.rows, a + batch_size)
                    yield i, s.offset + a, self.read(i, a, b, out=buffer)
            finally:
                self._unmap(i)

    def fetch(self, ids, *, check_finite: bool = False) -> np.ndarray:
        """float32 (len(ids), dim): the rows with these global ids, in the order given (repeats
        allowed). Out-of-range ids (including the -1 padding of search results) raise IndexError."""
        ids = _as_id_array(ids)
        out = np.empty((ids.shape[0], self.dim), dtype=np.float32)
        if ids.size == 0:
            return out
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.ntotal:
            bad = lo if lo < 0 else hi
            raise IdOutOfRangeError(
                f"id {bad} is out of range for {self.label} with {self.ntotal} rows "
                "(filter the -1 padding of search results first)"
            )
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        which = self.shard_of(sorted_ids)
        bounds = np.flatnonzero(np.diff(which)) + 1
        for seg in np.split(np.arange(sorted_ids.shape[0]), bounds):
            i = int(which[seg[0]])
            s = self.shards[i]
            local = sorted_ids[seg] - s.offset
            was_mapped = i in self._maps
            mapped = self._map(i)
            out[order[seg]] = mapped.array[local]
            if not was_mapped:
                self._unmap(i)
        if check_finite and not _core.all_finite(out):  # type: ignore[arg-type]  # an ndarray exports the buffer protocol; numpy's stubs declare __buffer__ only from Python 3.12
            raise ShardError(f"{self.label}: some fetched rows contain NaN or infinite values")
        return out

    def fingerprint_items(self, probe_bytes: int = 16384) -> list[dict]:
        """Per shard: name, rows, dim, dtype, file size and a hash of the first and last
        ``probe_bytes`` of its data: cheap to compute, and it notices replaced or edited shards
        (not every possible edit in the middle of a file)."""
        import hashlib

        items = []
        for s in self.shards:
            h = hashlib.sha256()
            with open(s.path, "rb") as f:
                f.seek(s.data_offset)
                h.update(f.read(min(probe_bytes, s.nbytes)))
                if s.nbytes > probe_bytes:
                    f.seek(s.data_offset + max(probe_bytes, s.nbytes - probe_bytes))
                    h.update(f.read(probe_bytes))
            items.append(
                {
                    "name": s.name,
                    "rows": s.rows,
                    "dim": s.dim,
                    "dtype": str(s.dtype),
                    "bytes": s.file_size,
                    "probe": h.hexdigest()[:32],
                }
            )
        return items


# ---------------------------------------------------------------------------------------------
# parquet metadata


class MetadataShards:
    """``*.parquet`` files row-aligned with embedding shards (one per shard, in lexicographic order
    of names, e.g. ``metadata_0.parquet`` for ``img_emb_0.npy``). Needs pyarrow.

    ``embeddings``: when given, the number of files and the row count of each are checked
    against it (ShardError naming the file otherwise). Row counts come from the parquet footers;
    no data is read until :meth:`fetch`."""

    def __init__(self, folder, embeddings: Optional[EmbeddingShards] = None):
        pq = _pyarrow_parquet()
        folder = Path(folder)
        if not folder.exists():
            raise FileNotFoundError(f"metadata folder {str(folder)!r} does not exist")
        files = sorted(
            (
                p
                for p in folder.iterdir()
                if p.name.endswith(".parquet") and p.is_file() and not p.name.startswith(".")
            ),
            key=lambda p: p.name,
        )
        if not files:
            raise ShardError(f"metadata folder {str(folder)!r} contains no .parquet files")
        rows = []
        for p in files:
            try:
                rows.append(int(pq.ParquetFile(p).metadata.num_rows))
            except Exception as e:
                raise ShardError(f"{p} is not a readable parquet file: {e}") from e
        self.folder = folder
        self.files = files
        self.rows = rows
        self.ntotal = int(sum(rows))
        self._offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        if embeddings is not None:
            _check_pairs(
                embeddings.shards,
                [(p, r) for p, r in zip(files, rows)],
                embeddings.label,
                "metadata",
            )

    def __len__(self) -> int:
        return self.ntotal

    def fetch(self, ids, columns: Optional[Sequence[str]] = None):
        """A pyarrow Table with the rows of these global ids, in the order given (repeats allowed),
        reading only the row groups that hold them. ``columns``: a subset (default: all)."""
        import pyarrow as pa

        pq = _pyarrow_parquet()
        ids = _as_id_array(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.ntotal):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise IdOutOfRangeError(f"id {bad} is out of range for metadata with {self.ntotal} rows")
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        which = np.searchsorted(self._offsets, sorted_ids, side="right") - 1
        tables = []
        if ids.size:
            bounds = np.flatnonzero(np.diff(which)) + 1
            for seg in np.split(np.arange(sorted_ids.shape[0]), bounds):
                i = int(which[seg[0]])
                local = sorted_ids[seg] - self._offsets[i]
                pf = pq.ParquetFile(self.files[i])
                sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
                starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
                groups = np.unique(np.searchsorted(starts, local, side="right") - 1)
                table = pf.read_row_groups([int(g) for g in groups], columns=columns)
                # position of each local row inside the concatenation of the groups read
                base = np.cumsum([0] + [sizes[g] for g in groups[:-1]])
                g_of = np.searchsorted(groups, np.searchsorted(starts, local, side="right") - 1)
                pos = base[g_of] + (local - starts[groups[g_of]])
                tables.append(table.take(pa.array(pos, type=pa.int64())))
        else:
            pf = pq.ParquetFile(self.files[0])
            tables.append(
                pf.schema_arrow.empty_table()
                if columns is None
                else pf.schema_arrow.empty_table().select(list(columns))
            )
        try:
            merged = pa.concat_tables(tables, promote_options="default")
        except TypeError:  # pyarrow < 14
            merged = pa.concat_tables(tables, promote=True)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.shape[0])
        return merged.take(pa.array(inverse, type=pa.int64()))


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading metadata/*.parquet needs pyarrow: pip install 'mudg_fast[pipeline]'"
        ) from e
    return pq


# ---------------------------------------------------------------------------------------------
# collections: images + captions (+ metadata)


def _check_pairs(
    left: Sequence[NpyShard], right: Sequence[tuple[Path, int]], left_label: str, right_label: str
) -> None:
    if len(left) != len(right):
        raise ShardError(
            f"{len(left)} {left_label} shards but {len(right)} {right_label} files: they must "
            f"be row-aligned one to one ({left[0].path.parent} vs {right[0][0].parent})"
        )
    lkeys = [_numeric_key(s.name) for s in left]
    rkeys = [_numeric_key(p.name) for p, _ in right]
    check_keys = all(k is not None for k in lkeys + rkeys)
    for s, (p, rows), lk, rk in zip(left, right, lkeys, rkeys):
        if check_keys and lk != rk:
            raise ShardError(
                f"{left_label} shard {s.path} pairs with {p} by sorted order, but their "
                f"numbers differ ({lk} vs {rk}); shards must be row-aligned one to one"
            )
        if rows != s.rows:
            raise ShardError(
                f"{p} has {rows} rows but {left_label} shard {s.path} has {s.rows}; "
                "row-aligned shards must have equal row counts"
            )


def check_aligned(images: EmbeddingShards, captions: EmbeddingShards) -> None:
    """Raises ShardError unless the two folders are row-aligned (same shard count, same rows per
    shard, matching shard numbers when names end in numbers) and share the dim."""
    _check_pairs(
        images.shards, [(s.path, s.rows) for s in captions.shards], images.label, captions.label
    )
    if images.dim != captions.dim:
        raise ShardError(
            f"{images.label} have dim {images.dim} ({images.shards[0].path}) but "
            f"{captions.label} have dim {captions.dim} ({captions.shards[0].path}); paired "
            "embeddings must come from the same model"
        )


@dataclass
class Collection:
    """Row-aligned image embeddings, optional caption embeddings and optional metadata."""

    images: EmbeddingShards
    captions: Optional[EmbeddingShards] = None
    metadata: Optional[MetadataShards] = None

    @property
    def ntotal(self) -> int:
        """Number of rows (images) in the collection."""
        return self.images.ntotal

    def close(self) -> None:
        """Releases the memory maps of the image and caption shards."""
        self.images.close()
        if self.captions is not None:
            self.captions.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_collection(
    root=None, *, images_dir=None, captions_dir=None, metadata_dir=None
) -> Collection:
    """Opens and validates a collection. Either ``root`` (a clip-retrieval output folder: its
    ``img_emb/`` and, when present, ``text_emb/`` and ``metadata/``) or explicit folders."""
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"collection folder {str(root)!r} does not exist")
        images_dir = images_dir or root / "img_emb"
        if captions_dir is None and (root / "text_emb").is_dir():
            captions_dir = root / "text_emb"
        if metadata_dir is None and (root / "metadata").is_dir():
            metadata_dir = root / "metadata"
    if images_dir is None:
        raise ValueError("give a collection root or images_dir")
    images = EmbeddingShards(images_dir, label="images")
    captions = None
    if captions_dir is not None:
        captions = EmbeddingShards(captions_dir, label="captions")
        check_aligned(images, captions)
    metadata = MetadataShards(metadata_dir, images) if metadata_dir is not None else None
    return Collection(images, captions, metadata)


def fetch_embeddings(source, ids) -> np.ndarray:
    """float32 rows of a shard folder (path or EmbeddingShards) by global id, in the order given."""
    if isinstance(source, EmbeddingShards):
        return source.fetch(ids)
    with EmbeddingShards(source) as shards:
        return shards.fetch(ids)


def fetch_metadata(source, ids, columns: Optional[Sequence[str]] = None):
    """pyarrow Table of metadata rows (folder of parquet files or MetadataShards) by global id."""
    if not isinstance(source, MetadataShards):
        source = MetadataShards(source)
    return source.fetch(ids, columns=columns)


def sample_ids(ntotal: int, n: int, seed: int) -> np.ndarray:
    """Sorted int64 array of min(n, ntotal) distinct ids drawn uniformly from [0, ntotal) with a
    seeded generator (never "the first n rows")."""
    for name, v in (("ntotal", ntotal), ("n", n), ("seed", seed)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    if ntotal > np.iinfo(np.int64).max:
        raise ValueError(f"ntotal={ntotal} does not fit in int64")
    n = min(int(n), int(ntotal))
    ids = np.random.default_rng(int(seed)).choice(int(ntotal), size=n, replace=False)
    return np.sort(ids.astype(np.int64))


def gather(
    shards: EmbeddingShards, ids: np.ndarray, out: Optional[np.ndarray] = None
) -> np.ndarray:
    """float32 rows for *sorted* global ids, one shard at a time, releasing each shard's pages and
    map after use: memory stays at the output plus one shard's selected rows."""
    if not isinstance(shards, EmbeddingShards):
        raise TypeError(f"shards must be an EmbeddingShards, got {type(shards).__name__}")
    a = np.asarray(ids)
    if a.ndim != 1:
        raise ValueError(f"ids must be a 1-D array, got shape {a.shape}")
    ids = _as_id_array(a)
    if out is None:
        out = np.empty((ids.shape[0], shards.dim), dtype=np.float32)
    elif not (isinstance(out, np.ndarray) and out.dtype == np.float32
              and out.shape == (ids.shape[0], shards.dim)):
        raise ValueError(f"out must be a float32 array of shape ({ids.shape[0]}, {shards.dim})")
    if ids.size and np.any(ids[1:] < ids[:-1]):
        raise ValueError("gather() needs sorted ids")
    if ids.size and (ids[0] < 0 or ids[-1] >= shards.ntotal):
        bad = int(ids[0]) if ids[0] < 0 else int(ids[-1])
        raise IdOutOfRangeError(f"id {bad} is out of range for {shards.label} with {shards.ntotal} rows")
    which = shards.shard_of(ids)
    for i in np.unique(which):
        sel = np.flatnonzero(which == i)
        s = shards.shards[int(i)]
        was_mapped = int(i) in shards._maps
        mapped = shards._map(int(i))
        out[sel] = mapped.array[ids[sel] - s.offset]
        if was_mapped:
            mapped.release()
        else:
            shards._unmap(int(i))
    if ids.size and not _core.all_finite(out):  # type: ignore[arg-type]  # an ndarray exports the buffer protocol; numpy's stubs declare __buffer__ only from Python 3.12
        bad = int(ids[np.flatnonzero(~np.isfinite(out).all(axis=1))[0]])
        s = shards.shards[int(shards.shard_of(np.array([bad]))[0])]
        raise ShardError(
            f"{s.path} row {bad - s.offset} (global id {bad}) contains NaN or infinite values"
        )
    return out


def write_collection(
    root, images, captions=None, *, shard_rows: int, dtype=np.float16, metadata=None
) -> Path:
    """Writes embeddings in the clip-retrieval layout under ``root``: ``img_emb/img_emb_{i}.npy``,
    ``text_emb/text_emb_{i}.npy`` (when ``captions`` is given) and ``metadata/metadata_{i}.parquet``
    (when ``metadata`` is given: a dict of equal-length columns, or a pyarrow Table), ``shard_rows``
    rows per shard (the last one may be shorter). Each file is written atomically. Returns root.

    Shard numbers are zero-padded to a common width so that lexicographic and numeric order agree.
    """
    from .index import atomic_write

    root = Path(root)
    images = np.asarray(images)
    n = images.shape[0]
    if captions is not None and np.asarray(captions).shape[0] != n:
        raise ValueError("images and captions must have the same number of rows")
    shard_rows = int(shard_rows)
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
    n_shards = max(1, -(-n // shard_rows))
    width = len(str(n_shards - 1))
    table = None
    if metadata is not None:
        import pyarrow as pa

        table = metadata if isinstance(metadata, pa.Table) else pa.table(metadata)
        if table.num_rows != n:
            raise ValueError(f"metadata has {table.num_rows} rows, the embeddings {n}")
    parts = [("img_emb", images)] + (
        [("text_emb", np.asarray(captions))] if captions is not None else []
    )
    for i in range(n_shards):
        a, b = i * shard_rows, min(n, (i + 1) * shard_rows)
        for name, arr in parts:
            chunk = np.ascontiguousarray(arr[a:b], dtype=dtype)
            atomic_write(
                root / name / f"{name}_{i:0{width}d}.npy", lambda tmp, c=chunk: _save_npy(tmp, c)
            )
        if table is not None:
            atomic_write(
                root / "metadata" / f"metadata_{i:0{width}d}.parquet",
                lambda tmp, a=a, b=b: _pyarrow_parquet().write_table(table.slice(a, b - a), tmp),
            )
    return root


def _save_npy(path, array) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to the name
        np.save(f, array)
