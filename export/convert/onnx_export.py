"""Eager model -> one self-contained ONNX file, with the dynamo exporter and a dynamic batch.

``torch.onnx.export(..., dynamo=True)`` traces the model with ``torch.export`` and translates it
with onnxscript; its ``optimize`` pass (on by default) folds constants, which folds every
BatchNorm into the convolution before it. In torch 2.13 ``external_data`` defaults to True (the
weights would go to a ``.data`` file beside the model), so we take the in-memory ``ModelProto``
and save it ourselves with ``save_as_external_data=False``: one file, checked with
``onnx.checker.check_model(full_check=True)``. ResNet-152 is about 240 MB, far below protobuf's
2 GB limit; a model that would not fit is refused with a clear message instead of being split.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from ..core import agreement
from ..core.agreement import graph_signature
from ..core.errors import UserError
from ..core.models import ModelSpec

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
#: Opset 20: the newest the TensorRT 10.x ONNX parser reads (10.0 supports 9..20; 11.x reads up to
#: 25), and ONNX Runtime 1.18+ runs it.
DEFAULT_OPSET = 20
_PROTOBUF_LIMIT = 2 * 1024 ** 3

#: Keys of the model-level ``metadata_props`` every artifact carries.
META_PREFIX = agreement.META_PREFIX  # one prefix for the writer and the check at load


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter prints progress and warnings (e.g. torchvision ops it skips); keep them off
    the user's terminal, which should show the export and parity story only."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def export_onnx(model: nn.Module, spec: ModelSpec, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Trace ``model`` (eval mode, FP32, CPU) into an ONNX graph ``images -> logits``.

    The batch dimension is dynamic (``torch.export.Dim``) and is named ``batch`` in the graph; the
    range an artifact promises lives in its manifest and its TensorRT profile, not in the graph.
    """
    model = model.eval().float().cpu()
    example = torch.randn(2, spec.in_chans, spec.input_size, spec.input_size,
                          generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim(BATCH_DIM, min=1)
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                model, (example,), dynamo=True, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},),
                opset_version=opset, external_data=False, optimize=True, verbose=False)
            assert program is not None  # dynamo=True always returns a program
            proto = program.model_proto
    except Exception as exc:  # the exporter raises many types; the user needs one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"torch.onnx (dynamo) could not export {spec.name} at opset {opset}: "
                        f"{first}") from None
    produced = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if produced != opset:  # the exporter falls back silently when it cannot convert
        raise UserError(f"torch.onnx could not express {spec.name} in opset {opset} (it produced "
                        f"opset {produced}); use --opset {produced} or newer")
    _name_the_batch_dim(proto)
    return proto


def _name_the_batch_dim(proto: onnx.ModelProto) -> None:
    """Make the dynamic dimension read ``batch`` on the input and the output."""
    for vi in (*proto.graph.input, *proto.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = BATCH_DIM


def stamp_metadata(proto: onnx.ModelProto, metadata: dict[str, Any], doc: str) -> None:
    """Write ``metadata`` as model-level ``metadata_props`` (JSON values, ``resnet_deploy.`` keys).

    Anyone holding only the .onnx file can rebuild the preprocessing from it: model description,
    normalisation, class names.
    """
    kept = [p for p in proto.metadata_props if not p.key.startswith(META_PREFIX)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key = META_PREFIX + key
        entry.value = json.dumps(value, sort_keys=True)
    proto.doc_string = doc
    proto.producer_name = "resnet-deploy"
    from .. import __version__

    proto.producer_version = __version__


def read_metadata(path_or_proto: str | os.PathLike | onnx.ModelProto) -> dict[str, Any]:
    """The ``resnet_deploy.*`` metadata of an ONNX file (without loading its weights)."""
    if isinstance(path_or_proto, onnx.ModelProto):
        proto = path_or_proto
    else:
        proto = onnx.load(str(path_or_proto), load_external_data=False)
    return {p.key[len(META_PREFIX):]: json.loads(p.value)
            for p in proto.metadata_props if p.key.startswith(META_PREFIX)}


def save_onnx(proto: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Save as ONE file (weights inline) and run the full ONNX checker on it."""
    path = Path(path)
    size = proto.ByteSize()
    if size >= _PROTOBUF_LIMIT:
        raise UserError(f"{path.name}: the model is {size / 1024 ** 3:.1f} GB, over protobuf's "
                        "2 GB limit for a single-file ONNX model")
    onnx.save_model(proto, str(path), save_as_external_data=False)
    check_onnx_file(path)
    return path


def check_onnx_file(path: str | os.PathLike) -> None:
    """``onnx.checker.check_model(full_check=True)`` plus: no tensor may live in another file."""
    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = (str(exc).strip().splitlines() or ["invalid model"])[0]
        raise UserError(f"{path.name} fails the ONNX checker: {first}") from None
    proto = onnx.load(str(path), load_external_data=False)
    external = [t.name for t in proto.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise UserError(f"{path.name} keeps {len(external)} tensors in external files "
                        f"(e.g. {external[0]}); artifacts must be self-contained")


def io_signature(proto: onnx.ModelProto) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs as manifest entries: name, shape ("batch" for the dynamic dim), dtype
    (the reader's check at load uses the same function, so the two cannot drift apart)."""
    return graph_signature(proto)
