"""Streaming, resumable IVF index builds from embedding shards (clip-retrieval / LAION layout).

:func:`build_index` trains an :class:`~mudg_fast.IVFIndex` on a seeded random sample of the
shards (paired k-means when caption shards are given, standard k-means otherwise; see
docs/method.rst §1), then adds every image shard batch by batch through read-only memory maps,
converting at most one batch to float32 at a time. Peak memory is the final index plus one batch (plus a small constant); the
batch size is derived from ``memory_budget``.

Progress survives interruption. A work folder next to the output (``<out>.build/`` by default)
holds:

- ``manifest.json``, written atomically after every step: a fingerprint of the inputs and
  parameters, whether training finished, how many shards the checkpoint holds;
- ``trained.ivf``, the trained, empty index (centroids and codec), written once after training;
- ``checkpoint.ivf``, the partial index after the last checkpointed shard (atomic replace).

Running the same build again resumes from the checkpoint, skipping training, and produces the
same index file byte for byte as an uninterrupted build: adding is deterministic and does not
depend on batch boundaries or thread counts, and the file format stores nothing time-dependent.
A resume against different inputs or parameters is refused (the manifest lists what changed).
When the output is written, the large work files are deleted and the manifest is marked complete.

Checkpoints cost a full write of the partial index. By default (``checkpoint_every=None``) a
checkpoint is written after a shard only when the adding time since the last one is at least
nine times the last checkpoint's duration, so that checkpoints take at most ~10% of the build;
``checkpoint_every=k`` writes one every k shards, 0 never (resume then restarts after training).
"""


from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from ._arrays import INT32_MAX, MAX_THREADS
from .build_parts import build_in_parts
from .build_plan import (  # noqa: F401 - re-exported: the build's public names live here
    FIXED_OVERHEAD,
    GROWTH_SLACK,
    MAX_BATCH_ROWS,
    MIN_BATCH_ROWS,
    BuildError,
    BuildPlan,
    IndexTooLarge,
    _available_memory,
    _calibrate,
    _check_int,
    _format_seconds,
    _time_model,
    default_train_size,
    format_bytes,
    parse_memory,
    plan_build,
    train_memory_bytes,
)
from .build_progress import _peak_rss_bytes, _Progress, _release_free_memory
from .build_state import MANIFEST_FORMAT, _Checkpoints, _describe_changes, _fingerprint, _WorkDir
from .engines import Engine
from .index import CODECS, IVFIndex
from .kmeans import METHODS, TWO_LEVEL_MIN_CLUSTERS
from .quantizer import quantizer_defaults, resolve_quantizer
from .outofcore import plan_parts
from .parts import ShardedIndex

log = logging.getLogger("mudg_fast.build")
from .shards import EmbeddingShards, ShardError, check_aligned, gather, sample_ids

__all__ = [
    "build_index",
    "source_metadata",
    "plan_build",
    "BuildPlan",
    "BuildError",
    "parse_memory",
    "format_bytes",
    "default_train_size",
    "MANIFEST_FORMAT",
]


