"""The work folder of a resumable build: its lock, the manifest, and the fingerprint of inputs and
parameters that a resume must match (see :mod:`mudg_fast.build`)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import IO, Optional

from .build_plan import BuildError
from .index import _temp_path, atomic_write
from .shards import EmbeddingShards

MANIFEST_FORMAT = "mudg_fast.build-index/1"
_MANIFEST, _TRAINED, _CHECKPOINT, _LOCK = "manifest.json", "trained.ivf", "checkpoint.ivf", "lock"


class _WorkDir:
    def __init__(self, path: Path):
        self.path = path
        self.manifest = path / _MANIFEST
        self.trained = path / _TRAINED
        self.checkpoint = path / _CHECKPOINT
        self._lock_file: Optional[IO[str]] = None

    def lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / _LOCK, "a+")  # noqa: SIM115 - held open: it carries the lock
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not POSIX: no protection against a second build
            pass
        except OSError:
            f.close()
            raise BuildError(
                f"another build is using {self.path} (lock held); wait for it to finish or "
                "give a different output"
            ) from None
        self._lock_file = f

    def unlock(self) -> None:
        if self._lock_file is not None:
            try:
                os.unlink(self.path / _LOCK)
            except OSError:
                pass
            self._lock_file.close()
            self._lock_file = None

    def read_manifest(self) -> Optional[dict]:
        if not self.manifest.exists():
            return None
        try:
            m = json.loads(self.manifest.read_text())
        except (OSError, ValueError) as e:
            raise BuildError(
                f"cannot read the build manifest {self.manifest} ({e}); rerun with resume=False "
                "(--no_resume) to start over"
            ) from e
        if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
            raise BuildError(
                f"{self.manifest} is not a mudg_fast build manifest (format "
                f"{m.get('format') if isinstance(m, dict) else None!r}); rerun with resume=False "
                "(--no_resume) to start over, or choose another output"
            )
        return m

    def write_manifest(self, m: dict) -> None:
        text = json.dumps(m, indent=1, sort_keys=True)
        atomic_write(self.manifest, lambda tmp: Path(tmp).write_text(text))

    def remove(self, *paths: Path) -> None:
        for p in paths:
            try:
                os.unlink(p)
            except OSError:  # missing, or still open elsewhere (Windows): leave it
                pass

    def clear(self) -> None:
        """Removes our own files only (the folder may be a user's)."""
        self.remove(self.checkpoint, self.trained, self.manifest, *self.leftover_temps())

    def leftover_temps(self) -> list[Path]:
        """Temporary files of saves that were killed mid-write (a later save would reuse them)."""
        return [_temp_path(p) for p in (self.checkpoint, self.trained, self.manifest)]


def _fingerprint(
    images: EmbeddingShards, captions: Optional[EmbeddingShards], params: dict
) -> dict:
    from . import __version__

    inputs = {
        "images": images.fingerprint_items(),
        "captions": captions.fingerprint_items() if captions is not None else None,
    }
    body = {"inputs": inputs, "params": params, "mudg_fast": __version__}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return {"sha256": digest, **body}


def _describe_changes(old: dict, new: dict) -> list[str]:
    out = []
    if old.get("mudg_fast") != new.get("mudg_fast"):
        out.append(f"mudg_fast version {old.get('mudg_fast')} -> {new.get('mudg_fast')}")
    op, np_ = old.get("params", {}), new.get("params", {})
    for k in sorted(set(op) | set(np_)):
        if op.get(k) != np_.get(k):
            out.append(f"{k} {op.get(k)!r} -> {np_.get(k)!r}")
    for side in ("images", "captions"):
        a, b = (old.get("inputs") or {}).get(side), (new.get("inputs") or {}).get(side)
        if a == b:
            continue
        if a is None or b is None:
            out.append(
                f"{side}: {'none' if a is None else 'given'} -> {'none' if b is None else 'given'}"
            )
            continue
        if len(a) != len(b):
            out.append(f"{side}: {len(a)} shards -> {len(b)} shards")
        for x, y in zip(a, b):
            if x != y:
                what = [
                    k
                    for k in ("name", "rows", "dim", "dtype", "bytes", "probe")
                    if x.get(k) != y.get(k)
                ]
                label = "content" if what == ["probe"] else ", ".join(what)
                out.append(f"{side} shard {x.get('name')}: {label} changed")
                if len(out) > 12:
                    return out + ["..."]
    return out or ["(fingerprint differs)"]


class _Checkpoints:
    def __init__(self, every: Optional[int]):
        self.every = every
        self.shards_since = 0
        self.work_since = 0.0
        self.last_cost: Optional[float] = None

    def shard_done(self, seconds: float) -> None:
        self.shards_since += 1
        self.work_since += seconds

    def due(self) -> bool:
        if self.every == 0:
            return False
        if self.every is not None:
            return self.shards_since >= self.every
        return self.last_cost is None or self.work_since >= 9 * self.last_cost

    def saved(self, seconds: float) -> None:
        self.last_cost = seconds
        self.shards_since = 0
        self.work_since = 0.0
