"""Labelled image sets for fine-tuning and evaluation, and the deterministic batch plan.

Three sources, all turned into a :class:`LabeledImages` (image sources + int64 labels + class
names):

- **ImageFolder** (torchvision's convention): ``root/<class>/<image>``; classes are the
  sub-folders in sorted order (label i = i-th folder), hidden entries are skipped, a class folder
  may be empty. Display names default to the folder names with ``_`` read as a space.
- **Selection manifest** (parquet, read with pyarrow): one row per image with ``label`` (int
  class index) and usually ``id``, ``classname``, ``path``. Relative paths are relative to the
  manifest's folder. Rows whose ``path`` is null (not downloaded) are dropped with a warning.
- **Manifest + img2dataset webdataset**: the folder of ``*.tar`` shards that img2dataset writes
  (members ``<key>.jpg`` + ``<key>.json``/``.txt``), read with the standard library ``tarfile``:
  the shards are indexed once and each image is read later by seeking to its offset. A sample is
  matched to a manifest row by, in order: an ``id`` field in its json (img2dataset's
  ``--save_additional_columns``), its ``url`` when the manifest has a ``url`` column, or its key
  read as an integer id. Samples whose json ``status`` is not ``"success"`` are skipped.

The batch plan makes training a pure function of ``(seed, iteration)``: batch ``i`` holds
positions ``i*B .. (i+1)*B-1`` of an endless stream of per-epoch permutations (each drawn from a
``torch.Generator`` seeded with ``(seed, epoch)``), and each sample carries its own augmentation
seed drawn from ``(seed, iteration)``. Resuming therefore needs only the iteration counter, and
results do not depend on ``num_workers``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
import tarfile
import warnings
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from .._extras import require
from ..clip import decode_image
from .prompts import load_classnames

__all__ = ["LabeledImages", "TarMember", "scan_image_folder", "scan_webdataset", "read_manifest",
           "load_data", "open_image", "batch_plan", "BatchPlan", "ImageDataset", "stack_batch"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class TarMember(NamedTuple):
    """An image stored inside a tar shard: read ``size`` bytes at ``offset`` of ``shard``."""
    shard: str
    offset: int
    size: int
    name: str


@dataclasses.dataclass
class LabeledImages:
    """``sources[i]`` (a path or a :class:`TarMember`) has class ``labels[i]`` (int64, in
    ``[0, len(classnames))``); ``ids`` are the manifest ids (int64) or None for an ImageFolder."""

    sources: list
    labels: np.ndarray
    classnames: list[str]
    ids: np.ndarray | None = None
    origin: str = ""

    def __len__(self) -> int:
        return len(self.sources)

    def class_counts(self) -> np.ndarray:
        """Images per class, int64 (n_classes,)."""
        return np.bincount(self.labels, minlength=len(self.classnames)).astype(np.int64)

    def fingerprint(self) -> str:
        """sha256 of the sources, labels and class names: changes whenever the data does."""
        h = hashlib.sha256()
        h.update(json.dumps(self.classnames).encode())
        for s, y in zip(self.sources, self.labels.tolist()):
            h.update(repr(tuple(s) if isinstance(s, TarMember) else s).encode())
            h.update(str(y).encode())
        return h.hexdigest()

    def source_name(self, i: int) -> str:
        s = self.sources[i]
        return f"{s.shard}:{s.name}" if isinstance(s, TarMember) else str(s)


def open_image(source):
    """A path or :class:`TarMember` -> RGB PIL image. Raises ValueError naming the file when it
    cannot be read or decoded."""
    if not isinstance(source, TarMember):
        return decode_image(source)
    where = f"{source.shard}:{source.name}"
    try:
        with open(source.shard, "rb") as f:
            f.seek(source.offset)
            data = f.read(source.size)
    except OSError as e:
        raise ValueError(f"cannot read image {where}: {e}") from e
    if len(data) != source.size:
        raise ValueError(f"cannot read image {where}: truncated, {len(data)} of {source.size} "
                         "bytes")
    return decode_image(io.BytesIO(data), name=where)


def _display_name(folder: str) -> str:
    return folder.replace("_", " ")


def scan_image_folder(root, classnames=None) -> LabeledImages:
    """Scans ``root/<class>/<image>``. ``classnames`` (list or file, one per class folder in
    sorted folder order) overrides the display names. Raises FileNotFoundError for a missing root
    and ValueError when there are no class folders or no images at all."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
    names = [_display_name(f) for f in folders]
    if classnames is not None:
        given = load_classnames(classnames)
        if len(given) != len(folders):
            raise ValueError(f"{len(given)} class names given but {root} has {len(folders)} "
                             f"class folders ({', '.join(folders[:5])}...)")
        names = given
    sources, labels = [], []
    for y, f in enumerate(folders):
        for dirpath, dirnames, files in os.walk(root / f, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(files):
                if not fn.startswith(".") and fn.lower().endswith(IMAGE_EXTENSIONS):
                    sources.append(os.path.join(dirpath, fn))
                    labels.append(y)
    if not sources:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return LabeledImages(sources, np.asarray(labels, np.int64), names, None, origin=str(root))


def _read_parquet(path):
    pq = require("pyarrow.parquet", "reading a manifest")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest not found: {path}")
    try:
        table = pq.read_table(path)
    except Exception as e:
        raise ValueError(f"cannot read manifest {path} as parquet: {e}") from e
    return table


def _int_column(table, name, path) -> np.ndarray:
    col = table.column(name)
    if col.null_count:
        raise ValueError(f"manifest {path}: column {name!r} has {col.null_count} null values")
    a = col.to_numpy(zero_copy_only=False)
    if a.dtype.kind not in "iu":
        raise ValueError(f"manifest {path}: column {name!r} must hold integers, got {a.dtype}")
    return a.astype(np.int64)


def _manifest_classes(table, labels, classnames, path) -> list[str]:
    has_names = "classname" in table.column_names
    col = table.column("classname").to_pylist() if has_names else None
    if classnames is not None:
        names = load_classnames(classnames)
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            raise ValueError(f"manifest {path}: labels span [{labels.min()}, {labels.max()}] but "
                             f"{len(names)} class names were given")
        if col is not None:
            for y, c in zip(labels.tolist(), col):
                if c is not None and c != names[y]:
                    raise ValueError(f"manifest {path}: a row with label {y} has classname "
                                     f"{c!r}, but class {y} is {names[y]!r} in the class list")
        return names
    if col is None:
        raise ValueError(f"manifest {path} has no 'classname' column; pass classnames=<list or "
                         "the selection summary JSON>")
    mapping: dict[int, str] = {}
    for y, c in zip(labels.tolist(), col):
        if c is None:
            raise ValueError(f"manifest {path}: null classname for label {y}")
        if mapping.setdefault(y, c) != c:
            raise ValueError(f"manifest {path}: label {y} has two class names, "
                             f"{mapping[y]!r} and {c!r}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"manifest {path}: negative label {labels.min()}")
    n = int(labels.max()) + 1 if labels.size else 0
    missing = [y for y in range(n) if y not in mapping]
    if missing:
        raise ValueError(f"manifest {path}: no rows for labels {missing[:10]}, so their class "
                         "names are unknown; pass classnames=<the full class list, e.g. the "
                         "selection summary JSON>")
    return [mapping[y] for y in range(n)]


def scan_webdataset(folder) -> list[tuple[str, TarMember, dict]]:
    """Indexes img2dataset tar shards: ``[(key, image member, json metadata or {})]`` in shard
    and member order. Samples whose json has a ``status`` other than ``"success"`` are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"webdataset folder not found: {folder}")
    shards = sorted(p for p in folder.iterdir() if p.suffix == ".tar" and p.is_file())
    if not shards:
        raise ValueError(f"no .tar shards in {folder} (expected img2dataset's webdataset output)")
    out = []
    for shard in shards:
        images: dict[str, TarMember] = {}
        metas: dict[str, dict] = {}
        try:
            with tarfile.open(shard, "r:") as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    key, ext = os.path.splitext(m.name)
                    ext = ext.lower()
                    if ext in IMAGE_EXTENSIONS:
                        images.setdefault(key, TarMember(str(shard), m.offset_data, m.size,
                                                         m.name))
                    elif ext == ".json":
                        try:
                            fobj = tar.extractfile(m)
                            metas[key] = json.loads(fobj.read() if fobj is not None else b"")
                        except (json.JSONDecodeError, UnicodeDecodeError) as e:
                            raise ValueError(f"{shard}:{m.name} is not valid JSON: {e}") from e
        except tarfile.TarError as e:
            raise ValueError(f"cannot read tar shard {shard}: {e}") from e
        for key, member in images.items():
            meta = metas.get(key, {})
            if meta.get("status", "success") != "success":
                continue
            out.append((os.path.basename(key), member, meta))
    return out


def read_manifest(path, *, webdataset=None, classnames=None) -> LabeledImages:
    """A selection manifest as :class:`LabeledImages` (see the module docstring for the columns
    and how webdataset samples are matched). Raises FileNotFoundError for missing files (all
    missing image paths are counted and the first ones listed) and ValueError for missing or
    inconsistent columns."""
    table = _read_parquet(path)
    path = os.fspath(path)
    cols = table.column_names
    if "label" not in cols:
        raise ValueError(f"manifest {path} has no 'label' column (columns: {', '.join(cols)})")
    labels = _int_column(table, "label", path)
    names = _manifest_classes(table, labels, classnames, path)
    ids = _int_column(table, "id", path) if "id" in cols else None
    if ids is not None and len(np.unique(ids)) != len(ids):
        raise ValueError(f"manifest {path}: column 'id' has duplicate values")

    if webdataset is not None:
        if ids is None:
            raise ValueError(f"manifest {path} has no 'id' column, needed to match webdataset "
                             "samples to rows")
        samples = scan_webdataset(webdataset)
        row_of_id = {int(i): r for r, i in enumerate(ids.tolist())}
        row_of_url = ({u: r for r, u in enumerate(table.column("url").to_pylist()) if u}
                      if "url" in cols else {})
        sources: list = [None] * len(ids)
        for key, member, meta in samples:
            row = None
            jid = meta.get("id")
            if isinstance(jid, str) and jid.strip().lstrip("-").isdigit():
                jid = int(jid)
            if isinstance(jid, int) and not isinstance(jid, bool):
                row = row_of_id.get(jid)
            elif row_of_url and meta.get("url"):
                row = row_of_url.get(meta["url"])
            elif key.isdigit():
                row = row_of_id.get(int(key))
            if row is not None and sources[row] is None:
                sources[row] = member
        keep = [r for r, s in enumerate(sources) if s is not None]
        if not keep:
            raise ValueError(f"none of the {len(samples)} images in {webdataset} matched a row of "
                             f"{path} (by json 'id', by 'url', or by key as id)")
        if len(keep) < len(ids):
            warnings.warn(f"{len(ids) - len(keep)} of {len(ids)} manifest rows have no image in "
                          f"{webdataset}; training on the {len(keep)} that do", stacklevel=3)
        return LabeledImages([sources[r] for r in keep], labels[keep], names, ids[keep],
                             origin=f"{path} + {os.fspath(webdataset)}")

    if "path" not in cols:
        raise ValueError(f"manifest {path} has no 'path' column; download the images and add it, "
                         "or pass webdataset=<img2dataset output folder>")
    base = os.path.dirname(os.path.abspath(path))
    raw = table.column("path").to_pylist()
    keep = [r for r, p in enumerate(raw) if p]
    if not keep:
        raise ValueError(f"manifest {path}: every 'path' is empty (no image downloaded)")
    if len(keep) < len(raw):
        warnings.warn(f"{len(raw) - len(keep)} of {len(raw)} manifest rows have no path (not "
                      "downloaded); using the others", stacklevel=3)
    paths = [os.path.join(base, raw[r]) if not os.path.isabs(raw[r]) else raw[r] for r in keep]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise FileNotFoundError(f"manifest {path}: {len(missing)} image file(s) not found: "
                                f"{', '.join(missing[:5])}{more}")
    return LabeledImages(paths, labels[keep], names, None if ids is None else ids[keep],
                         origin=path)


def load_data(*, manifest=None, image_folder=None, webdataset=None,
              classnames=None) -> LabeledImages:
    """One of ``manifest`` (optionally with ``webdataset``) or ``image_folder``."""
    if (manifest is None) == (image_folder is None):
        raise ValueError("give exactly one of manifest=<parquet> or image_folder=<root>")
    if image_folder is not None:
        if webdataset is not None:
            raise ValueError("webdataset= goes with manifest=, not image_folder=")
        return scan_image_folder(image_folder, classnames)
    return read_manifest(manifest, webdataset=webdataset, classnames=classnames)


# --- deterministic batches ----------------------------------------------------------------------

def _mix(*words: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence(list(words)).generate_state(1, np.uint64)[0] >> np.uint64(1))


_STREAM_PERM, _STREAM_AUG = 0x9E3779B1, 0x85EBCA77


class BatchPlan:
    """Batches ``start`` to ``stop - 1`` of the endless shuffled stream, each a list of ``(index,
    augmentation seed)`` pairs of length ``batch_size`` (a batch may span two epochs). Usable as a
    DataLoader ``batch_sampler``; ``batch(i)`` gives any batch directly."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int = 0, stop: int = 0):
        if n < 1:
            raise ValueError("cannot plan batches over an empty dataset")
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.start, self.stop = int(start), int(stop)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        p = self._perms.get(epoch)
        if p is None:
            import torch

            g = torch.Generator().manual_seed(_mix(self.seed, _STREAM_PERM, epoch))
            p = torch.randperm(self.n, generator=g).numpy()
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = p
        return p

    def indices(self, iteration: int) -> np.ndarray:
        """Dataset indices of batch ``iteration``, int64 (batch_size,)."""
        out = np.empty(self.batch_size, np.int64)
        pos, filled = iteration * self.batch_size, 0
        while filled < self.batch_size:
            epoch, off = divmod(pos, self.n)
            take = min(self.batch_size - filled, self.n - off)
            out[filled:filled + take] = self._perm(epoch)[off:off + take]
            filled += take
            pos += take
        return out

    def seeds(self, iteration: int) -> np.ndarray:
        """Per-sample augmentation seeds of batch ``iteration``, int64 (batch_size,)."""
        ss = np.random.SeedSequence([self.seed, _STREAM_AUG, iteration])
        return (ss.generate_state(self.batch_size, np.uint64) >> np.uint64(1)).astype(np.int64)

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        return list(zip(self.indices(iteration).tolist(), self.seeds(iteration).tolist()))

    def __iter__(self):
        for i in range(self.start, self.stop):
            yield self.batch(i)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def batch_plan(n: int, batch_size: int, seed: int, iteration: int) -> list[tuple[int, int]]:
    """Batch ``iteration`` of the stream: ``[(dataset index, augmentation seed)] * batch_size``."""
    return BatchPlan(n, batch_size, seed).batch(iteration)


class ImageDataset:
    """Map-style dataset over :class:`LabeledImages` returning ``(image tensor, label)``.

    An item is either an index (no randomness) or an ``(index, seed)`` pair: the transform then
    runs with torch's and Python's global RNGs seeded from ``seed`` and restored afterwards, so
    augmentations are reproducible and independent of worker processes.
    """

    def __init__(self, data: LabeledImages, transform):
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item):
        import torch

        index, seed = item if isinstance(item, tuple) else (item, None)
        img = open_image(self.data.sources[index])
        if seed is None:
            x = self.transform(img)
        else:
            py_state = random.getstate()
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    random.seed(seed)
                    x = self.transform(img)
            finally:
                random.setstate(py_state)
        return x, int(self.data.labels[index])


def stack_batch(dataset: ImageDataset, items: Sequence):
    """``(images (B, 3, H, W) float32, labels (B,) int64)`` for the given dataset items, read in
    the calling process (what the DataLoader produces, without worker processes)."""
    import torch

    xs, ys = zip(*(dataset[it] for it in items))
    return torch.stack(xs), torch.as_tensor(ys, dtype=torch.int64)