def build_index(
    images_dir,
    captions_dir=None,
    *,
    nlist: int,
    codec: str = "sq8",
    train_size: Optional[int] = None,
    memory_budget=None,
    out,
    resume: bool = True,
    seed: int = 0,
    batch_size: Optional[int] = None,
    nprobe: int = 8,
    max_iter: int = 20,
    num_threads: Optional[int] = None,
    progress: Union[bool, Callable[[int, int], None]] = True,
    checkpoint_every: Optional[int] = None,
    work_dir=None,
    kmeans_method: str = "auto",
    quantizer: str = "auto",
    quantizer_probe: Optional[int] = None,
    merge: bool = False,
    engine: Union[str, Engine] = "local",
    ray_address: Optional[str] = None,
    part_size: Optional[int] = None,
) -> Union[IVFIndex, ShardedIndex]:
    """Builds an IVF index over the ``*.npy`` image shards of ``images_dir``; writes it to ``out``.

    When the finished index fits in ``memory_budget`` (and the engine is local, no ``part_size``
    given) it is built in memory and written as one file. Otherwise it is built in parts (see
    :mod:`mudg_fast.build_parts`): each part within the budget, written once when complete;
    ``out`` is then a folder of part files, searched as one index by
    :class:`~mudg_fast.ShardedIndex`, or with ``merge=True`` one file with the same bytes as an
    in-memory build. Messages of a build in parts go to the ``mudg_fast.build`` logger.

    Parameters
    ----------
    images_dir : folder of image embedding shards (clip-retrieval ``img_emb/``); row ``j`` of the
        shards in lexicographic file order gets id ``j`` (see :mod:`mudg_fast.shards`).
    captions_dir : folder of row-aligned caption shards (``text_emb/``). When given, centroids are
        trained by paired k-means (``train_paired(..., pairing="nearest")``) so that text queries
        probe the cells of their nearest images; otherwise by standard spherical k-means.
    nlist, codec : as for :class:`~mudg_fast.IVFIndex` ("f32", "f16", "sq8", "sq4").
    train_size : training sample size, drawn uniformly at random over all shards with ``seed``
        (default :func:`default_train_size`; clamped to the number of vectors).
    memory_budget : bytes or "4GB"/"512MB" (powers of 1024) for the whole build (in parts: for
        each process that builds a part, everything it holds included); the batch and part sizes
        are derived from it (default: 80% of the available memory). Raises BuildError up front
        when not even one batch, or the training sample, can fit.
    out : output index file, written atomically (temporary file, then rename); a folder of
        parts for a build in parts without ``merge``.
    resume : continue an interrupted build of the same inputs and parameters (and return the
        existing index when it is already complete); False discards earlier progress.
    seed : seeds the training sample, k-means and the codec sample.
    batch_size : rows converted and added at a time (overrides the budget-derived size).
    nprobe : the nprobe you intend to search with; recorded in the manifest and used for the
        printed cost estimate.
    max_iter : k-means iterations.
    num_threads : threads for training and adding (None: all cores).
    progress : True: a tqdm bar on stderr, and the plan, estimates and steps logged at INFO level
        to the ``mudg_fast.build`` logger (without tqdm, a plain progress line logged every 10 s);
        False: silent; a callable(done, total) is called with the number of vectors added so far
        (raise from it to stop the build; progress is kept for a resume). The messages are shown
        only where logging is configured to show them (``mudg-fast build-index`` does).
    checkpoint_every : see the module docs (None adaptive, k every k shards, 0 never).
    work_dir : folder for the manifest and checkpoints (default ``<out>.build``).
    kmeans_method : "flat", "two_level" or "auto" (two-level from 4096 lists), see
        :class:`~mudg_fast.KMeans`.
    quantizer, quantizer_probe : the index's coarse quantizer and its accuracy parameter, see
        :class:`~mudg_fast.IVFIndex` ("auto": two-level from 16384 lists). Both decide where
        vectors go, so they are part of what a resume must match.
    merge : a build in parts writes one merged file ``out`` instead of a folder of parts.
    engine : where the parts are built: "local" (this process, part after part), "ray" (one Ray
        task per part; needs ``pip install "mudg_fast[ray]"``) or an
        :class:`~mudg_fast.engines.Engine`. Parts are byte-identical with every engine.
    ray_address : the Ray cluster to use (default: the one this process is connected to, or a
        new local one).
    part_size : vectors per part (default: the largest part the budget allows; with Ray at
        least one part per worker).

    Returns
    -------
    The finished index, memory-mapped: ``IVFIndex.load(out)``, or a
    :class:`~mudg_fast.ShardedIndex` over the folder of parts.
    """
    nlist = _check_int("nlist", nlist)
    if codec not in CODECS:
        raise BuildError(f"codec must be one of {CODECS}, got {codec!r}")
    seed = _check_int("seed", seed, 0, 2**64 - 1)
    max_iter = _check_int("max_iter", max_iter, 1, INT32_MAX)
    nprobe = _check_int("nprobe", nprobe, 1, INT32_MAX)
    if train_size is not None:
        train_size = _check_int("train_size", train_size)
    if batch_size is not None:
        batch_size = _check_int("batch_size", batch_size)
    if checkpoint_every is not None:
        checkpoint_every = _check_int("checkpoint_every", checkpoint_every, 0)
    if num_threads is not None:
        _check_int("num_threads", num_threads, 1, MAX_THREADS)
    if not (isinstance(progress, bool) or callable(progress)):
        raise BuildError(
            f"progress must be True, False or a callable(done, total), got {progress!r}"
        )
    if kmeans_method not in METHODS:
        raise BuildError(f"kmeans_method must be one of {METHODS}, got {kmeans_method!r}")
    try:
        q_kind, _, q_probe = resolve_quantizer(nlist, quantizer, None, quantizer_probe)
    except (TypeError, ValueError) as e:
        raise BuildError(str(e)) from None
    # Recorded in the build's parameters when they change the result, so that the manifests of
    # flat builds (all builds before these options existed) still match and resume.
    method = "two_level" if kmeans_method == "two_level" or (
        kmeans_method == "auto" and nlist >= TWO_LEVEL_MIN_CLUSTERS) else "flat"
    coarse = {}
    if method != "flat" or q_kind != "flat":
        coarse = {"kmeans_method": method, "quantizer": q_kind, "quantizer_probe": q_probe}
    if part_size is not None:
        part_size = _check_int("part_size", part_size)
    if not isinstance(merge, bool):
        raise BuildError(f"merge must be True or False, got {merge!r}")
    if out is None:
        raise BuildError("out (the index file to write) is required")
    out = Path(out)
    verbose = progress is not False

    def say(msg: str) -> None:
        if verbose:
            log.info("%s", msg)

    images = EmbeddingShards(images_dir, label="images")
    captions = EmbeddingShards(captions_dir, label="captions") if captions_dir is not None else None
    work = _WorkDir(Path(work_dir) if work_dir is not None else out.with_name(out.name + ".build"))
    try:
        if captions is not None:
            check_aligned(images, captions)
        if images.ntotal < nlist:
            raise BuildError(
                f"nlist={nlist} is larger than the number of vectors ({images.ntotal}); use at "
                f"most {images.ntotal} (typically ~4*sqrt(n) to 16*sqrt(n))"
            )
        if train_size is not None and train_size < nlist:
            raise BuildError(
                f"train_size={train_size} is smaller than nlist={nlist}; k-means needs at least "
                "one training vector per centroid (ideally 39 or more)"
            )
        in_parts = engine != "local" or part_size is not None
        plan = None
        if not in_parts:
            try:
                plan = plan_build(
                    images,
                    nlist=nlist,
                    codec=codec,
                    train_size=train_size,
                    memory_budget=memory_budget,
                    paired=captions is not None,
                    batch_size=batch_size,
                )
            except IndexTooLarge:
                in_parts = True
        if in_parts:
            return _build_in_parts(
                images,
                captions,
                nlist=nlist,
                codec=codec,
                train_size=train_size,
                memory_budget=memory_budget,
                batch_size=batch_size,
                part_size=part_size,
                seed=seed,
                max_iter=max_iter,
                out=out,
                work_dir=work_dir,
                merge=merge,
                engine=engine,
                ray_address=ray_address,
                resume=resume,
                nprobe=nprobe,
                num_threads=num_threads,
                progress=progress,
                coarse=coarse,
            )
        if out.is_dir():
            raise BuildError(
                f"out {str(out)!r} is a folder; give the path of the index file to write"
            )
        assert plan is not None  # planned above for every build that is not in parts
        params = _build_params(
            nlist, codec, plan.train_size, seed, max_iter, captions is not None, coarse
        )
        work.lock()
        try:
            return _build(
                images,
                captions,
                plan,
                params,
                out,
                work,
                resume=resume,
                nprobe=nprobe,
                num_threads=num_threads,
                progress=progress,
                checkpoint_every=checkpoint_every,
                say=say,
            )
        finally:
            work.unlock()
    finally:
        images.close()
        if captions is not None:
            captions.close()


