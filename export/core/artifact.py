"""An artifact folder as every reader sees it: the manifest's schema, reading and file checks.

The exporter writes manifests (:mod:`export.manifest`); the runtime's loader, ``verify`` and the
benchmark read them through this module only, so the schema is checked in one place. The keys are
documented in docs/export.md:

    schema_version  1
    kind            "resnet-deploy-artifact"
    format          one of FORMATS
    precision       the precision contract, one of PRECISIONS
    artifact        relative name of the main file (the .onnx or the .engine)
    files           [{"path", "sha256", "bytes", "role"}] - every file in the folder but this one
    model           ModelSpec.to_dict()
    class_names     list or null
    normalization   {"mean", "std", "layout", "pixel_scale", "color"}
    source          {"kind": "checkpoint"|"state_dict"|"seed", "path", "sha256", "seed", ...}
    inputs/outputs  [{"name", "shape" ("batch" for the dynamic dim), "dtype"}]
    batch_range     {"min", "opt", "max"}
    opset           int
    fp16            the converter's report (FP16 formats) or null
    int8            {"flavour", "quantizer": report, "calibration": {...}} (INT8 formats) or null
    tensorrt        build settings (trt format) or null
    gpu             {"name", "compute_capability"} for engines, else null
    versions        {"python", "torch", "onnx", "onnxruntime", "tensorrt" (null if absent)}
    parity          {"passed", "runs": [verdict per candidate runtime], "inputs": {...}}
    created         ISO 8601 UTC
    tool            {"name": "resnet-deploy", "version": export.__version__}

Everything a reader relies on is checked by :func:`read_manifest` (types, ranges, file entries),
so a damaged or crafted manifest is one :class:`UserError` line naming the key, never a
``KeyError`` deep in a runner. Every file an artifact lists is opened through
:func:`artifact_file`, which refuses a path (or a symbolic link) that leads out of the folder.

Replacing an artifact folder (the exporter's last step) is :func:`replace_folder`; what a killed
replacement leaves behind is put right by :func:`recover_interrupted`, which every export, verify
and load calls first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import string
from pathlib import Path
from typing import Any

from .errors import UnknownModelError, UserError
from .fileio import exchange_paths, process_alive, sha256_file

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
KIND = "resnet-deploy-artifact"
#: every artifact format the exporter writes, and the precision contract each one carries
FORMATS = ("onnx", "onnx-fp16", "onnx-int8", "trt")
PRECISIONS = ("fp32", "fp16", "int8")
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
#: Leftovers of a killed export beside ``<out>``: its staging folder and the previous artifact.
STAGING_SUFFIX = ".partial"
FAILED_SUFFIX = ".FAILED"


def _fail(where: Path, key: str, problem: str) -> UserError:
    return UserError(f"{where}: {key} {problem}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in string.hexdigits for c in value)


def _relative_name(value: Any) -> bool:
    """A plain relative file name inside the folder: no absolute path, no '..', not empty."""
    if not isinstance(value, str) or not value or "\0" in value:
        return False
    path = Path(value)
    return not path.is_absolute() and ".." not in path.parts and value not in (".", "./")


def check_manifest(data: Any, where: Path) -> dict[str, Any]:
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
    if data["precision"] not in PRECISIONS:
        raise _fail(where, "precision", f"must be one of {', '.join(PRECISIONS)}, got "
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
    for key in ("fp16", "gpu", "normalization"):
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
    if not isinstance(data["created"], str):
        raise _fail(where, "created", f"must be an ISO 8601 string, got {_short(data['created'])}")
    if not isinstance(data["tool"], dict):
        raise _fail(where, "tool", f"must be an object, got {_short(data['tool'])}")
    return data


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
        if not _relative_name(name) or name == MANIFEST_NAME:
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
    from .models import ModelSpec  # models imports torch; reading a manifest may not need it

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


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def manifest_path(folder: str | Path) -> Path:
    folder = Path(folder)
    return folder / MANIFEST_NAME if folder.is_dir() or not folder.suffix else folder


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Load and check a manifest; every problem is one :class:`UserError` line.

    ``folder`` is the artifact folder (or its manifest.json). The manifest must be a plain file
    of the folder: a symbolic link that leads elsewhere is refused, as is anything too large to
    be a manifest.
    """
    folder = Path(folder)
    path = manifest_path(folder)
    if not os.path.lexists(path):
        raise UserError(f"no {MANIFEST_NAME} in {folder}: not an artifact folder")
    root = path.parent.resolve()
    resolved = path.resolve()
    if not _inside(resolved, root):
        raise UserError(f"{path} is a link to {resolved}, outside the artifact folder; refused")
    if not resolved.is_file():
        raise UserError(f"{path} is not a regular file: not an artifact folder")
    try:
        if resolved.stat().st_size > MAX_MANIFEST_BYTES:
            raise UserError(f"{path} is {resolved.stat().st_size / 1e6:.0f} MB: too large to be "
                            "an artifact manifest")
        data = json.loads(resolved.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else \
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is not valid JSON ({reason})") from None
    return check_manifest(data, path)


def artifact_file(folder: str | Path, name: Any) -> Path:
    """The real path of a file an artifact lists, refusing anything that leaves the folder.

    A listed name must be relative and stay inside the folder once every symbolic link is
    resolved (a link to ``/etc/passwd`` or to a file beside the folder is refused), and must be a
    regular file (not a folder, FIFO or device).
    """
    folder = Path(folder)
    if not _relative_name(name):
        raise UserError(f"manifest lists {name!r}, which is outside the artifact folder")
    root = folder.resolve()
    path = folder / name
    resolved = path.resolve()
    if not _inside(resolved, root):
        raise UserError(f"{path} is a link to {resolved}, outside the artifact folder; refused")
    if not resolved.is_file():
        what = "missing" if not os.path.lexists(path) else "not a regular file"
        raise UserError(f"{path} is {what} (listed in {MANIFEST_NAME})")
    return resolved


def verify_files(folder: str | Path, manifest: dict[str, Any]) -> None:
    """Every listed file exists inside the folder and has the recorded sha256 (tampering,
    truncation or a link out of the folder -> error)."""
    folder = Path(folder)
    for entry in manifest["files"]:
        path = artifact_file(folder, entry["path"])
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise UserError(f"sha256 mismatch for {folder / entry['path']}: {digest[:16]}..., "
                            f"manifest says {entry['sha256'][:16]}... (the file changed after "
                            "export)")


def _onnx_tensors(graph: Any) -> Any:
    """Every TensorProto of a graph: initializers, node attributes, and those of subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Any) -> Any:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _onnx_tensors(attr.g)
            for sub in attr.graphs:
                yield from _onnx_tensors(sub)


def check_onnx_file(folder: str | Path, path: Path, manifest: dict[str, Any]) -> None:
    """An ONNX file of the artifact whose external data (if any) is one of the artifact's own
    listed files: never an absolute path, never outside the folder, never unchecked.

    Checked here rather than left to the runtime: whether ONNX Runtime refuses a ``../``
    location depends on its version.
    """
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: a damaged file
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path} is not a readable ONNX file ({text})") from None
    listed = {entry["path"] for entry in manifest["files"]}
    tensors = [*_onnx_tensors(proto.graph),
               *(t for function in proto.functions for t in _node_tensors(function.node))]
    for tensor in tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        if not _relative_name(location):
            raise UserError(f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, "
                            "outside the artifact folder; refused")
        resolved = artifact_file(folder, location)
        relative = resolved.relative_to(Path(folder).resolve()).as_posix()
        if relative not in listed:
            raise UserError(f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, "
                            f"which {MANIFEST_NAME} does not list (so nothing checks it); "
                            "refused")


# ---------------------------------------------------------------------------------------------
# Whose folder is it?
# ---------------------------------------------------------------------------------------------


def owned_artifact(folder: str | Path) -> dict[str, Any]:
    """The manifest of ``folder`` if the folder is provably an artifact this tool wrote.

    Provably ours: a valid manifest of our schema, and nothing in the folder but the files it
    lists and manifest.json itself, all plain files (no links, no sub-folders). Anything else
    raises :class:`UserError` with the reason: such a folder is never replaced or deleted.
    """
    folder = Path(folder)
    if os.path.islink(folder / MANIFEST_NAME):
        raise UserError(f"its {MANIFEST_NAME} is a symbolic link")
    manifest = read_manifest(folder)
    listed = {entry["path"] for entry in manifest["files"]} | {MANIFEST_NAME}
    for entry in os.scandir(folder):
        if entry.name not in listed:
            raise UserError(f"{entry.name} is not one of its manifest's files")
        if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            raise UserError(f"{entry.name} is not a plain file")
    return manifest


def enclosing_artifact(path: str | Path) -> Path | None:
    """The nearest folder above ``path`` that holds a resnet-deploy manifest, if any."""
    resolved = Path(path).resolve()
    for parent in resolved.parents:
        candidate = parent / MANIFEST_NAME
        try:
            if not candidate.is_file() or candidate.stat().st_size > MAX_MANIFEST_BYTES:
                continue
            data = json.loads(candidate.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            continue
        if isinstance(data, dict) and data.get("kind") == KIND:
            return parent
    return None


# ---------------------------------------------------------------------------------------------
# Replacing a folder, and putting right what a killed replacement left
# ---------------------------------------------------------------------------------------------


def staging_prefix(out: Path) -> str:
    """``.<name>.<pid>-``: the staging folder's name says which process is writing it."""
    return f".{out.name}.{os.getpid()}-"


def _replaced_name(out: Path) -> Path:
    return out.with_name(f".{out.name}.replaced-{os.getpid()}")


def _leftover(entry_name: str, out_name: str) -> tuple[str, int] | None:
    """("partial" | "replaced", pid) for a leftover of an export to ``out_name``, else None."""
    head = f".{out_name}."
    if not entry_name.startswith(head):
        return None
    rest = entry_name[len(head):]
    match = re.fullmatch(r"replaced-(\d+)", rest)
    if match:
        return "replaced", int(match.group(1))
    match = re.fullmatch(r"(\d+)-[A-Za-z0-9_]+" + re.escape(STAGING_SUFFIX), rest)
    if match:
        return "partial", int(match.group(1))
    return None


def recover_interrupted(out: str | Path) -> list[str]:
    """Put right what a killed export left beside ``out``; returns what was done, in words.

    Only leftovers of processes that are no longer running are touched (another export may be
    writing right now):

    - ``.<out>.replaced-<pid>``, the previous artifact moved aside by a replacement that could
      not swap the folders in one step: renamed back to ``out`` if ``out`` is missing (the
      replacement was killed half-way), else deleted (it was killed after the new one was in);
    - ``.<out>.<pid>-XXXX.partial``, a staging folder: deleted.
    """
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    notes: list[str] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return notes
    for entry in entries:
        found = _leftover(entry.name, out.name)
        if found is None or not entry.is_dir(follow_symlinks=False):
            continue
        kind, pid = found
        if process_alive(pid):
            continue
        path = Path(entry.path)
        try:
            if kind == "replaced" and not os.path.lexists(out):
                os.replace(path, out)
                notes.append(f"restored {out} from an export that was interrupted while "
                             "replacing it")
            elif kind == "replaced":
                owned_artifact(path)  # only ever delete what is provably an artifact
                shutil.rmtree(path)
                notes.append(f"removed {path.name}, left by an interrupted export")
            else:
                shutil.rmtree(path)
                notes.append(f"removed {path.name}, left by an interrupted export")
        except (OSError, UserError):
            continue
    return notes


def replace_folder(staging: Path, out: Path) -> None:
    """Move the finished ``staging`` folder to ``out``; a folder at ``out`` is replaced.

    Where the system can swap two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``),
    ``out`` always names a complete folder: the old one until the swap, the new one after, and
    the old one is deleted from the staging name. Elsewhere it takes two renames (``out`` aside
    to ``.<out>.replaced-<pid>``, staging to ``out``); a failure between them renames the old one
    back, and a kill between them is put right by :func:`recover_interrupted` at the next
    export, verify or load.
    """
    if not os.path.lexists(out):
        os.rename(staging, out)
        return
    if exchange_paths(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # it now holds the previous folder
        return
    old = _replaced_name(out)
    os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
