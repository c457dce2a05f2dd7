"""Per-replica counters in the form of Triton's statistics extension
(``GET /v2/models/<name>/stats``), plus the batch sizes this replica formed."""

from __future__ import annotations

import threading
import time
from typing import Any


class Stats:
    """Success/failure counts and times, and a histogram of the batch sizes run."""

    def __init__(self, name: str):
        self.name = name
        self.lock = threading.Lock()
        self.success_count = self.success_ns = 0
        self.fail_count = self.fail_ns = 0
        self.inference_count = 0  # images
        self.execution_count = 0  # runner calls (batches)
        self.compute_ns = 0
        self.batches: dict[int, list[int]] = {}  # rows -> [count, ns]
        self.last_ms = 0

    def success(self, rows: int, ns: int) -> None:
        with self.lock:
            self.success_count += 1
            self.success_ns += ns
            self.inference_count += rows
            self.last_ms = int(time.time() * 1000)

    def failure(self, ns: int) -> None:
        with self.lock:
            self.fail_count += 1
            self.fail_ns += ns

    def batch(self, rows: int, ns: int) -> None:
        with self.lock:
            self.execution_count += 1
            self.compute_ns += ns
            slot = self.batches.setdefault(rows, [0, 0])
            slot[0] += 1
            slot[1] += ns

    def document(self, pid: int) -> dict[str, Any]:
        """Triton's statistics response for this model, as seen by this replica (``pid``)."""
        with self.lock:
            return {"model_stats": [{
                "name": self.name, "version": "1", "last_inference": self.last_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": {"count": self.success_count, "ns": self.success_ns},
                    "fail": {"count": self.fail_count, "ns": self.fail_ns},
                    "compute_infer": {"count": self.execution_count, "ns": self.compute_ns}},
                "batch_stats": [{"batch_size": rows, "compute_infer": {"count": c, "ns": ns}}
                                for rows, (c, ns) in sorted(self.batches.items())]}],
                "replica": {"pid": pid}}