def _build_params(nlist, codec, train_size, seed, max_iter, paired, coarse=None) -> dict:
    """The parameters a resume must match (the manifest's fingerprint); ``coarse``: the
    k-means method and coarse quantizer when they are not flat."""
    return {
        **(coarse or {}),
        "nlist": nlist,
        "codec": codec,
        "train_size": train_size,
        "seed": seed,
        "max_iter": max_iter,
        "training": "paired" if paired else "standard",
        "pairing": "nearest" if paired else None,
    }


def _index_metadata(images: EmbeddingShards) -> dict:
    """The metadata every file of a build carries: the in-memory build's file, each part (next
    to its "part" entry) and the merged file, so that merging parts gives the same bytes: where
    the vectors came from, for ``search(..., rerank=N, source="auto")``."""
    return {"source": source_metadata(images)}


def _build_in_parts(
    images,
    captions,
    *,
    nlist,
    codec,
    train_size,
    memory_budget,
    batch_size,
    part_size,
    seed,
    max_iter,
    out: Path,
    work_dir,
    merge,
    engine,
    ray_address,
    resume,
    nprobe,
    num_threads,
    progress,
    coarse,
):
    from .engines import get_engine

    eng = get_engine(engine, num_threads=num_threads, ray_address=ray_address)
    try:
        budget = parse_memory(memory_budget)
        if budget is None:
            avail = _available_memory()
            budget = int(0.8 * avail) if avail else 8 << 30
        paired = captions is not None
        train_n = (
            default_train_size(images.ntotal, nlist)
            if train_size is None
            else min(int(train_size), images.ntotal)
        )
        why = (
            "the index does not fit in memory_budget"
            if engine == "local" and part_size is None
            else f"building in parts with the {eng.name} engine"
        )
        plan = plan_parts(
            images,
            nlist=nlist,
            codec=codec,
            train_size=train_n,
            memory_budget=budget,
            paired=paired,
            batch_size=batch_size,
            part_size=part_size,
            min_parts=eng.concurrency if part_size is None else 1,
            merge=merge,
            train_bytes=train_memory_bytes(train_n, images.dim, nlist, paired),
        )
        params = {
            **_build_params(nlist, codec, train_n, seed, max_iter, paired, coarse),
            "layout": "parts",
        }
        work = _WorkDir(
            Path(work_dir) if work_dir is not None else out.with_name(out.name + ".build")
        )
        work.lock()
        try:
            return build_in_parts(
                images,
                captions,
                plan,
                params,
                out,
                work,
                eng,
                merge=merge,
                resume=resume,
                nprobe=nprobe,
                num_threads=num_threads,
                progress=progress,
                metadata=_index_metadata(images),
                why=why,
            )
        finally:
            work.unlock()
    finally:
        eng.close()


