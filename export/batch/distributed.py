"""The same job on Ray Data: chunks decoded and inferred by an actor pool, committed here.

Each row Ray sees is one chunk of one shard (the images' locators, not their pixels), so each
runner call gets the very batch the local engine gives it, and the same logits. The driver takes
windows of shards, waits for each shard's chunks (Ray keeps their order) and commits the shard
as the local engine does (:mod:`.shards`): a lost node costs at most the uncommitted shards,
which a rerun does again; nothing is ever written twice.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UserError
from ..predict.predictor import Predictor
from . import raydata
from .decode import decode_chunk
from .local import Threads, chunks, infer
from .shards import ChunkOutcome
from .sources import Shard, SourceChanged


class ChunkRunner:
    """An actor: the artifact loaded once, with its runtime threads set to the actor's CPUs
    (Ray sets OMP_NUM_THREADS=1 in workers; ONNX Runtime and OpenVINO are told explicitly)."""

    def __init__(self, artifact: str, runtime: str, threads: int, batch: int):
        import torch

        torch.set_num_threads(1)
        self.predictor = Predictor.load(Path(artifact), runtime, threads)
        self.predictor.runner.activate()
        self.batch = batch

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for blob in rows["items"]:
            try:
                decoded = decode_chunk(pickle.loads(blob), self.predictor.spec)
                outcome: Any = infer(self.predictor, decoded, self.batch)
            except SourceChanged as exc:  # stops the job, in the driver, in one line
                outcome = str(exc)
            results.append(pickle.dumps(outcome))
        return {"shard": rows["shard"], "chunk": rows["chunk"],
                "result": np.array(results, dtype=object)}


class RayEngine:
    """``--engine ray`` / ``--address``: windows of shards through :func:`raydata.map_rows`."""

    def __init__(self, predictor: Predictor, options: Any, threads: Threads, batch: int):
        self.predictor = predictor
        self.options = options
        self.batch = batch
        self.threads = options.threads or 1  # runtime threads per actor (= its CPUs)
        self.actors = options.workers
        self.cores = threads.workers + threads.runtime
        self.window = 16

    def start(self) -> None:
        resources = raydata.connect(self.options.address, self.cores)
        cpus = int(resources.get("CPU", 1))
        self.actors = self.actors or max(1, cpus // self.threads)
        if self.actors * self.threads > cpus:
            raise UserError(f"{self.actors} actor(s) of {self.threads} CPU(s) do not fit the "
                            f"cluster's {cpus} CPU(s)")
        self.window = max(self.window, 2 * self.actors)

    def describe(self) -> str:
        return f"{self.actors} Ray actor(s) x {self.threads} runtime thread(s)"

    def process(self, shards: Iterator[Shard]) -> Iterator[tuple[Shard, list[ChunkOutcome]]]:
        args = (str(Path(self.options.artifact).resolve()), self.options.runtime, self.threads,
                self.batch)
        while True:
            window = list(islice(shards, self.window))
            if not window:
                return
            rows = [{"shard": s.index, "chunk": j, "items": pickle.dumps(c)}
                    for s in window for j, c in enumerate(chunks(s, self.batch))]
            by_index = {s.index: s for s in window}
            outcomes: dict[int, dict[int, ChunkOutcome]] = {}
            expected = {s.index: len(chunks(s, self.batch)) for s in window}
            for row in raydata.map_rows(rows, ChunkRunner, args, self.actors, self.threads):
                outcome = pickle.loads(row["result"])
                if isinstance(outcome, str):
                    raise SourceChanged(outcome)
                index = int(row["shard"])
                outcomes.setdefault(index, {})[int(row["chunk"])] = outcome
                if len(outcomes[index]) == expected[index]:
                    done = outcomes.pop(index)
                    yield by_index[index], [done[j] for j in sorted(done)]

    def close(self) -> None:
        raydata.shutdown()
