"""Scale-out on Ray (Ray Core): extraction, matching and localization in chunks.

One mechanism for every step: work is cut into chunks (images, pairs, queries); actors
load the model / reference model once; workers return results and the driver is the
only writer of each HDF5 or results file, writing chunk by chunk with the same atomic
items as the in-process run, so skip-existing resumes a killed driver and a retried chunk
never leaves a half-written item. A worker that dies is restarted by Ray and its chunk
retried (actor `max_restarts` / `max_task_retries`).

Workers read images and feature files from paths: the cluster needs a shared filesystem
(see README, "Running on a cluster"); a path missing on a worker is an error naming the node.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tqdm import tqdm


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

    def workers(self, actor_cls, *args):
        ray = self.init()
        n = self.num_workers or max(1, int(ray.cluster_resources().get("CPU", 1) // self.num_cpus_per_worker))
        remote = ray.remote(num_cpus=self.num_cpus_per_worker, max_restarts=self.max_retries,
                            max_task_retries=self.max_retries)(actor_cls)
        return [remote.remote(*args) for _ in range(n)]

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


def make_executor(name: str, **kwargs):
    """'local' -> None (in-process), 'ray' -> RayExecutor."""
    if name == "local":
        return None
    if name == "ray":
        try:
            import ray  # noqa: F401
        except ImportError as e:
            raise ImportError("--executor ray needs Ray: pip install 'hndesc-loc[ray]'") from e
        return RayExecutor(**kwargs)
    raise ValueError(f"Unknown executor '{name}' (local | ray)")


def _check_path(path: Path) -> Path:
    if not Path(path).exists():
        import socket

        raise FileNotFoundError(f"{path} does not exist on worker node {socket.gethostname()}: the cluster must share "
                                "the dataset and output folders at the same paths (see README, Running on a cluster).")
    return Path(path)


# ----------------------------------------------------------------------------- actors
class ExtractWorker:
    def __init__(self, conf: dict, image_dir: str, as_half: bool):
        import torch

        from .extract_features import build_model

        torch.set_num_threads(1)
        self.image_dir = _check_path(Path(image_dir))
        self.conf, self.as_half = conf, as_half
        self.model = build_model(conf)

    def process(self, names: list[str]) -> list:
        from .extract_features import extract_one

        out = []
        for name in names:
            _check_path(self.image_dir / name)
            out.append((name, extract_one(self.model, self.image_dir, name, self.conf.get("preprocessing", {}), self.as_half)))
        return out


class MatchWorker:
    def __init__(self, model_conf: dict, feature_paths: list[str]):
        import torch

        from .match_features import FeatureReader

        torch.set_num_threads(1)
        self.conf = model_conf
        self.reader = FeatureReader([_check_path(Path(p)) for p in feature_paths])

    def process(self, pairs: list[tuple[str, str]]) -> list:
        from .match_features import match_pair

        return [((a, b), match_pair(self.reader, self.reader, a, b, self.conf)) for a, b in pairs]


class LocalizeWorker:
    def __init__(self, reference_sfm: str, features: str, matches: str, conf: dict | None):
        import pycolmap

        from .io import open_h5
        from .localize_sfm import QueryLocalizer

        self.localizer = QueryLocalizer(pycolmap.Reconstruction(str(_check_path(Path(reference_sfm)))), conf)
        self.ffeat, self.fmatch = open_h5(_check_path(Path(features))), open_h5(_check_path(Path(matches)))

    def process(self, items: list) -> list:
        return [(q, self.localizer.run(q, cam, dbs, self.ffeat, self.fmatch)) for q, cam, dbs in items]


# ------------------------------------------------------------------------------ steps
def run_extraction(executor: RayExecutor, conf: dict, image_dir: Path, names: list[str], feature_path: Path,
                   as_half: bool) -> None:
    from .io import open_h5, write_item

    actors = executor.workers(ExtractWorker, conf, str(image_dir), as_half)
    with open_h5(feature_path, "a") as fd:
        def write(results):
            for name, out in results:
                write_item(fd, name, out["data"], dataset_attrs=out["dataset_attrs"])

        executor.map_chunks(actors, names, "extract", write)


def run_matching(executor: RayExecutor, model_conf: dict, pairs: list, feature_paths: list[Path], matches: Path) -> None:
    from .io import names_to_pair, open_h5, write_item

    actors = executor.workers(MatchWorker, model_conf, [str(p) for p in feature_paths])
    with open_h5(matches, "a") as fd:
        def write(results):
            for (a, b), data in results:
                write_item(fd, names_to_pair(a, b), data)

        executor.map_chunks(actors, pairs, "match", write)


def run_localization(executor: RayExecutor, reference_sfm: Path, items: list, write: Callable[[list], None],
                     features: Path, matches: Path, conf: dict | None) -> None:
    actors = executor.workers(LocalizeWorker, str(reference_sfm), str(features), str(matches), conf)
    executor.map_chunks(actors, items, "localize", write)
