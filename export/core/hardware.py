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