def _build(
    images,
    captions,
    plan: BuildPlan,
    params,
    out: Path,
    work: _WorkDir,
    *,
    resume,
    nprobe,
    num_threads,
    progress,
    checkpoint_every,
    say,
) -> IVFIndex:
    t_start = time.monotonic()
    fingerprint = _fingerprint(images, captions, params)
    manifest = work.read_manifest() if resume else None
    if not resume:
        work.clear()
    same = (
        manifest is not None
        and manifest.get("fingerprint", {}).get("sha256") == fingerprint["sha256"]
    )
    if manifest is not None and manifest.get("complete"):
        # A finished build: nothing is in progress, so nothing can be lost by building again.
        o = manifest.get("output", {})
        if (
            same
            and out.exists()
            and o.get("bytes") == out.stat().st_size
            and o.get("mtime_ns") == out.stat().st_mtime_ns
        ):
            say(f"{out} is already complete (manifest {work.manifest}); nothing to do")
            return IVFIndex.load(out, mmap=True, verify=False, num_threads=num_threads)
        why = (
            "the finished build in the manifest used other inputs or parameters"
            if not same
            else "it is missing"
            if not out.exists()
            else "it changed since the build finished"
        )
        say(f"building {out} again: {why}")
        work.clear()
        manifest = None
    elif manifest is not None and not same:
        changes = _describe_changes(manifest.get("fingerprint", {}), fingerprint)
        raise BuildError(
            f"cannot resume: {work.path} holds an unfinished build of different inputs or "
            "parameters (" + "; ".join(changes) + "). Rerun with resume=False (--no_resume) to "
            "discard it and start over, or restore the original inputs and parameters"
        )
    if manifest is None:
        manifest = {
            "format": MANIFEST_FORMAT,
            "fingerprint": fingerprint,
            "trained": False,
            "shards_done": 0,
            "ntotal_done": 0,
            "complete": False,
            "nprobe": nprobe,
            "shards": [
                {
                    "images": s.name,
                    "captions": (captions.shards[i].name if captions else None),
                    "rows": s.rows,
                    "offset": s.offset,
                }
                for i, s in enumerate(images.shards)
            ],
            "images_dir": str(images.folder.resolve()),
            "captions_dir": str(captions.folder.resolve()) if captions is not None else None,
            "output": {"path": str(out.resolve())},
            "stats": {},
        }
        work.write_manifest(manifest)

    # -- estimates ------------------------------------------------------------------------------
    rates = _calibrate(plan.dim, plan.nlist, num_threads)
    scores = None
    if params.get("quantizer", "flat") == "two_level":
        probe = params["quantizer_probe"]
        cells = quantizer_defaults(plan.nlist)[0]
        scores = cells + min(probe, cells) * plan.nlist / cells
    t_train, t_add = _time_model(plan, params["max_iter"], rates,
                                 two_level=params.get("kmeans_method") == "two_level", scores_per_vector=scores)
    dtypes = "/".join(str(t) for t in images.dtypes)
    say(
        f"{plan.n_shards} shards, {plan.ntotal:,} vectors x {plan.dim} ({dtypes}); "
        f"nlist {plan.nlist}, codec {plan.codec}, {params['training']} k-means on "
        f"{plan.train_size:,} sampled "
        f"{'pairs' if plan.paired else 'vectors'} (seed {params['seed']})"
    )
    say(
        f"memory: index ~{format_bytes(plan.index_bytes)} (up to "
        f"~{format_bytes(plan.resident_index_bytes)} while growing) + batches of "
        f"{plan.batch_rows:,} rows "
        f"(~{format_bytes(plan.batch_bytes)}) = peak ~{format_bytes(plan.peak_bytes)} "
        f"(training ~{format_bytes(plan.train_bytes)}; budget {format_bytes(plan.memory_budget)})"
    )
    say(
        f"disk: index file ~{format_bytes(plan.file_bytes)}; up to "
        f"~{format_bytes(plan.disk_peak_bytes)} while checkpointing in {work.path}"
    )
    done_frac = manifest["ntotal_done"] / max(plan.ntotal, 1)
    t_train_left = 0.0 if manifest["trained"] else t_train
    say(
        f"time (measured {rates[0] / 1e9:.1f} GFMA/s assigning, {rates[1] / 1e9:.1f} searching): "
        f"training ~{_format_seconds(t_train_left)}, adding ~{_format_seconds(t_add * (1 - done_frac))}"
    )
    manifest["stats"]["estimate"] = {
        "train_seconds": round(t_train_left, 3),
        "add_seconds": round(t_add * (1 - done_frac), 3),
    }
    try:
        free = shutil.disk_usage(out.parent if out.parent.exists() else Path.cwd()).free
        if free < plan.file_bytes:
            raise BuildError(
                f"not enough disk space for {out}: ~{format_bytes(plan.file_bytes)} needed, "
                f"{format_bytes(free)} free"
            )
        if free < plan.disk_peak_bytes:
            say(
                f"warning: only {format_bytes(free)} free on disk; checkpoints may need "
                f"~{format_bytes(plan.disk_peak_bytes)}"
            )
    except OSError:
        pass

    try:
        index = _train_or_resume(images, captions, plan, params, manifest, work, num_threads, say)
        _add_all(images, plan, manifest, work, index, progress, checkpoint_every, say)
    except BaseException as e:
        if not isinstance(e, (BuildError, ShardError)):
            say(
                f"stopped ({type(e).__name__}); {manifest['shards_done']} of {plan.n_shards} shards are "
                "checkpointed"
                + (", training is saved" if manifest["trained"] else "")
                + "; run the same build again to resume"
            )
        raise

    index.set_metadata({**index.metadata, **_index_metadata(images)})
    t0 = time.monotonic()
    index.save(out)
    st = out.stat()
    manifest.update(
        complete=True,
        shards_done=plan.n_shards,
        ntotal_done=index.ntotal,
        output={"path": str(out.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns},
    )
    manifest["stats"].update(
        write_seconds=round(time.monotonic() - t0, 3),
        total_seconds=round(time.monotonic() - t_start, 3),
        peak_rss_bytes=_peak_rss_bytes(),
        plan=asdict(plan),
    )
    work.write_manifest(manifest)
    work.remove(work.checkpoint, work.trained, *work.leftover_temps())
    ntotal = index.ntotal
    mean_list = ntotal / plan.nlist
    say(
        f"wrote {out} ({format_bytes(st.st_size)}, {ntotal:,} vectors) in "
        f"{_format_seconds(time.monotonic() - t_start)}; peak RSS "
        f"{format_bytes(_peak_rss_bytes() or 0)}; nprobe {nprobe} scans "
        f"~{nprobe * mean_list:,.0f} vectors per query "
        f"({100 * min(1.0, nprobe / plan.nlist):.2g}% of the index)"
    )
    num_threads = index.num_threads
    del index
    _release_free_memory()
    return IVFIndex.load(out, mmap=True, verify=False, num_threads=num_threads)


def source_metadata(images: EmbeddingShards) -> dict:
    """``index.metadata["source"]`` as build_index writes it: the absolute path of the image shard
    folder, its size, dim and element type ("float16", "float32"; "mixed" when shards differ).
    ``IVFIndex.search(..., rerank=N, source="auto")`` re-ranks from that folder after checking
    that it still holds ntotal x dim vectors."""
    dtypes = sorted({str(s.dtype) for s in images.shards})
    return {"img_emb": str(images.folder.resolve()), "ntotal": int(images.ntotal), "dim": int(images.dim),
            "dtype": dtypes[0] if len(dtypes) == 1 else "mixed"}


def _train_or_resume(
    images, captions, plan: BuildPlan, params, manifest, work: _WorkDir, num_threads, say
):
    def load_checked(path: Path, expect_ntotal: int) -> Optional[IVFIndex]:
        try:
            ix = IVFIndex.load(path, mmap=True, verify=True, num_threads=num_threads)
        except (OSError, ValueError) as e:
            say(f"warning: cannot use {path} ({e}); redoing that step")
            return None
        if (ix.dim, ix.nlist, ix.codec, ix.ntotal) != (
            plan.dim,
            plan.nlist,
            plan.codec,
            expect_ntotal,
        ):
            say(f"warning: {path} does not match the manifest; redoing that step")
            return None
        return ix

    done = int(manifest["shards_done"])
    if manifest["trained"] and done > 0:
        expect = images.shards[done - 1].stop
        ix = load_checked(work.checkpoint, expect)
        if ix is not None and expect == manifest["ntotal_done"]:
            say(
                f"resuming after shard {done} of {plan.n_shards} ({expect:,} vectors already added)"
            )
            return ix
        manifest.update(shards_done=0, ntotal_done=0)
        work.write_manifest(manifest)
    if manifest["trained"]:
        ix = load_checked(work.trained, 0)
        if ix is not None:
            say("training was done earlier; adding")
            return ix
        manifest.update(trained=False)
        work.write_manifest(manifest)

    t0 = time.monotonic()
    ids = sample_ids(plan.ntotal, plan.train_size, params["seed"])
    xs = gather(images, ids)
    index = IVFIndex(plan.dim, plan.nlist, codec=plan.codec, num_threads=num_threads,
                     quantizer=params.get("quantizer", "flat"), quantizer_probe=params.get("quantizer_probe"))
    method = params.get("kmeans_method", "flat")
    if captions is not None:
        ps = gather(captions, ids)
        say(f"training paired k-means on {len(ids):,} sampled pairs")
        index.train_paired(
            xs, ps, pairing="nearest", max_iter=params["max_iter"], seed=params["seed"], method=method
        )
        del ps
    else:
        say(f"training k-means on {len(ids):,} sampled vectors")
        index.train(xs, max_iter=params["max_iter"], seed=params["seed"], method=method)
    del xs, ids
    images.close()
    if captions is not None:
        captions.close()
    index.save(work.trained)
    manifest.update(trained=True, shards_done=0, ntotal_done=0)
    manifest["stats"]["train_seconds"] = round(time.monotonic() - t0, 3)
    work.write_manifest(manifest)
    say(f"trained in {_format_seconds(time.monotonic() - t0)}")
    # continue from the saved file, exactly as a resumed build would
    return IVFIndex.load(work.trained, num_threads=index.num_threads)


def _add_all(
    images: EmbeddingShards,
    plan: BuildPlan,
    manifest,
    work: _WorkDir,
    index: IVFIndex,
    progress,
    checkpoint_every,
    say,
) -> None:
    start = int(manifest["shards_done"])
    if start < plan.n_shards:
        if index.ntotal != images.shards[start].offset:  # our invariant
            raise AssertionError(
                f"index holds {index.ntotal} vectors, shard {start} starts at "
                f"{images.shards[start].offset}"
            )
    buffer = np.empty((max(1, plan.batch_rows), plan.dim), dtype=np.float32)
    bar = _Progress(plan.ntotal, index.ntotal, progress)
    policy = _Checkpoints(checkpoint_every)
    t_add = time.monotonic()
    try:
        for i in range(start, plan.n_shards):
            s = images.shards[i]
            t0 = time.monotonic()
            for a in range(0, s.rows, plan.batch_rows):
                b = min(s.rows, a + plan.batch_rows)
                x = images.read(i, a, b, out=buffer)
                ids = np.arange(s.offset + a, s.offset + b, dtype=np.int64)
                base = index.ntotal
                index.add(
                    x, ids, progress=lambda done, total, base=base: bar.update_to(base + done)
                )
                _release_free_memory()
                bar.update_to(index.ntotal)
            images._unmap(i)
            policy.shard_done(time.monotonic() - t0)
            if i + 1 < plan.n_shards and policy.due():
                t1 = time.monotonic()
                index.save(work.checkpoint)
                manifest.update(shards_done=i + 1, ntotal_done=index.ntotal)
                work.write_manifest(manifest)
                policy.saved(time.monotonic() - t1)
    finally:
        bar.close()
    manifest["stats"]["add_seconds"] = round(time.monotonic() - t_add, 3)
