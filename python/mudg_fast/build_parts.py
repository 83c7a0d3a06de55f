"""A build in parts: train once, build each part within the memory budget, optionally merge.

:func:`mudg_fast.build_index` comes here when the finished index would not fit in
``memory_budget``, when ``part_size`` is given, or when the engine is not local. The driver owns
the plan, the manifest and the resume; the engine (:mod:`mudg_fast.engines`) only runs the tasks.

Work folder (``<out>.build/`` by default): ``manifest.json`` (the input fingerprint, the part
layout and, per finished part, its file size and time), ``trained.ivf`` (written once), and with
``merge=True`` the parts themselves (``parts/``), deleted after the merge. Without ``merge`` the
parts go straight to the output folder ``out/`` as ``part-00000.ivf``, ``part-00001.ivf``, ...

Every part is written once, atomically, when complete. A build that is stopped (Ctrl-C, a killed
process, a cluster that goes away) keeps its finished parts, and running it again builds only the
missing ones; the files are the same bytes as those of an uninterrupted build, with any engine.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from .build_plan import BuildError, _calibrate, _format_seconds, _time_model, format_bytes
from .build_progress import _peak_rss_bytes, _Progress
from .build_state import MANIFEST_FORMAT, _describe_changes, _fingerprint, _WorkDir
from .engines import Engine
from .engines.tasks import PartTask, TrainTask
from .index import IVFIndex, _temp_path
from .outofcore import PartsPlan, shard_ranges
from .parts import PART_KEY, ShardedIndex, merge_parts
from .shards import EmbeddingShards, ShardError

__all__ = ["build_in_parts", "PART_NAME"]

log = logging.getLogger("mudg_fast.build")

PART_NAME = "part-{:05d}.ivf"
_PART_RE = re.compile(r"part-\d{5,}\.ivf")
_DISK_RATE = 500e6  # bytes/s assumed for writing and merging (not measured)


def _part_folder(out: Path, work: _WorkDir, merge: bool) -> Path:
    return work.path / "parts" if merge else out


def _remove_stale_parts(folder: Path, keep: set) -> None:
    """Deletes part files (and their temporaries) of an earlier, different build in ``folder``."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        name = p.name[1:] if p.name.startswith(".") else p.name
        base = name[: -len(".tmp")] if name.endswith(".tmp") else name
        if _PART_RE.fullmatch(base) and p.name not in keep:
            try:
                p.unlink()
            except OSError:
                pass


def _valid_part(path: Path, number: int, count: int, lo: int, hi: int, fingerprint: str) -> bool:
    """Whether ``path`` is a complete, sound part ``number`` of this build (a part written just
    before a crash that the manifest did not record yet)."""
    try:
        ix = IVFIndex.load(path, mmap=True, verify=True)
    except (OSError, ValueError):
        return False
    entry = ix.metadata.get(PART_KEY) or {}
    return (ix.fingerprint == fingerprint and entry.get("number") == number and entry.get("count") == count
            and entry.get("ids") == [lo, hi] and ix.ntotal == hi - lo)


