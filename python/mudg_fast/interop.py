"""Export to faiss: an equivalent standard faiss IVF index that faiss, autofaiss and clip-retrieval
can load (``faiss.write_index`` / ``faiss.read_index``).

The coarse quantizer is an ``IndexFlatIP`` holding our centroids (a two-level quantizer: see
below), and every inverted list holds the same ids, in the same order, with the same decoded
vectors:

======  ==========================================  =============================================
codec   faiss index                                 vectors
======  ==========================================  =============================================
f32     ``IndexIVFFlat`` (inner product)            identical
f16     ``IndexIVFScalarQuantizer`` ``QT_fp16``     identical half-precision codes
sq8     ``IndexIVFScalarQuantizer`` ``QT_8bit``     identical codes, identical decoded values
sq4     ``IndexIVFFlat``                            our decoded vectors, stored as float32
======  ==========================================  =============================================

SQ8 mapping. Ours decodes code ``c`` of dimension k as ``vmin[k] + c * step[k]`` and encodes
``x`` as ``trunc(clip((x - vmin) / step + 0.5, 0, 255))`` (round to nearest). faiss's non-uniform
``QT_8bit`` decodes ``vmin' + (c + 0.5) / 255 * vdiff`` and encodes
``trunc(255 * clip((x - vmin') / vdiff, 0, 1))``. Its reconstruction points sit half a step
above its range minimum; choosing ``vdiff = 255 * step`` and ``vmin' = vmin - step / 2`` absorbs
that half step exactly: both decoders give ``vmin + c * step`` for every code, and both encoders
give the same code for every value (up to float rounding of values exactly on a decision
boundary). The codes are therefore copied unchanged, and vectors added later through faiss are
encoded as ours would be.

SQ4: our 4-bit codec has 16 fitted (non-uniform) levels per dimension and, in its residual form
(the default), codes the residual to the list centroid divided by a per-list scale. faiss's
``QT_4bit`` has 16 evenly spaced levels per dimension over one range shared by every list (with
or without ``by_residual``): it can express neither the fitted levels nor the per-list scales, so
no code mapping is exact. The export stores the decoded vectors (``centroid + scale * level``, or
the levels themselves in the direct form of older files) in an ``IndexIVFFlat`` instead, at 8x
the memory of the 4-bit codes: faiss then scores exactly the vectors ``reconstruct`` returns, and
its scores equal ours up to float rounding (ours are ``fma(scale, <q, levels>, <q, centroid>)``),
so the results agree but for near ties. Vectors added to the export are stored unquantised.

Two-level quantizer (``quantizer="two_level"``). faiss expresses it exactly as a nested IVF: the
IVF index's quantizer is an ``IndexIVFFlat`` over our centroids (ids = list numbers) whose own
quantizer is an ``IndexFlatIP`` of our cell centres, each of its lists holding the centroids of
one cell, with ``nprobe`` = our ``quantizer_probe``. faiss then scores the same cells and the same
centroids, so ``add`` and ``search`` choose the same lists as ours (faiss's own HNSW quantizer,
``IVF..._HNSW32``, is a different structure and would choose differently). What faiss cannot
reproduce: the order of exactly tied scores (ours: lower id first; faiss's heap order is
unspecified), and our cell-major batching (results are the same, only speed differs). Changing
``quantizer_probe`` later on our side does not change the exported ``quantizer.nprobe``; set it
with ``faiss.extract_index_ivf(index).quantizer`` after ``faiss.downcast_index``.

Lists are read with ``IVFIndex.list_ids`` and ``IVFIndex.reconstruct``; an index in which one id
occurs twice cannot be exported that way (``reconstruct`` returns one vector per id) and raises.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ivf_to_faiss", "faiss_sq8_params"]


def _import_faiss():
    try:
        import faiss
    except ImportError as e:
        raise ImportError(
            "exporting to faiss needs faiss: pip install faiss-cpu (or faiss-gpu)"
        ) from e
    return faiss


def faiss_sq8_params(vmin: np.ndarray, step: np.ndarray) -> np.ndarray:
    """faiss ``QT_8bit`` trained parameters ``[vmin'_0..vmin'_{d-1}, vdiff_0..vdiff_{d-1}]`` that
    decode every code exactly as our SQ8 (``vmin + c * step``) does; see the module docs."""
    vmin = np.asarray(vmin, dtype=np.float64)
    step = np.asarray(step, dtype=np.float64)
    return np.concatenate([vmin - 0.5 * step, 255.0 * step]).astype(np.float32)


def _sq8_codes(x: np.ndarray, vmin: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Codes of decoded SQ8 vectors (exact inverse of ``vmin + c * step``)."""
    c = np.rint((x.astype(np.float64) - vmin) / step)
    if c.size and (c.min() < 0 or c.max() > 255):  # pragma: no cover - would be our bug
        raise AssertionError("reconstructed SQ8 values fall outside the codec's range")
    codes = c.astype(np.uint8)
    back = (vmin + codes * step).astype(np.float32)
    if not np.allclose(back, x, rtol=0, atol=1e-3 * float(step.min()) + 1e-7):  # pragma: no cover
        raise AssertionError("reconstructed SQ8 values are not on the codec's grid")
    return codes


