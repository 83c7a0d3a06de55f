"""Where the steps of a parts build run.

The work itself lives in :mod:`mudg_fast.engines.tasks`: pure functions of small task
descriptions (train once, add one part, search one part, merge). An engine only schedules them:

* ``"local"`` (:class:`~mudg_fast.engines.local.LocalEngine`): one process, one part after the
  other, each part using every thread;
* ``"ray"`` (:class:`~mudg_fast.engines.ray.RayEngine`): one Ray task per part on a local or
  remote cluster (``pip install "mudg_fast[ray]"``); lost workers' parts run again.

Both write byte-identical parts. A Spark or Dask engine is one more small subclass of
:class:`Engine` implementing the three methods below over the same task functions.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .tasks import PartTask, TrainTask

__all__ = ["Engine", "EngineError", "get_engine"]


class EngineError(RuntimeError):
    """The engine's cluster failed or went away; finished parts are kept and a rerun resumes."""


class Engine:
    """Runs the build's tasks. Subclasses implement :meth:`train`, :meth:`add_parts` and
    :meth:`search_parts`; the driver (:func:`mudg_fast.build_index`) owns the plan, the manifest
    and the resume, and never depends on where a task ran."""

    name = "engine"
    #: parts built at the same time (the planner divides the adding time by it)
    concurrency = 1

    def train(self, task: TrainTask, say: Callable[[str], None]) -> dict:
        """Runs the training task (sample, k-means, coarse quantizer, codec) and writes the trained
        empty index where the task says; ``say`` reports progress. Returns the task's statistics
        (``{"seconds": ..., ...}``)."""
        raise NotImplementedError

    def add_parts(self, tasks: list[PartTask], on_done: Callable[[dict], None],
                  on_progress: Callable[[int], None]) -> None:
        """Runs every task; calls ``on_done(result)`` in the driver as each part is written and
        ``on_progress(vectors added so far over all running tasks)`` now and then. Raises when a
        task fails for good (the parts already reported stay valid)."""
        raise NotImplementedError

    def search_parts(self, paths: list[str], queries: np.ndarray, k: int, probes: np.ndarray,
                     mode: str = "auto") -> list[tuple[np.ndarray, np.ndarray]]:
        """Each part's top-k over the given probes, in the order of ``paths``."""
        raise NotImplementedError

    def close(self) -> None:
        """Releases what the engine started (not a cluster it merely connected to)."""


def get_engine(engine, *, num_threads: Optional[int] = None, ray_address: Optional[str] = None) -> Engine:
    """``"local"``, ``"ray"`` or an :class:`Engine` instance -> an Engine."""
    if isinstance(engine, Engine):
        return engine
    if engine == "local":
        from .local import LocalEngine

        return LocalEngine(num_threads=num_threads)
    if engine == "ray":
        from .ray import RayEngine

        return RayEngine(address=ray_address)
    raise ValueError(f"engine must be 'local', 'ray' or an Engine instance, got {engine!r}")
