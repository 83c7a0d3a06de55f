"""The local engine: every task in this process, one part after the other."""

from __future__ import annotations

import functools
from typing import Callable, Optional

import numpy as np

from . import Engine, tasks

__all__ = ["LocalEngine"]


class LocalEngine(Engine):
    """Runs the tasks in the calling process; each part uses ``num_threads`` threads (None: all
    cores), so peak memory is one part's."""

    name = "local"

    def __init__(self, num_threads: Optional[int] = None):
        self.num_threads = num_threads

    def train(self, task: tasks.TrainTask, say: Callable[[str], None]) -> dict:
        return tasks.train(task, say)

    def add_parts(self, todo: list[tasks.PartTask], on_done: Callable[[dict], None],
                  on_progress: Callable[[int], None]) -> None:
        base = 0
        for t in todo:
            result = tasks.add_part(t, progress=functools.partial(_offset_progress, on_progress, base))
            base += result["ntotal"]
            on_done(result)

    def search_parts(self, paths, queries, k, probes, mode="auto") -> list[tuple[np.ndarray, np.ndarray]]:
        return [tasks.search_part(p, queries, k, probes, mode, self.num_threads) for p in paths]


def _offset_progress(on_progress: Callable[[int], None], base: int, done: int) -> None:
    """Progress of one part, reported as vectors added over all parts so far."""
    on_progress(base + done)
