"""What this machine offers a computation: usable cores, free memory, the device "auto" means.

(Every command asks the same questions; one answer each.)
"""

from __future__ import annotations

import os

import torch

from .errors import UserError

DEVICES = ("auto", "cpu", "cuda")


def usable_cores() -> int:
    """Cores this process may run on (affinity / container limits), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory this process can still take, or None where the system does not say.

    Linux's MemAvailable (free memory plus the cache it can reclaim), capped by a cgroup v2
    limit when the process runs in a container that has one.
    """
    available = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            pass
    try:
        cgroup = "/sys/fs/cgroup/"
        with open(cgroup + "memory.max") as fh:
            limit = int(fh.read().strip())  # "max": no limit (ValueError)
        with open(cgroup + "memory.current") as fh:
            used = int(fh.read().strip())
        with open(cgroup + "memory.stat") as fh:  # file cache the kernel can drop
            cache = next((int(line.split()[1]) for line in fh
                          if line.startswith("inactive_file ")), 0)
        room = max(0, limit - used + cache)
        available = room if available is None else min(available, room)
    except (OSError, ValueError, IndexError):
        pass
    return available


def format_bytes(n: float) -> str:
    """1536 -> "1.5 KiB"; for messages about memory."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def resolve_device(name: str) -> str:
    """``auto`` -> "cuda" when PyTorch sees a GPU, else "cpu"; CUDA without one is a user error."""
    if name not in DEVICES:
        raise UserError(f"unknown device {name!r}: choose {', '.join(DEVICES)}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device cuda: no CUDA GPU is visible to PyTorch {torch.__version__}")
    return name


#: Peak memory of one eager ResNet forward per image, in float32 values per input pixel: the
#: largest activation of every family member is 16 x H x W values (64 channels at H/2, or 256 at
#: H/4; 16 channels at H for the small-image models), and what is alive at the peak measured
#: 38-123x H x W x 4 bytes (ResNet-18/50 at 224, ResNet-20 at 32 and 256, torch 2.13 CPU). 128
#: covers every member; the runtimes of the parity gate and the benchmark need no more.
ACTIVATION_VALUES_PER_PIXEL = 128


def inference_bytes(batch: int, in_chans: int, input_size: int, *, activations: bool = True
                    ) -> int:
    """Memory one forward of ``batch`` images needs: the float32 input (twice: the array and
    the runtime's copy) and, with ``activations``, the eager activations (above)."""
    per_pixel = 2 * in_chans + (ACTIVATION_VALUES_PER_PIXEL if activations else 0)
    return 4 * batch * input_size * input_size * per_pixel


def check_memory(need: int, what: str, advice: str = "") -> None:
    """Refuse, before allocating it, more memory than this machine has available."""
    available = available_memory()
    if available is not None and need > available:
        raise UserError(f"{what} needs {format_bytes(need)} of memory, but only "
                        f"{format_bytes(available)} is available" + (f": {advice}" if advice
                                                                      else ""))


def thread_problem(option: str, value: int) -> str | None:
    """Why ``value`` is no count for a thread (or worker) option on this machine, or None.

    More threads than the cores this process may run on only take turns on them (thousands
    of them bring the machine to a halt), so the bound is the usable cores, said in the error.
    """
    cores = usable_cores()
    if value > cores:
        return (f"{option} {value}: this process may run on {cores} core(s) (CPU affinity and "
                f"container limits); more threads than cores only compete for them, give at "
                f"most {cores}")
    return None

