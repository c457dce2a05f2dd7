"""Broken exporters for the tests that must see a gate fail: each wraps ``save_onnx`` and
damages the graph just before it is written (monkeypatch ``pipeline.save_onnx`` with it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from onnx import numpy_helper

Save = Callable[[Any, Any], Any]


def _scale(proto: Any, name: str, factor: float) -> None:
    init = next(t for t in proto.graph.initializer if t.name == name)
    values = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array((values * factor).astype(values.dtype), init.name))


def scaled_weights(real_save: Save, prefix: str = "") -> Save:
    """save_onnx that multiplies the first convolution's weights whose name starts with
    ``prefix`` by 1.5: an FP32/FP16 artifact that gives other logits."""
    def save(proto, path):
        init = next(t for t in proto.graph.initializer
                    if t.name.startswith(prefix) and len(t.dims) == 4)
        _scale(proto, init.name, 1.5)
        return real_save(proto, path)
    return save


def scaled_int8_scale(real_save: Save, which: int) -> Save:
    """save_onnx that multiplies the activation scale of the ``which``-th QuantizeLinear of an
    INT8 artifact by 100 (its values then quantize to a few levels); other files pass as
    written."""
    def save(proto, path):
        quantize = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
        if ".int8" in str(path) and quantize:  # the INT8 file, not the FP32 one it came from
            _scale(proto, quantize[which].input[1], 100)
        return real_save(proto, path)
    return save
