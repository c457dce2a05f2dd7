"""What a batch job is told: resnet-batch's options as one value (no heavy imports here, so the
command line can say in one line what is missing before anything else is loaded)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BatchOptions:
    """Everything a job is told (resnet-batch's options)."""

    artifact: Path
    sources: list[Path]
    out: Path
    top: int = 5
    logits: bool = False
    column: str | None = None
    batch_size: int | None = None
    shard_size: int = 1000
    workers: int | None = None
    threads: int | None = None
    runtime: str = "auto"
    engine: str = "local"
    address: str | None = None
    restart: bool = False
    progress: bool | None = None  # None: on a terminal only
