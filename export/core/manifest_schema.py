"""The artifact manifest's schema: its keys, its typed shape, and checking what a reader gets.

Every reader goes through :func:`check_manifest` (via :func:`export.core.artifact.read_manifest`);
writing (assembling an export's manifest, sealing it with its digest) is
:mod:`export.core.manifest`'s, which builds to this schema; so the schema lives here alone. The
keys are documented in docs/export.md:

    schema_version  1
    kind            "resnet-deploy-artifact"
    format          one of FORMATS
    precision       the precision contract, one of CONTRACTS
    artifact        relative name of the main file (the .onnx or the .engine)
    files           [{"path", "sha256", "bytes", "role"}] - every file in the folder but this one
    model           ModelSpec.to_dict()
    class_names     list or null
    normalization   {"mean", "std", "layout", "pixel_scale", "color"}
    source          {"kind": "checkpoint"|"state_dict"|"seed", "path", "relative_path", "sha256",
                     "seed", ...}
    inputs/outputs  [{"name", "shape" ("batch" for the dynamic dim), "dtype"}]
    batch_range     {"min", "opt", "max"}
    opset           int
    fp16            the converter's report (FP16 formats) or null
    int8            {"flavour", "quantizer": report, "calibration": {...}, "max_accuracy_drop":
                    the gate's limit in points of top-1} (INT8 formats) or null
    tensorrt        the engine's build settings, its "built_from" naming one of its files (trt
                    format), or null
    gpu             {"name", "compute_capability"} for engines, else null
    versions        {"python", "torch", "onnx", "onnxruntime", "tensorrt" (null if absent)}
    parity          {"passed", "runs": [verdict per candidate runtime], "inputs": {...}}
    deploy          optional, written by resnet-plan: {"runtime", "precision", "settings",
                     "plan"}: how the artifact runs by default (load_artifact honours it)
    created         ISO 8601 UTC
    tool            {"name": "resnet-deploy", "version": export.__version__}
    manifest_sha256 sha256 of the manifest's own canonical JSON without this key and without
                    ``deploy`` (see :func:`export.core.manifest.manifest_digest`); absent in
                    older manifests

The typed shape is :class:`Manifest`, a ``TypedDict``: the JSON document itself, so nothing is
converted on the way in or out, and the type checker sees every key a reader uses. Everything a
reader relies on is checked by :func:`check_manifest` (types, ranges, file entries), so a damaged
or crafted manifest is one :class:`UserError` line naming the key, never a ``KeyError`` deep in a
runner.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, TypedDict, TypeGuard, cast

from .errors import UnknownModelError, UserError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
KIND = "resnet-deploy-artifact"
#: every artifact format the exporter writes, and the precision contract each one carries
FORMATS = ("onnx", "onnx-fp16", "onnx-int8", "trt")
#: the precision contracts an artifact can carry (bf16 is an execution setting of an fp32 one)
CONTRACTS = ("fp32", "fp16", "int8")
SOURCE_KINDS = ("checkpoint", "state_dict", "seed")
IO_DTYPES = ("float32", "float16")
REQUIRED_KEYS = ("schema_version", "kind", "format", "precision", "artifact", "files", "model",
                 "source", "inputs", "outputs", "batch_range", "versions", "parity", "created",
                 "tool")
#: The largest batch an artifact may promise and the largest input side. 4096 is far beyond any
#: serving batch or ResNet input in use (224-1024), yet small enough that the numbers stay
#: meaningful: a batch of 4096 224x224 RGB images is 2.5 GB of input alone, a 4096x4096 image
#: ~10 GB of eager activations. Beyond that an export can only exhaust memory (docs/export.md).
MAX_BATCH = 4096
MAX_INPUT_SIZE = 4096
#: A manifest is a few tens of kB; refuse to read anything much larger into memory.
MAX_MANIFEST_BYTES = 16 << 20
#: The manifest's digest of its own content. ``deploy`` is left out of it: the planner adds that
#: section after export (and may replace it), which is not an edit of what the export recorded.
DIGEST_KEY = "manifest_sha256"
UNSEALED_KEYS = (DIGEST_KEY, "deploy")


def _fail(where: Path, key: str, problem: str) -> UserError:
    return UserError(f"{where}: {key} {problem}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in string.hexdigits for c in value)


def relative_name(value: Any) -> bool:
    """A plain relative file name inside the folder: no absolute path, no '..', not empty."""
    if not isinstance(value, str) or not value or "\0" in value:
        return False
    path = Path(value)
    return not path.is_absolute() and ".." not in path.parts and value not in (".", "./")


def check_manifest(data: Any, where: Path) -> Manifest:
    """Check the types and values of every key a reader uses; the first problem is one line."""
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise UserError(f"{where} is not a resnet-deploy artifact manifest")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{where} has schema_version {_short(data.get('schema_version'))}; "
                        f"this release reads {SCHEMA_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise UserError(f"{where} lacks {', '.join(missing)}")
    if data["format"] not in FORMATS:
        raise UserError(f"{where}: unknown format {_short(data['format'])}")
    if data["precision"] not in CONTRACTS:
        raise _fail(where, "precision", f"must be one of {', '.join(CONTRACTS)}, got "
                                        f"{_short(data['precision'])}")
    _check_files(data, where)
    _check_model(data, where)
    _check_source(data["source"], where)
    for key in ("inputs", "outputs"):
        _check_io(data[key], key, where)
    _check_batch_range(data["batch_range"], where)
    if data.get("class_names") is not None and not (
            isinstance(data["class_names"], list)
            and all(isinstance(c, str) for c in data["class_names"])):
        raise _fail(where, "class_names", "must be a list of strings or null")
    if data.get("opset") is not None and not _is_int(data["opset"]):
        raise _fail(where, "opset", f"must be an integer, got {_short(data['opset'])}")
    for key in ("fp16", "int8", "gpu", "normalization"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise _fail(where, key, f"must be an object or null, got {_short(data[key])}")
    versions = data["versions"]
    if not isinstance(versions, dict):
        raise _fail(where, "versions", f"must be an object, got {_short(versions)}")
    if not all(v is None or isinstance(v, str) for v in versions.values()):
        raise _fail(where, "versions", "values must be strings or null")
    gpu = data.get("gpu") or {}
    if not all(v is None or isinstance(v, str) for v in gpu.values()):
        raise _fail(where, "gpu", "values must be strings or null")
    _check_tensorrt(data, where)
    _check_parity(data["parity"], where)
    _check_deploy(data.get("deploy"), where)
    if not isinstance(data["created"], str):
        raise _fail(where, "created", f"must be an ISO 8601 string, got {_short(data['created'])}")
    if not isinstance(data["tool"], dict):
        raise _fail(where, "tool", f"must be an object, got {_short(data['tool'])}")
    if DIGEST_KEY in data and not _is_sha256(data[DIGEST_KEY]):
        raise _fail(where, DIGEST_KEY, f"must be 64 hex digits, got {_short(data[DIGEST_KEY])}")
    return cast(Manifest, data)  # every key a reader uses was checked above


#: what a deploy section may name as its precision (an FP32 artifact may deploy at bf16)
DEPLOY_PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def _check_deploy(deploy: Any, where: Path) -> None:
    """``deploy`` (optional, written by the deployment planner): how the artifact is to run."""
    if deploy is None:
        return
    if not isinstance(deploy, dict):
        raise _fail(where, "deploy", f"must be an object or null, got {_short(deploy)}")
    if not isinstance(deploy.get("runtime"), str) or not deploy["runtime"]:
        raise _fail(where, "deploy.runtime", f"must be a runtime name, got "
                                             f"{_short(deploy.get('runtime'))}")
    if deploy.get("precision") not in DEPLOY_PRECISIONS:
        raise _fail(where, "deploy.precision", f"must be one of {', '.join(DEPLOY_PRECISIONS)}, "
                                               f"got {_short(deploy.get('precision'))}")
    settings = deploy.get("settings", {})
    if not isinstance(settings, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, (str, int, float)))
            for k, v in settings.items()):
        raise _fail(where, "deploy.settings", "must be an object of option names to numbers, "
                                              "strings or null")


def _check_files(data: dict[str, Any], where: Path) -> None:
    files = data["files"]
    if not isinstance(files, list) or not files:
        raise _fail(where, "files", f"must be a non-empty list of file entries, got "
                                    f"{_short(files)}")
    seen = set()
    for i, entry in enumerate(files):
        key = f"files[{i}]"
        if not isinstance(entry, dict):
            raise _fail(where, key, f"must be an object with path, sha256, bytes, role, got "
                                    f"{_short(entry)}")
        name = entry.get("path")
        if not relative_name(name) or name == MANIFEST_NAME:
            raise _fail(where, f"{key}.path", f"must be a relative name inside the artifact "
                                              f"folder, got {_short(name)}")
        if name in seen:
            raise _fail(where, f"{key}.path", f"lists {name} twice")
        seen.add(name)
        if not _is_sha256(entry.get("sha256")):
            raise _fail(where, f"{key}.sha256", f"must be 64 hex digits, got "
                                                f"{_short(entry.get('sha256'))}")
        if "bytes" in entry and not (_is_int(entry["bytes"]) and entry["bytes"] >= 0):
            raise _fail(where, f"{key}.bytes", f"must be a size in bytes, got "
                                               f"{_short(entry['bytes'])}")
        if "role" in entry and not isinstance(entry["role"], str):
            raise _fail(where, f"{key}.role", f"must be a string, got {_short(entry['role'])}")
    if not isinstance(data["artifact"], str) or data["artifact"] not in seen:
        raise UserError(f"{where}: the artifact {_short(data['artifact'])} is not among its files")


def _check_model(data: dict[str, Any], where: Path) -> None:
    from .models import (
        ModelSpec,  # models imports torch; reading a manifest may not need it
    )

    model = data["model"]
    if not isinstance(model, dict) or not model:
        raise _fail(where, "model", f"must be a model description (an object), got "
                                    f"{_short(model)}")
    if not isinstance(model.get("name"), str):
        raise _fail(where, "model.name", f"must be a model name, got {_short(model.get('name'))}")
    for key, limit in (("num_classes", None), ("in_chans", None), ("input_size", MAX_INPUT_SIZE)):
        value = model.get(key)
        if key in model and not (_is_int(value) and value >= 1 and (limit is None
                                                                     or value <= limit)):
            bound = f" and at most {limit}" if limit else ""
            raise _fail(where, f"model.{key}", f"must be an integer >= 1{bound}, got "
                                               f"{_short(value)}")
    for key in ("mean", "std"):
        value = model.get(key)
        if key in model and not (isinstance(value, list) and value
                                 and all(_is_number(v) for v in value)):
            raise _fail(where, f"model.{key}", f"must be a list of numbers, got {_short(value)}")
    if "shortcut" in model and model["shortcut"] not in ("A", "B"):
        raise _fail(where, "model.shortcut", f"must be 'A' or 'B', got "
                                             f"{_short(model['shortcut'])}")
    try:
        ModelSpec.from_dict(model)
    except (UnknownModelError, ValueError, TypeError) as exc:
        raise _fail(where, "model", f"is not a valid model description: {exc}") from None


def _check_source(source: Any, where: Path) -> None:
    if not isinstance(source, dict):
        raise _fail(where, "source", f"must be an object, got {_short(source)}")
    kind = source.get("kind")
    if kind not in SOURCE_KINDS:
        raise _fail(where, "source.kind", f"must be one of {', '.join(SOURCE_KINDS)}, got "
                                          f"{_short(kind)}")
    if kind == "seed":
        if not _is_int(source.get("seed")):
            raise _fail(where, "source.seed", f"must be an integer, got "
                                              f"{_short(source.get('seed'))}")
        init = source.get("init_sha256")
        if init is not None and not _is_sha256(init):
            raise _fail(where, "source.init_sha256", f"must be 64 hex digits or null, got "
                                                     f"{_short(init)}")
    else:
        if not isinstance(source.get("path"), str) or not source["path"]:
            raise _fail(where, "source.path", f"must be the weights file's path, got "
                                              f"{_short(source.get('path'))}")
        if not _is_sha256(source.get("sha256")):
            raise _fail(where, "source.sha256", f"must be 64 hex digits, got "
                                                f"{_short(source.get('sha256'))}")
    relative = source.get("relative_path")  # optional: older manifests lack it
    if relative is not None and (not isinstance(relative, str) or not relative
                                 or Path(relative).is_absolute()):
        raise _fail(where, "source.relative_path", f"must be a relative path or null, got "
                                                   f"{_short(relative)}")


def _check_io(items: Any, key: str, where: Path) -> None:
    if not isinstance(items, list) or not items:
        raise _fail(where, key, f"must be a non-empty list of tensors, got {_short(items)}")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) \
                or not item["name"]:
            raise _fail(where, f"{key}[{i}]", f"must be an object with a name, got "
                                              f"{_short(item)}")
        if "dtype" in item and item["dtype"] not in IO_DTYPES:
            raise _fail(where, f"{key}[{i}].dtype", f"must be one of {', '.join(IO_DTYPES)}, got "
                                                    f"{_short(item['dtype'])}")
        if "shape" in item and not isinstance(item["shape"], list):
            raise _fail(where, f"{key}[{i}].shape", f"must be a list, got {_short(item['shape'])}")


def _check_batch_range(rng: Any, where: Path) -> None:
    if not isinstance(rng, dict):
        raise _fail(where, "batch_range", f"must be an object with min, opt, max, got "
                                          f"{_short(rng)}")
    for key in ("min", "opt", "max"):
        if not _is_int(rng.get(key)):
            raise _fail(where, f"batch_range.{key}", f"must be an integer, got "
                                                     f"{_short(rng.get(key))}")
    if not 1 <= rng["min"] <= rng["opt"] <= rng["max"] <= MAX_BATCH:
        raise _fail(where, "batch_range", f"must satisfy 1 <= min <= opt <= max <= {MAX_BATCH}, "
                                          f"got {rng['min']}:{rng['opt']}:{rng['max']}")


def _check_tensorrt(data: dict[str, Any], where: Path) -> None:
    trt = data.get("tensorrt")
    if data["format"] != "trt":
        if trt is not None and not isinstance(trt, dict):
            raise _fail(where, "tensorrt", f"must be an object or null, got {_short(trt)}")
        return
    if not isinstance(trt, dict):
        raise _fail(where, "tensorrt", f"must describe the engine's build, got {_short(trt)}")
    names = {f["path"] for f in data["files"]}
    if trt.get("built_from") not in names:
        raise _fail(where, "tensorrt.built_from", f"must name one of its files, got "
                                                  f"{_short(trt.get('built_from'))}")


def _check_parity(parity: Any, where: Path) -> None:
    if not isinstance(parity, dict):
        raise _fail(where, "parity", f"must be an object, got {_short(parity)}")
    if not isinstance(parity.get("passed"), bool):
        raise _fail(where, "parity.passed", f"must be true or false, got "
                                            f"{_short(parity.get('passed'))}")
    if "runs" in parity and not isinstance(parity["runs"], list):
        raise _fail(where, "parity.runs", f"must be a list, got {_short(parity['runs'])}")
    inputs = parity.get("inputs")
    if inputs is None:
        return
    if not isinstance(inputs, dict):
        raise _fail(where, "parity.inputs", f"must be an object, got {_short(inputs)}")
    real = inputs.get("real")
    if real is not None and not isinstance(real, dict):
        raise _fail(where, "parity.inputs.real", f"must be an object, got {_short(real)}")
    dataset = (real or {}).get("dataset")
    if dataset is not None and not isinstance(dataset, dict):
        raise _fail(where, "parity.inputs.real.dataset", f"must be an object or null, got "
                                                         f"{_short(dataset)}")


class FileEntry(TypedDict):
    path: str
    sha256: str
    bytes: int
    role: str


class Manifest(TypedDict, total=False):
    """An artifact's manifest.json as read (checked) or written; see the module docstring."""

    schema_version: int
    kind: str
    format: str
    precision: str
    artifact: str
    files: list[FileEntry]
    model: dict[str, Any]
    class_names: list[str] | None
    normalization: dict[str, Any]
    source: dict[str, Any]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    batch_range: dict[str, int]
    opset: int
    fp16: dict[str, Any] | None
    int8: dict[str, Any] | None
    tensorrt: dict[str, Any] | None
    gpu: dict[str, Any] | None
    versions: dict[str, Any]
    parity: dict[str, Any]
    deploy: dict[str, Any] | None
    created: str
    tool: dict[str, Any]
    manifest_sha256: str
