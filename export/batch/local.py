"""The one-machine engine: decode and preprocess in worker processes, infer in the main one.

Chunks (one runner call each: ``batch`` consecutive images of one shard) go to a process pool
as they are listed; the main process runs each chunk through the artifact's runner as soon as
its pixels are back, in order, while the workers decode the chunks behind it. At most
``in_flight`` chunks are out at once, so memory is bounded by the pipeline, never by the size
of the source. Batches never cross a shard's edge: a rerun that starts at shard ``i`` gives
every image the very batch an uninterrupted run gave it, hence the same logits to the bit.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from ..core.errors import BackendUnavailable, UserError, first_line
from ..core.models import ModelSpec
from ..predict.predictor import Predictor
from .decode import Decoded, decode_chunk, init_worker
from .shards import ChunkOutcome
from .sources import Item, Shard


@dataclass(frozen=True)
class Threads:
    """How the cores are split: decode worker processes and the runtime's threads."""

    workers: int
    runtime: int

    @classmethod
    def split(cls, cores: int, workers: int | None, runtime: int | None) -> Threads:
        """Half the cores decode, the rest infer, unless told otherwise."""
        w = workers if workers is not None else max(1, cores // 2)
        return cls(w, runtime or max(1, cores - w))

    def describe(self, cores: int) -> str:
        decode = (f"{self.workers} decode worker process(es)" if self.workers
                  else "decoding in the main process")
        return f"{decode}, {self.runtime} runtime thread(s) on {cores} usable core(s)"


def chunks(shard: Shard, size: int) -> list[list[Item]]:
    """The shard's images in runner calls of ``size``, from its first image."""
    return [list(shard.items[i:i + size]) for i in range(0, len(shard.items), size)]


def _numbered(shards: Iterator[Shard], size: int
              ) -> Iterator[tuple[Shard, int, int, list[Item]]]:
    """(shard, chunk number, chunks in the shard, chunk) for every chunk of every shard."""
    for shard in shards:
        parts = chunks(shard, size)
        for j, part in enumerate(parts):
            yield shard, j, len(parts), part


def infer(predictor: Predictor, decoded: Decoded, batch: int) -> ChunkOutcome:
    """A decoded chunk through the runner (one call; padded up to the range's minimum)."""
    if decoded.ok:
        logits = predictor.logits(decoded.inputs, batch)
    else:
        logits = np.zeros((0, predictor.spec.num_classes), dtype=np.float32)
    return ChunkOutcome(decoded.ok, logits, decoded.errors)


def activate(predictor: Predictor) -> None:
    """Load the runner; a runtime's own error is one line, not its stack."""
    try:
        predictor.runner.activate()
    except (UserError, BackendUnavailable):
        raise
    except Exception as exc:
        raise UserError(f"{predictor.runner.label} could not load "
                        f"{predictor.folder}: {first_line(exc)}") from None


def _die_with_parent() -> None:
    """Linux: a decode worker ends when the job's process does (even on kill -9)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _init(spec: dict) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    init_worker(spec)


def _noop() -> None:
    return None


class _Later:
    """A chunk decoded in the main process when its result is asked for (--workers 0)."""

    def __init__(self, chunk: list[Item], spec: ModelSpec):
        self.chunk, self.spec = chunk, spec

    def result(self) -> Decoded:
        return decode_chunk(self.chunk, self.spec)

    def cancel(self) -> bool:
        return True


class LocalEngine:
    """Decode workers + the main process's runner; :meth:`process` yields finished shards."""

    def __init__(self, predictor: Predictor, threads: Threads, batch: int,
                 in_flight: int | None = None):
        self.predictor = predictor
        self.threads = threads
        self.batch = batch
        self.in_flight = in_flight or max(4, 4 * threads.workers)
        self.pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Fork the workers before the runtime starts its threads, then load the runner."""
        if self.threads.workers:
            context = multiprocessing.get_context("fork")
            self.pool = ProcessPoolExecutor(self.threads.workers, mp_context=context,
                                            initializer=_init,
                                            initargs=(self.predictor.spec.to_dict(),))
            self.pool.submit(_noop).result()  # a fork context starts every worker at once
        activate(self.predictor)

    def process(self, shards: Iterator[Shard]) -> Iterator[tuple[Shard, list[ChunkOutcome]]]:
        """Each shard with its chunks' outcomes, in shard order."""
        queue: deque[tuple[Shard, int, int, Future[Decoded] | _Later]] = deque()
        todo = _numbered(shards, self.batch)
        done: list[ChunkOutcome] = []
        try:
            while True:
                while len(queue) < self.in_flight:
                    nxt = next(todo, None)
                    if nxt is None:
                        break
                    shard, j, n, chunk = nxt
                    queue.append((shard, j, n, self._submit(chunk)))
                if not queue:
                    return
                shard, j, n, future = queue.popleft()
                done.append(infer(self.predictor, future.result(), self.batch))
                if j == n - 1:
                    yield shard, done
                    done = []
        except BrokenProcessPool:
            raise UserError("a decode worker died (out of memory, or killed); rerun the same "
                            "command to continue from the committed shards") from None
        finally:
            for *_, future in queue:
                future.cancel()

    def describe(self) -> str:
        return self.threads.describe(self.threads.workers + self.threads.runtime)

    def _submit(self, chunk: list[Item]) -> Future[Decoded] | _Later:
        if self.pool is None:
            return _Later(chunk, self.predictor.spec)
        return self.pool.submit(decode_chunk, chunk)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.predictor.close()
