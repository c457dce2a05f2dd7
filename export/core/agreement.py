"""Does a manifest describe the artifact it sits beside? Checked at load, never trusted.

The manifest's files are sha256-checked, but the manifest itself is plain JSON anyone can edit:
an edited ``model.mean`` made every digit a "1" with exit status 0, and ``verify`` passed. So a
manifest is checked against what the artifact itself says:

- the ONNX graph's inputs and outputs (names, dtypes, shapes: C, H, W and the number of classes),
- ``class_names`` against the output width,
- the ``resnet_deploy.*`` metadata the exporter stamps into the ONNX file (model description
  with mean/std, normalisation, class names, batch range): the file is covered by its sha256,
  so its copy is the one that counts;
- the manifest's own digest (``manifest_sha256``, see :mod:`.manifest`), which tells an edited
  manifest from a re-exported one; manifests written before it existed have none.

A TensorRT engine's bindings are checked against the same contract when the engine is loaded
(:mod:`export.runtime.tensorrt_runner`). Every mismatch is one :class:`UserError` line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import UserError
from .manifest import DIGEST_KEY, MANIFEST_NAME, manifest_digest

#: the prefix of the exporter's metadata_props keys (export.convert.onnx_export.META_PREFIX)
META_PREFIX = "resnet_deploy."
#: metadata keys whose value must equal the manifest's key of the same name
STAMPED = ("model", "normalization", "class_names", "batch_range")


def check_digest(folder: Path, manifest: Mapping[str, Any]) -> bool:
    """Refuse a manifest whose content no longer matches its recorded digest; False for a
    manifest that records none (written before digests), True when it matches."""
    recorded = manifest.get(DIGEST_KEY)
    if recorded is None:
        return False
    if recorded != manifest_digest(manifest):
        raise UserError(f"{Path(folder) / MANIFEST_NAME} was edited after export (its content "
                        f"no longer matches its {DIGEST_KEY}); re-export the artifact instead "
                        "of editing its manifest")
    return True


def _dtype(elem_type: int) -> str:
    import onnx

    names: dict[int, str] = {onnx.TensorProto.FLOAT: "float32",
                             onnx.TensorProto.FLOAT16: "float16"}
    return names.get(elem_type) or str(onnx.TensorProto.DataType.Name(elem_type)).lower()


def graph_signature(proto: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The graph's inputs (initializers left out) and outputs as manifest entries."""
    def entry(vi: Any) -> dict[str, Any]:
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                 for d in tt.shape.dim]
        return {"name": vi.name, "shape": shape, "dtype": _dtype(tt.elem_type)}

    initializers = {t.name for t in proto.graph.initializer}
    return ([entry(vi) for vi in proto.graph.input if vi.name not in initializers],
            [entry(vi) for vi in proto.graph.output])


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def check_onnx_agrees(path: Path, proto: Any, manifest: Mapping[str, Any]) -> None:
    """Refuse a manifest that says something else than the ONNX file ``path`` (``proto``)."""
    where = f"{MANIFEST_NAME} does not match {path.name}"
    inputs, outputs = graph_signature(proto)
    for key, actual in (("inputs", inputs), ("outputs", outputs)):
        said = [{k: e.get(k) for k in ("name", "shape", "dtype") if k in e}
                for e in manifest[key]]
        have = [{k: a[k] for k in said[i]} if i < len(said) else a
                for i, a in enumerate(actual)]
        if said != have:
            raise UserError(f"{where}: its {key} are {_short(said)}, the graph's "
                            f"{_short(have)}; refused")
    model = manifest["model"]
    shape = inputs[0]["shape"] if inputs else []
    expected = ["?", model.get("in_chans"), model.get("input_size"), model.get("input_size")]
    if len(shape) != 4 or [s for s in shape[1:]] != expected[1:]:
        raise UserError(f"{where}: the model takes {expected[1]}x{expected[2]}x{expected[3]} "
                        f"inputs, the graph {_short(shape)}; refused")
    width = (outputs[0]["shape"] if outputs else [None, None])[-1]
    if model.get("num_classes") != width:
        raise UserError(f"{where}: model.num_classes is {model.get('num_classes')}, the graph "
                        f"outputs {width} scores; refused")
    names = manifest.get("class_names")
    if names is not None and len(names) != width:
        raise UserError(f"{where}: class_names has {len(names)} names for {width} outputs; "
                        "refused")
    _check_metadata(where, proto, manifest)


def _check_metadata(where: str, proto: Any, manifest: Mapping[str, Any]) -> None:
    """The exporter's stamp in the ONNX file: what it holds must be what the manifest says."""
    stamped: dict[str, Any] = {}
    for prop in proto.metadata_props:
        if prop.key.startswith(META_PREFIX):
            try:
                stamped[prop.key[len(META_PREFIX):]] = json.loads(prop.value)
            except ValueError:
                raise UserError(f"{where}: its metadata {prop.key} is not JSON; "
                                "refused") from None
    for key in STAMPED:
        if key not in stamped or key not in manifest:
            continue
        if stamped[key] != manifest[key]:
            diff = _first_difference(manifest[key], stamped[key], key)
            raise UserError(f"{where}: {diff}; the manifest was edited after export, refused")


def _first_difference(said: Any, stamped: Any, key: str) -> str:
    if isinstance(said, dict) and isinstance(stamped, dict):
        for k in sorted(set(said) | set(stamped), key=str):
            if said.get(k) != stamped.get(k):
                return (f"{key}.{k} is {_short(said.get(k))}, the file's own metadata says "
                        f"{_short(stamped.get(k))}")
    return f"{key} is {_short(said)}, the file's own metadata says {_short(stamped)}"
