"""An FP32 ONNX file with a dynamic batch, exported on the fly for ONNX Runtime and kept in a cache.

The benchmark does not need trained weights, only the architecture, so the model is built from a
seed and the file is cached under a key of (model description, seed, torch version): the second
run skips the export. :func:`export_cached_model` is the one place that calls an exporter.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export.core.fileio import atomic_path
from export.core.models import ModelSpec


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "resnet-deploy" / "bench-onnx"


def export_cached_model(model: nn.Module, spec: ModelSpec, path: Path) -> None:
    """FP32 ONNX with a dynamic batch, written atomically, by the export package's exporter.

    The same graph the parity gate checks (``export.convert.onnx_export``: torch.onnx dynamo
    exporter, BatchNorm folded, one self-contained file). Swap it here to benchmark another
    exporter.
    """
    from export.convert.onnx_export import export_onnx, save_onnx

    with atomic_path(path) as tmp, contextlib.redirect_stdout(sys.stderr):
        save_onnx(export_onnx(model, spec), tmp)


def cached_onnx(model: nn.Module, spec: ModelSpec, seed: int,
                cache_dir: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """The cached file for (spec, seed) (exporting it first if needed) and what that cost."""
    key = {**spec.to_dict(), "seed": seed, "torch": torch.__version__,
           "exporter": "export.convert.onnx_export"}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir or default_cache_dir()) / f"{key.get('name', 'model')}-{digest}.onnx"
    if path.exists():
        return path, {"onnx": str(path), "onnx_cached": True, "export_s": 0.0}
    t0 = time.perf_counter()
    export_cached_model(model, spec, path)
    return path, {"onnx": str(path), "onnx_cached": False, "export_s": time.perf_counter() - t0}


#: on-the-fly INT8: how many seeded calibration inputs, and the calibration method. The rows are
#: speed rows: the method changes the ranges, not the speed (the same QDQ graph either way), and
#: random inputs say nothing about accuracy, so the fastest method does.
INT8_CALIBRATION_COUNT = 32
INT8_METHOD = "minmax"
INT8_NOTE = (f"speed row: INT8 QDQ quantized on the fly from the FP32 ONNX ({INT8_METHOD} "
             f"calibration on {INT8_CALIBRATION_COUNT} seeded random inputs); accuracy not judged")


def int8_quantizer_unavailable() -> str | None:
    """Why the project's INT8 quantizer cannot run here (None: it can)."""
    try:
        from export.convert.int8 import quantize_qdq  # noqa: F401
    except ImportError as exc:
        return f"INT8 quantizer not available (export.convert.int8: {exc})"
    return None


def cached_int8_onnx(fp32_path: Path, calibration: Any, cache_dir: Path | None = None) \
        -> tuple[Path, dict[str, Any]]:
    """An INT8 QDQ file quantized from ``fp32_path`` by ``export.convert.int8.quantize_qdq``
    (flavour "cpu"), cached beside it under a key of (FP32 file, calibration inputs, method)."""
    import numpy as np

    from export.convert.int8 import quantize_qdq

    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    key = {"fp32": Path(fp32_path).name, "method": INT8_METHOD, "flavour": "cpu",
           "calibration": hashlib.sha256(calibration.tobytes()).hexdigest()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir or default_cache_dir()) / f"{Path(fp32_path).stem}-int8-{digest}.onnx"
    info = {"int8_onnx": str(path), "int8_method": INT8_METHOD,
            "int8_calibration": f"{len(calibration)} seeded random inputs"}
    if path.exists():
        return path, {**info, "int8_cached": True, "quantize_s": 0.0}
    t0 = time.perf_counter()
    with atomic_path(path) as tmp, contextlib.redirect_stdout(sys.stderr):
        quantize_qdq(fp32_path, tmp, calibration, flavour="cpu", method=INT8_METHOD)
    return path, {**info, "int8_cached": False, "quantize_s": time.perf_counter() - t0}