def _quantizer(faiss, index):
    """faiss's form of the index's coarse quantizer: IndexFlatIP of the centroids (flat), or an
    IndexIVFFlat over them with the cell centres as its quantizer (two-level)."""
    d, nlist = index.dim, index.nlist
    centroids = np.ascontiguousarray(index.centroids, dtype=np.float32)
    if index.quantizer != "two_level":
        flat = faiss.IndexFlatIP(d)
        flat.add(centroids)
        return flat
    state = index._ix.quantizer_state()
    cells = int(state["cells"])
    top = faiss.IndexFlatIP(d)
    top.add(np.ascontiguousarray(state["cell_centres"], dtype=np.float32))
    nested = faiss.IndexIVFFlat(top, d, cells, faiss.METRIC_INNER_PRODUCT)
    top.this.disown()
    nested.own_fields = True
    nested.is_trained = True
    cell_of = state["cell_of"]
    order = np.argsort(cell_of, kind="stable")  # centroids of each cell, ascending
    bounds = np.searchsorted(cell_of[order], np.arange(cells + 1))
    for s in range(cells):
        ids = np.ascontiguousarray(order[bounds[s]:bounds[s + 1]], dtype=np.int64)
        if ids.shape[0]:
            codes = np.ascontiguousarray(centroids[ids]).view(np.uint8)
            nested.invlists.add_entries(s, ids.shape[0], faiss.swig_ptr(ids), faiss.swig_ptr(codes))
    nested.ntotal = nlist
    nested.nprobe = int(min(int(state["probe"]), cells))
    return nested


def ivf_to_faiss(index, *, nprobe: int = 8):
    """An equivalent faiss index for an :class:`~mudg_fast.IVFIndex` (see the module docs).

    ``nprobe`` is stored as the faiss index's default (faiss's own default is 1; ours is 8).
    Raises ImportError when faiss is missing, ValueError for an untrained index or repeated ids.
    Memory: the faiss index holds a copy of all codes (sq4: float32 vectors)."""
    from .index import IVFIndex

    faiss = _import_faiss()
    if not isinstance(index, IVFIndex):
        raise TypeError(f"ivf_to_faiss() takes an IVFIndex, got {type(index).__name__}")
    if not index.is_trained:
        raise ValueError(
            "cannot export an untrained index: train it (or set its centroids and codec) first"
        )
    d, nlist, codec = index.dim, index.nlist, index.codec
    sizes = index.list_sizes()
    ids_per_list = [index.list_ids(j) if sizes[j] else None for j in range(nlist)]
    if index.ntotal:
        all_ids = np.concatenate([i for i in ids_per_list if i is not None])
        if np.unique(all_ids).shape[0] != all_ids.shape[0]:
            raise ValueError(
                "the index holds some ids more than once; the faiss export reads vectors by id and "
                "needs unique ids (give the vectors distinct ids when adding them)"
            )

    quantizer = _quantizer(faiss, index)
    ip = faiss.METRIC_INNER_PRODUCT
    if codec in ("f32", "sq4"):
        out = faiss.IndexIVFFlat(quantizer, d, nlist, ip)
    else:
        qtype = faiss.ScalarQuantizer.QT_fp16 if codec == "f16" else faiss.ScalarQuantizer.QT_8bit
        out = faiss.IndexIVFScalarQuantizer(
            quantizer, d, nlist, qtype, ip, False
        )  # by_residual=False
        if codec == "sq8":
            vmin, step = (np.asarray(p, dtype=np.float32) for p in index.codec_params())
            faiss.copy_array_to_vector(faiss_sq8_params(vmin, step), out.sq.trained)
            vmin64, step64 = vmin.astype(np.float64), step.astype(np.float64)
    # the index owns its quantizer (lifetime managed by faiss, also after read_index)
    quantizer.this.disown()
    out.own_fields = True
    out.is_trained = True

    for list_no in range(nlist):
        ids = ids_per_list[list_no]
        if ids is None:
            continue
        x = index.reconstruct(ids)
        if codec in ("f32", "sq4"):
            codes = np.ascontiguousarray(x, dtype=np.float32).view(np.uint8)
        elif codec == "f16":
            codes = np.ascontiguousarray(x.astype("<f2")).view(np.uint8)
        else:
            codes = np.ascontiguousarray(_sq8_codes(x, vmin64, step64))
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        out.invlists.add_entries(list_no, ids.shape[0], faiss.swig_ptr(ids), faiss.swig_ptr(codes))
    out.ntotal = index.ntotal
    out.nprobe = int(max(1, min(nprobe, nlist)))
    return out
