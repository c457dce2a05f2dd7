"""An FP32 ONNX file with a dynamic batch, exported on the fly for ONNX Runtime and kept in a cache.

The benchmark does not need trained weights, only the architecture, so the model is built from a
seed and the file is cached under a key of (model description, seed, torch version): the second
run skips the export. :func:`export_onnx` is the one place that calls an exporter.
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

from export.fileio import atomic_path
from export.models import ModelSpec

MAX_BATCH = 4096


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "resnet-deploy" / "bench-onnx"


def export_onnx(model: nn.Module, spec: ModelSpec, path: Path) -> None:
    """FP32 ONNX with a dynamic batch, written atomically.

    Uses the export package's exporter (``export.onnx_export``: the same graph the parity gate
    checks) when this checkout has it, else a plain ``torch.onnx.export(dynamo=True)``.
    """
    try:
        from export.onnx_export import export_onnx as package_export, save_onnx
    except ImportError:
        package_export = save_onnx = None
    with atomic_path(path) as tmp, contextlib.redirect_stdout(sys.stderr):
        if package_export is not None:
            save_onnx(package_export(model, spec), tmp)
            return
        example = torch.randn(2, spec.in_chans, spec.input_size, spec.input_size)
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        # The exporter reports its steps on stdout; keep stdout for the benchmark's table.
        torch.onnx.export(model.eval(), (example,), str(tmp), dynamo=True, verbose=False,
                          dynamic_shapes=({0: batch},), input_names=["input"],
                          output_names=["logits"])


def cached_onnx(model: nn.Module, spec: ModelSpec, seed: int,
                cache_dir: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """The cached file for (spec, seed) (exporting it first if needed) and what that cost."""
    key = {**spec.to_dict(), "seed": seed, "torch": torch.__version__,
           "exporter": "torch.onnx.dynamo"}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir or default_cache_dir()) / f"{key.get('name', 'model')}-{digest}.onnx"
    if path.exists():
        return path, {"onnx": str(path), "onnx_cached": True, "export_s": 0.0}
    t0 = time.perf_counter()
    export_onnx(model, spec, path)
    return path, {"onnx": str(path), "onnx_cached": False, "export_s": time.perf_counter() - t0}
