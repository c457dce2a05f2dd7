"""Where training runs: the device, the CPU threads, and the torchrun job it may be part of."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..core.errors import UserError
from ..core.hardware import resolve_device, usable_cores


@dataclass(frozen=True)
class Processes:
    """Where this process sits in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> Processes:
        """torchrun's RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE (one process without)."""
        values = []
        for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0),
                              ("LOCAL_WORLD_SIZE", 1)):
            text = os.environ.get(name, str(default))
            try:
                values.append(int(text))
            except ValueError:
                raise UserError(f"the environment variable {name} must be an integer (torchrun "
                                f"sets it), got {text!r}") from None
        rank, world, local_rank, local_world = values
        if not (world >= 1 and 0 <= rank < world and local_world >= 1
                and 0 <= local_rank < local_world):
            raise UserError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world} "
                            f"LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_world}")
        return cls(rank, world, local_rank, local_world)


def pick_device(name: str, procs: Processes) -> torch.device:
    """``auto`` takes CUDA when present; each torchrun process takes its local GPU."""
    if resolve_device(name) == "cpu":
        return torch.device("cpu")
    return torch.device("cuda", procs.local_rank % torch.cuda.device_count())


def cpu_thread_count(procs: Processes, requested: int = 0) -> int:
    """Threads for this process: ``requested``, else OMP_NUM_THREADS, else the idle cores.

    The cores are shared among the processes torchrun started on this machine. Cores that other
    programs keep busy (by the 1-minute load average) are left out: an OpenMP thread that has to
    wait for a busy core stalls every layer, and on a shared 2-core machine we measured 2 threads
    running several times slower than 1.
    """
    if requested > 0:
        return requested
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    cores = usable_cores()
    share = max(1, cores // procs.local_world_size)
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, min(share, cores - busy))


@contextlib.contextmanager
def cpu_threads(count: int) -> Iterator[int]:
    """Use ``count`` intra-op threads for the block, then restore the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def process_group(procs: Processes, device: torch.device) -> Iterator[None]:
    """Join the torchrun job (gloo on CPU, NCCL on CUDA) for the duration of the block."""
    if not procs.distributed:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()
