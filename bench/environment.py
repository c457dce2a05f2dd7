"""The environment block of a benchmark report: what the numbers were measured on.

CPU model and cores, GPU, driver, CUDA, library versions and thread settings; never the hostname
or user, so a report can be shared as it is. Nothing here imports TensorRT (slow, and it may not be
there): versions come from package metadata.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from typing import Any

import numpy as np
import torch

from export import __version__ as resnet_deploy_version
from export.core import cpu_features
from export.core.hardware import usable_cores


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The "model name" line of /proc/cpuinfo (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def gpu_info() -> dict[str, Any] | None:
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "count": torch.cuda.device_count(),
        "driver": _nvidia_driver(),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        # FP32 convolutions/matmuls may run as TF32 on Ampere and newer: record what was allowed.
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }


def onnxruntime_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def collect(threads: int | None = None) -> dict[str, Any]:
    """The environment block (JSON-ready)."""
    load = load_average()
    return {
        "cpu": {
            "model": cpu_model(),
            "logical_cores": os.cpu_count(),
            "usable_cores": usable_cores(),
            "machine": platform.machine(),
            # other work on the machine when the run started: a shared box shows up here
            "load_average_1_5_15": load,
            # the vector/matrix ISA: BF16 and INT8 figures mean little without it
            "isa": cpu_features.describe(),
        },
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "gpu": gpu_info(),
        "versions": {
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
            "onnx": _version("onnx"),
            "tensorrt": _version("tensorrt"),
            "openvino": _version("openvino"),
            "numpy": np.__version__,
            "resnet_deploy": resnet_deploy_version,
        },
        "onnxruntime_providers": onnxruntime_providers(),
        "threads": {
            "requested": threads,
            "torch_intra_op": torch.get_num_threads(),
            "torch_inter_op": torch.get_num_interop_threads(),
            "onnxruntime_intra_op": threads,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        },
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
