"""What this machine offers a computation: usable cores and the device "auto" means.

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


def resolve_device(name: str) -> str:
    """``auto`` -> "cuda" when PyTorch sees a GPU, else "cpu"; CUDA without one is a user error."""
    if name not in DEVICES:
        raise UserError(f"unknown device {name!r}: choose {', '.join(DEVICES)}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device cuda: no CUDA GPU is visible to PyTorch {torch.__version__}")
    return name


def available_memory() -> int | None:
    """Bytes of memory this process may still use (None: cannot tell).

    The kernel's ``MemAvailable`` (what can be allocated without swapping), capped by the
    container's cgroup limit (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``) minus what the
    cgroup already uses.
    """
    known: list[int] = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    known.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        try:
            known.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as fh:
                limit = fh.read().strip()
            with open(usage_file) as fh:
                usage = int(fh.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # "max" or a huge number: no limit
            known.append(max(0, int(limit) - usage))
        break
    return min(known) if known else None


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
