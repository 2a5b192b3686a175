"""Executors: where the heavy steps (extraction, matching, localization) run.

One interface, two implementations: `LocalExecutor` (this process) and `RayExecutor` (a Ray
cluster). A step declares its worker once, a class whose `process(items) -> results` does
the work, and calls `executor.map(Worker, args, items, desc, write)`; the driver (the
calling process) is the only writer of each output file, item by item with atomic writes,
so skip-existing resumes a killed run whatever the executor. This module knows no step.

Ray: work is cut into chunks; actors build their worker once (model / reference model
loaded once); a worker that dies is restarted by Ray and its chunk retried (actor
`max_restarts` / `max_task_retries`). Workers read images and feature files from paths: the
cluster needs a shared filesystem (README, "Running on a cluster"); a path missing on a
worker is an error naming the node (`io.require_path`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from tqdm import tqdm


class LocalExecutor:
    """In this process: one worker, items in order, a progress bar."""

    def map(self, worker_cls, args: tuple, items: list, desc: str, write: Callable[[list], None]) -> None:
        worker = worker_cls(*args)
        try:
            for item in tqdm(items, desc=desc, unit="item"):
                write(worker.process([item]))
        finally:
            if hasattr(worker, "close"):
                worker.close()


class _RayWorker:
    """Actor wrapper: one torch thread per actor (actors share the node's cores), then the step's worker."""

    def __init__(self, worker_cls, *args):
        import torch

        torch.set_num_threads(1)
        self.worker = worker_cls(*args)

    def process(self, items: list) -> list:
        return self.worker.process(items)


@dataclass
class RayExecutor:
    """Runs chunks on a Ray cluster. `ray.init()` connects like Ray's own tools: RAY_ADDRESS
    when set, else a local instance on this machine's cores."""

    num_workers: int | None = None        # actors per step (default: the cluster's CPUs)
    chunk_size: int = 8                   # items per task
    num_cpus_per_worker: float = 1.0
    max_retries: int = 3                  # restarts of a dead actor / retries of its chunk
    on_chunk: Callable[[int], None] | None = None  # called after each chunk is written (progress hooks)
    stats: dict = field(default_factory=lambda: {"chunks": 0, "items": 0})
    # Steady-state timing of the last map (after the first chunk: excludes worker start-up).
    timing: dict = field(default_factory=dict)

    def init(self):
        import ray

        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True, log_to_driver=False)
        return ray

    def map(self, worker_cls, args: tuple, items: list, desc: str, write: Callable[[list], None]) -> None:
        self.map_chunks(self.workers(worker_cls, *args), items, desc, write)

    def workers(self, worker_cls, *args):
        ray = self.init()
        n = self.num_workers or max(1, int(ray.cluster_resources().get("CPU", 1) // self.num_cpus_per_worker))
        remote = ray.remote(num_cpus=self.num_cpus_per_worker, max_restarts=self.max_retries,
                            max_task_retries=self.max_retries)(_RayWorker)
        return [remote.remote(worker_cls, *args) for _ in range(n)]

    def map_chunks(self, actors: list, items: list, desc: str, write: Callable[[list], None]):
        """Run `actor.process(chunk)` over chunks, at most one in flight per actor, and call
        `write(results)` on the driver as each chunk completes."""
        ray = self.init()
        self.actors = actors  # visible to on_chunk hooks (monitoring, fault injection in tests)
        chunks = [items[i:i + self.chunk_size] for i in range(0, len(items), self.chunk_size)]
        pending, queue = {}, list(enumerate(chunks))
        bar = tqdm(total=len(items), desc=f"{desc} (ray, {len(actors)} workers)", unit="item")
        import time

        t_start, t_first, n_after_first = time.perf_counter(), None, 0
        try:
            idle = list(actors)
            while queue or pending:
                while idle and queue:
                    actor = idle.pop()
                    idx, chunk = queue.pop(0)
                    pending[actor.process.remote(chunk)] = (actor, idx, chunk)
                done, _ = ray.wait(list(pending), num_returns=1)
                actor, idx, chunk = pending.pop(done[0])
                write(ray.get(done[0]))
                idle.append(actor)
                self.stats["chunks"] += 1
                self.stats["items"] += len(chunk)
                if t_first is None:
                    t_first = time.perf_counter()
                else:
                    n_after_first += len(chunk)
                self.timing = {"startup_and_first_chunk_s": t_first - t_start, "steady_items": n_after_first,
                               "steady_s": time.perf_counter() - t_first}
                bar.update(len(chunk))
                if self.on_chunk is not None:
                    self.on_chunk(self.stats["chunks"])
        finally:
            bar.close()
            for a in actors:  # also ends chunks still in flight after an error on the driver
                ray.kill(a)


def make_executor(name: str = "local", **kwargs):
    """'local' -> LocalExecutor, 'ray' -> RayExecutor(**kwargs)."""
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        try:
            import ray  # noqa: F401  (only to fail early with a clear message)
        except ImportError as e:
            raise ImportError("--executor ray needs Ray: pip install 'hndesc-loc[ray]'") from e
        return RayExecutor(**kwargs)
    raise ValueError(f"Unknown executor '{name}' (local | ray)")
