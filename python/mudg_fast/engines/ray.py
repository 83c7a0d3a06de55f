"""The Ray engine: training as one Ray task, then one task per part, on a local or remote cluster.

Tasks receive paths and row ranges (never the vectors) and read their shards from storage that
every node sees; each writes its part file itself, atomically. The driver keeps the manifest:
parts are recorded as their tasks return, so when a worker, a node or the whole cluster goes
away, the finished parts stay and running the build again resumes with the missing ones. A task
whose worker process dies is run again by Ray (``max_retries``); since a part is written only
when complete, a rerun writes the same bytes.

Needs the optional extra: ``pip install "mudg_fast[ray]"``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional

import numpy as np

try:
    import ray
    from ray.exceptions import RayError, RayTaskError
except ImportError as e:  # pragma: no cover - exercised by test_engines without ray
    raise ImportError(
        'the Ray engine needs ray: pip install "mudg_fast[ray]" (or pip install ray)'
    ) from e

from . import Engine, EngineError, tasks

__all__ = ["RayEngine", "EngineError"]


class _Counter:
    """Vectors added so far by each running part (an actor: workers report, the driver reads)."""

    def __init__(self):
        self.done: dict[int, int] = {}

    def set(self, part: int, n: int) -> None:
        self.done[part] = n

    def total(self) -> int:
        return sum(self.done.values())


def _run_train(train_fn, task):
    return train_fn(task)


def _run_part(part_fn, task, counter):
    last = [0.0]

    def progress(done: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5:
            counter.set.remote(task.number, int(done))
            last[0] = now

    result = part_fn(task, progress)
    counter.set.remote(task.number, int(result["ntotal"]))
    return result


def _run_search(search_fn, path, queries, k, probes, mode, num_threads):
    return search_fn(path, queries, k, probes, mode, num_threads)


class RayEngine(Engine):
    """Parts as Ray tasks.

    Parameters
    ----------
    address : the cluster to join (``"auto"``, ``"ray://host:10001"``, ...); None starts a local
        one unless this process is already connected to one (``ray.init`` done by the caller).
    cpus_per_task : CPUs (and threads) each part task uses; a node runs as many parts at once as
        it has CPUs for, each within the build's ``memory_budget``.
    train_cpus : CPUs of the training task (default: the largest node's CPU count).
    max_retries : how often Ray runs a part again whose worker died.

    The functions run remotely are the class attributes ``train_fn``, ``part_fn`` and
    ``search_fn`` (those of :mod:`mudg_fast.engines.tasks`); a subclass may wrap them.
    """

    name = "ray"
    train_fn = staticmethod(tasks.train)
    part_fn = staticmethod(tasks.add_part)
    search_fn = staticmethod(tasks.search_part)

    def __init__(self, address: Optional[str] = None, *, cpus_per_task: int = 1,
                 train_cpus: Optional[int] = None, max_retries: int = 3):
        if isinstance(cpus_per_task, bool) or not isinstance(cpus_per_task, int) or cpus_per_task < 1:
            raise ValueError(f"cpus_per_task must be an integer >= 1, got {cpus_per_task!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        self.cpus_per_task = cpus_per_task
        self.max_retries = max_retries
        self._started = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            except (ConnectionError, RayError, ValueError) as e:
                raise EngineError(f"cannot connect to the Ray cluster at {address or 'a new local cluster'}: "
                                  f"{e}") from e
            self._started = address is None
        cpus = [int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
        self.train_cpus = int(train_cpus) if train_cpus is not None else max(cpus + [1])
        self.concurrency = max(1, sum(c // cpus_per_task for c in cpus))

    # -- running ----------------------------------------------------------------------------------
    @staticmethod
    def _gone(what: str, e: BaseException, finished: Optional[int] = None) -> EngineError:
        kept = "parts finished so far are kept" if finished is None else f"the {finished} parts finished so far are kept"
        return EngineError(f"the Ray cluster failed or went away while {what} ({type(e).__name__}: {e}); {kept}: "
                           "run the same build again to resume")

    def _check_connected(self, what: str, finished: Optional[int] = None) -> None:
        # Ray calls made while disconnected would start a new local cluster: stop instead.
        if not ray.is_initialized():
            raise self._gone(what, ConnectionError("disconnected from the cluster"), finished)

    def _get(self, refs, what: str, finished: Optional[int] = None):
        self._check_connected(what, finished)
        try:
            return ray.get(refs)
        except RayTaskError as e:  # the task itself raised: the same exception as locally
            raise e.as_instanceof_cause() from None
        except Exception as e:  # noqa: BLE001 - lost workers, nodes, the cluster, the connection
            raise self._gone(what, e, finished) from e

    def train(self, task: tasks.TrainTask, say: Callable[[str], None]) -> dict:
        say(f"training on the Ray cluster ({self.train_cpus} CPUs)")
        task = dataclasses.replace(task, num_threads=self.train_cpus)
        self._check_connected("training")
        fn = ray.remote(_run_train).options(num_cpus=self.train_cpus, max_retries=self.max_retries)
        return self._get(fn.remote(self.train_fn, task), "training")

    def add_parts(self, todo: list[tasks.PartTask], on_done: Callable[[dict], None],
                  on_progress: Callable[[int], None]) -> None:
        if not todo:
            return
        self._check_connected("adding", 0)
        try:
            counter: Any = ray.remote(_Counter).options(num_cpus=0).remote()  # an actor handle
            fn = ray.remote(_run_part).options(num_cpus=self.cpus_per_task, max_retries=self.max_retries,
                                               retry_exceptions=False)
            pending = {fn.remote(self.part_fn, dataclasses.replace(t, num_threads=self.cpus_per_task), counter): t
                       for t in todo}
        except Exception as e:  # noqa: BLE001
            raise self._gone("submitting the parts", e, 0) from e
        finished = 0
        try:
            while pending:
                self._check_connected("adding", finished)
                try:
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                except Exception as e:  # noqa: BLE001
                    raise self._gone("adding", e, finished) from e
                for ref in ready:
                    t = pending.pop(ref)
                    result = self._get(ref, f"adding part {t.number}", finished)
                    finished += 1
                    on_done(result)
                if ray.is_initialized():
                    try:
                        on_progress(int(ray.get(counter.total.remote(), timeout=5)))
                    except Exception:  # noqa: BLE001 - progress is informative; failures show up above
                        pass
        finally:
            if ray.is_initialized():
                for ref in pending:
                    try:
                        ray.cancel(ref, force=True)
                    except Exception:  # noqa: BLE001 - best effort: the cluster may be gone
                        pass

    def search_parts(self, paths, queries, k, probes, mode="auto") -> list[tuple[np.ndarray, np.ndarray]]:
        self._check_connected("searching")
        q, p = ray.put(np.ascontiguousarray(queries)), ray.put(np.ascontiguousarray(probes))
        fn = ray.remote(_run_search).options(num_cpus=self.cpus_per_task, max_retries=self.max_retries)
        refs = [fn.remote(self.search_fn, str(path), q, k, p, mode, self.cpus_per_task) for path in paths]
        return self._get(refs, "searching")

    def close(self) -> None:
        if self._started and ray.is_initialized():
            ray.shutdown()
            self._started = False