def build_in_parts(
    images: EmbeddingShards,
    captions: Optional[EmbeddingShards],
    plan: PartsPlan,
    params: dict,
    out: Path,
    work: _WorkDir,
    engine: Engine,
    *,
    merge: bool,
    resume: bool,
    nprobe: int,
    num_threads: Optional[int],
    progress,
    metadata: dict,
    why: str = "building in parts",
):
    """Runs the parts build of ``plan``; returns the ShardedIndex of the part folder, or with
    ``merge`` the merged IVFIndex (memory-mapped)."""
    t_start = time.monotonic()
    fingerprint = _fingerprint(images, captions, params)
    manifest = work.read_manifest() if resume else None
    if not resume:
        work.clear()
    same = manifest is not None and manifest.get("fingerprint", {}).get("sha256") == fingerprint["sha256"]
    folder = _part_folder(out, work, merge)
    if manifest is not None and manifest.get("complete"):
        done_out = manifest.get("output", {})
        if same and done_out.get("merged") and merge and out.is_file() and \
                done_out.get("bytes") == out.stat().st_size and done_out.get("mtime_ns") == out.stat().st_mtime_ns:
            log.info("%s is already complete (manifest %s); nothing to do", out, work.manifest)
            return IVFIndex.load(out, mmap=True, verify=False, num_threads=num_threads)
        if same and not done_out.get("merged") and not merge and out.is_dir():
            try:
                sharded = ShardedIndex(out, verify=False, num_threads=num_threads)
            except (OSError, ValueError):
                sharded = None
            if sharded is not None and sharded.ntotal == plan.ntotal:
                log.info("%s is already complete (manifest %s); nothing to do", out, work.manifest)
                return sharded
        if same and not done_out.get("merged") and merge and out.is_dir():
            raise BuildError(f"{out} holds the finished parts of this build; merge them with "
                             f"mudg_fast.merge_parts({str(out)!r}, 'index.ivf') or give another out")
        log.info("building %s again: %s", out,
                 "the finished build in the manifest used other inputs or parameters" if not same
                 else "its output is missing or changed")
        work.clear()
        manifest = None
    elif manifest is not None and not same:
        changes = _describe_changes(manifest.get("fingerprint", {}), fingerprint)
        raise BuildError(
            f"cannot resume: {work.path} holds an unfinished build of different inputs or parameters ("
            + "; ".join(changes) + "). Rerun with resume=False (--no_resume) to discard it and start "
            "over, or restore the original inputs and parameters"
        )

    if manifest is not None:  # resume with the layout the finished parts were built with
        ranges = [list(r) for r in manifest["parts"]["ranges"]]
        if ranges != plan.ranges:
            largest = max(hi - lo for lo, hi in ranges)
            if largest > plan.part_rows:
                raise BuildError(
                    f"cannot resume: the interrupted build used parts of up to {largest:,} vectors, but "
                    f"memory_budget {format_bytes(plan.memory_budget)} allows {plan.part_rows:,}; give the "
                    "budget of the first run, or rerun with resume=False (--no_resume)"
                )
            log.info("resuming with the layout of the interrupted build (%d parts)", len(ranges))
            plan.ranges = ranges
        if manifest["parts"].get("merge") != merge:
            was = manifest["parts"].get("merge")
            raise BuildError(
                f"cannot resume: the interrupted build was started with merge={was} (its parts are in "
                f"{manifest['parts'].get('folder')}); run it again with merge={was}"
                f"{' (--merge)' if was else ''}, then merge_parts() if you want one file, or rerun with "
                "resume=False (--no_resume)"
            )
    if manifest is None:
        if out.exists() and not out.is_dir() and not merge:
            raise BuildError(f"out {str(out)!r} is a file, but this build writes a folder of parts (the index "
                             "does not fit in memory_budget); give a folder path, or merge=True (--merge) for "
                             "one file")
        manifest = {
            "format": MANIFEST_FORMAT,
            "fingerprint": fingerprint,
            "layout": "parts",
            "trained": False,
            "complete": False,
            "nprobe": nprobe,
            "parts": {"ranges": plan.ranges, "done": {}, "folder": str(folder.resolve()), "merge": merge},
            "images_dir": str(images.folder.resolve()),
            "captions_dir": str(captions.folder.resolve()) if captions is not None else None,
            "output": {"path": str(out.resolve())},
            "stats": {},
        }
        work.write_manifest(manifest)
        _remove_stale_parts(folder, set())
    folder = Path(manifest["parts"]["folder"])
    count = len(plan.ranges)

    # -- the plan, up front -----------------------------------------------------------------------
    rates = _calibrate(plan.dim, plan.nlist, num_threads)
    t_train, t_add = _time_model(plan, params["max_iter"], rates)
    t_add /= max(1, engine.concurrency)
    t_disk = (plan.parts_file_bytes + (2 * plan.merged_file_bytes if merge else 0)) / _DISK_RATE
    dtypes = "/".join(str(t) for t in images.dtypes)
    log.info("%d shards, %s vectors x %d (%s); nlist %d, codec %s, %s k-means on %s sampled %s (seed %d)",
             len(images.shards), f"{plan.ntotal:,}", plan.dim, dtypes, plan.nlist, plan.codec, params["training"],
             f"{plan.train_size:,}", "pairs" if plan.paired else "vectors", params["seed"])
    log.info("%s: %d parts of up to %s vectors (~%s each in memory, ~%s peak per process of memory_budget %s, "
             "batches of %s rows); engine %s (%d at a time)", why, count, f"{plan.part_rows:,}", format_bytes(plan.part_index_bytes),
             format_bytes(plan.part_peak_bytes), format_bytes(plan.memory_budget), f"{plan.batch_rows:,}",
             engine.name, engine.concurrency)
    log.info("disk: parts ~%s in %s%s", format_bytes(plan.parts_file_bytes), folder,
             f", then the merged file ~{format_bytes(plan.merged_file_bytes)} at {out} (merging in batches "
             f"of {format_bytes(plan.merge_batch_bytes)}; peak ~{format_bytes(plan.merge_peak_bytes)})" if merge else "")
    n_done = len(manifest["parts"]["done"])
    left = 1 - n_done / count
    eta = (0 if manifest["trained"] else t_train) + t_add * left + t_disk * left
    log.info("ETA ~%s (training ~%s, adding ~%s, writing%s ~%s; measured %.1f GFMA/s assigning)",
             _format_seconds(eta), _format_seconds(0 if manifest["trained"] else t_train),
             _format_seconds(t_add * left), " and merging" if merge else "", _format_seconds(t_disk * left),
             rates[0] / 1e9)
    manifest["stats"]["estimate"] = {"seconds": round(eta, 3), "plan": asdict(plan)}
    try:
        free = shutil.disk_usage(folder.parent if folder.parent.exists() else Path.cwd()).free
        if free < plan.disk_bytes * left:
            raise BuildError(f"not enough disk space: ~{format_bytes(plan.disk_bytes * left)} needed for the "
                             f"parts{' and the merged file' if merge else ''}, {format_bytes(free)} free")
    except OSError:
        pass

    # -- training -----------------------------------------------------------------------------------
    trained_fp = None
    if manifest["trained"]:
        try:
            t = IVFIndex.load(work.trained, mmap=True, verify=True)
            if (t.dim, t.nlist, t.codec, t.ntotal) == (plan.dim, plan.nlist, plan.codec, 0):
                trained_fp = t.fingerprint
                log.info("training was done earlier")
        except (OSError, ValueError) as e:
            log.warning("cannot use %s (%s); training again", work.trained, e)
        if trained_fp is None:
            manifest["trained"] = False
            manifest["parts"]["done"] = {}
            work.write_manifest(manifest)
    if trained_fp is None:
        task = TrainTask(images_dir=str(images.folder.resolve()),
                         captions_dir=str(captions.folder.resolve()) if captions is not None else None,
                         ntotal=plan.ntotal, dim=plan.dim, nlist=plan.nlist, codec=plan.codec,
                         train_size=plan.train_size, seed=params["seed"], max_iter=params["max_iter"],
                         out=str(work.trained.resolve()), num_threads=num_threads,
                         kmeans_method=params.get("kmeans_method", "flat"),
                         quantizer=params.get("quantizer", "flat"), quantizer_probe=params.get("quantizer_probe"))
        images.close()
        if captions is not None:
            captions.close()
        stats = engine.train(task, log.info)
        trained_fp = IVFIndex.load(work.trained, mmap=True, verify=True).fingerprint
        manifest["trained"] = True
        manifest["stats"]["train_seconds"] = round(stats["seconds"], 3)
        work.write_manifest(manifest)
        log.info("trained in %s", _format_seconds(stats["seconds"]))

    # -- parts ----------------------------------------------------------------------------------------
    folder.mkdir(parents=True, exist_ok=True)
    done = manifest["parts"]["done"]
    todo = []
    for number, (lo, hi) in enumerate(plan.ranges):
        path = folder / PART_NAME.format(number)
        rec = done.get(str(number))
        if rec is not None:
            try:
                st = path.stat()
                if rec.get("bytes") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
                    continue
            except OSError:
                pass
            log.warning("part %d (%s) is missing or changed since it was written; building it again", number, path)
            del done[str(number)]
        elif path.exists() and _valid_part(path, number, count, lo, hi, trained_fp):
            st = path.stat()  # written just before the previous run stopped
            done[str(number)] = {"file": path.name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
            continue
        todo.append(PartTask(number=number, count=count, lo=lo, hi=hi, ranges=shard_ranges(images, lo, hi),
                             trained=str(work.trained.resolve()), out=str(path.resolve()),
                             batch_rows=plan.batch_rows, metadata=metadata, num_threads=num_threads))
    work.write_manifest(manifest)
    _remove_stale_parts(folder, {PART_NAME.format(n) for n in range(count)})
    images.close()
    if captions is not None:
        captions.close()
    if todo:
        rows_done = plan.ntotal - sum(t.hi - t.lo for t in todo)
        if rows_done:
            log.info("resuming: %d of %d parts are finished (%s vectors)", count - len(todo), count, f"{rows_done:,}")
        bar = _Progress(plan.ntotal, rows_done, progress, desc="adding")
        bar.set_parts(count - len(todo), count)
        t_add0 = time.monotonic()

        def on_done(result: dict) -> None:
            st = os.stat(result["path"])
            done[str(result["number"])] = {"file": Path(result["path"]).name, "bytes": st.st_size,
                                           "mtime_ns": st.st_mtime_ns, "seconds": round(result["seconds"], 3),
                                           "write_seconds": round(result.get("write_seconds", 0.0), 3),
                                           "peak_rss_bytes": result.get("peak_rss_bytes")}
            work.write_manifest(manifest)
            bar.set_parts(len(done), count)

        try:
            engine.add_parts(todo, on_done, lambda n: bar.update_to(rows_done + n))
        except BaseException as e:
            if not isinstance(e, (BuildError, ShardError)):
                log.warning("stopped (%s); %d of %d parts are finished and kept in %s; run the same build again "
                            "to resume", type(e).__name__, len(done), count, folder)
            raise
        finally:
            bar.close()
        manifest["stats"]["add_seconds"] = round(time.monotonic() - t_add0, 3)
    paths = [folder / PART_NAME.format(n) for n in range(count)]
    log.info("%d parts written to %s", count, folder)

    # -- the output ---------------------------------------------------------------------------------
    if merge:
        t0 = time.monotonic()
        log.info("merging %d parts into %s", count, out)
        merged = merge_parts(paths, out, num_threads=num_threads, batch_bytes=plan.merge_batch_bytes)
        st = out.stat()
        manifest.update(complete=True, output={"path": str(out.resolve()), "merged": True, "bytes": st.st_size,
                                               "mtime_ns": st.st_mtime_ns})
        manifest["stats"]["merge_seconds"] = round(time.monotonic() - t0, 3)
    else:
        manifest.update(complete=True, output={"path": str(out.resolve()), "merged": False})
    manifest["stats"].update(total_seconds=round(time.monotonic() - t_start, 3), peak_rss_bytes=_peak_rss_bytes())
    work.write_manifest(manifest)
    work.remove(work.trained, *work.leftover_temps())
    if merge:
        for p in paths:
            work.remove(p, _temp_path(p))
        try:
            folder.rmdir()
        except OSError:
            pass
        log.info("wrote %s (%s, %s vectors) in %s", out, format_bytes(out.stat().st_size), f"{merged.ntotal:,}",
                 _format_seconds(time.monotonic() - t_start))
        return merged
    sharded = ShardedIndex(out, verify=False, num_threads=num_threads)
    log.info("wrote %d parts to %s (%s, %s vectors) in %s", count, out,
             format_bytes(sum(p.stat().st_size for p in paths)), f"{sharded.ntotal:,}",
             _format_seconds(time.monotonic() - t_start))
    return sharded
