"""A Triton Inference Server model repository from gated artifacts: ``resnet-export triton-repo``.

Each artifact becomes ``<name>/config.pbtxt`` and ``<name>/1/model.onnx`` (or ``model.plan`` for
an engine). Everything in the config comes from the manifest and the runtime registry: the
backend is the Triton backend of the runtime the format runs on (the registry's
``triton_backend``: onnxruntime for ONNX, tensorrt for engines); another backend that runs the
format only where the gate judged one of its runtimes at the artifact's own precision (openvino),
with the backend's own settings (``triton_config``); dims and datatypes from the manifest's
I/O without the batch dimension, ``max_batch_size`` the batch range's max, dynamic batching
preferring the range's opt and max. The artifact is checked first as ``load_artifact`` checks
it (files' sha256, gate passed); each model folder is written under a temporary name and
renamed into place, and an existing folder is replaced only when it is provably ours.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.artifact import artifact_file, read_manifest, verify_files
from ..core.errors import BadOption, UserError
from ..runtime.registry import (
    RUNTIMES,
    RuntimeInfo,
    default_runtime,
    get_runtime,
    runtimes_for,
    triton_backends,
)

MARKER = "# written by resnet-export triton-repo"
TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64",
         "int32": "TYPE_INT32", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8"}
#: the strings a model name may hold: it becomes a folder and a URL segment
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def model_name(manifest: Mapping[str, Any]) -> str:
    """``<model>-<format>`` (resnet20-onnx, resnet50-trt): the name a served artifact gets."""
    return f"{manifest['model']['name']}-{manifest['format']}"


def check_name(name: str) -> str:
    if not name or not set(name) <= NAME_CHARS or name.startswith("."):
        raise BadOption(f"model name {name!r}: use letters, digits, '_', '.', '-' only")
    return name


def _runtimes(backend: str, manifest: Mapping[str, Any]) -> list[RuntimeInfo]:
    """The runtimes of the registry behind Triton's ``backend`` that run this artifact's file."""
    flavour = (manifest.get("int8") or {}).get("flavour")
    return [r for r in runtimes_for(manifest["format"], flavour, direct=True)
            if r.triton_backend == backend]


def judged_on(manifest: Mapping[str, Any], backend: str) -> bool:
    """Whether the gate ran a runtime of Triton's ``backend`` at the artifact's own precision
    and it passed."""
    return any(info.judged(run) and run.get("precision") == manifest["precision"]
               and run.get("passed")
               for info in _runtimes(backend, manifest)
               for run in manifest["parity"].get("runs") or [])


def choose_backend(manifest: Mapping[str, Any], backend: str) -> str:
    fmt = manifest["format"]
    own = get_runtime(default_runtime(fmt)).triton_backend
    if own is None:  # pragma: no cover - every registry runtime of a format maps to one
        raise BadOption(f"no Triton backend serves {fmt} artifacts")
    if backend == "auto" or backend == own:
        return own
    if not _runtimes(backend, manifest):
        raise BadOption(f"an artifact of format {fmt} cannot run on Triton's {backend} backend")
    if not judged_on(manifest, backend):
        raise BadOption(f"the {manifest['precision']} contract of this {fmt} artifact was not "
                        f"judged on {backend} at export; use the {own} backend")
    return backend


def backend_choices() -> tuple[str, ...]:
    """What ``--backend`` accepts: auto and every Triton backend of the registry."""
    return ("auto", *triton_backends())


def backend_device(backend: str) -> str:
    """``cpu`` where every runtime behind Triton's ``backend`` runs on the CPU, else ``gpu``."""
    devices = {r.device for r in runtimes_for_backend(backend)}
    return "cpu" if devices == {"cpu"} else "gpu"


def runtimes_for_backend(backend: str) -> list[RuntimeInfo]:
    """Every runtime of the registry that Triton serves with ``backend``."""
    return [r for r in RUNTIMES.values() if r.triton_backend == backend]


@dataclass(frozen=True)
class RepoOptions:
    backend: str = "auto"
    kind: str = "auto"  # KIND_GPU / KIND_CPU / auto (CPU for a backend of CPU runtimes only)
    instances: int = 1
    max_queue_delay_us: int = 2000


def model_config(manifest: Mapping[str, Any], name: str, opts: RepoOptions) -> dict[str, Any]:
    """Triton's model configuration (its JSON form) for the artifact."""
    backend = choose_backend(manifest, opts.backend)
    rng = manifest["batch_range"]
    kind = opts.kind if opts.kind != "auto" else backend_device(backend)

    def tensors(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for t in items:
            if t["dtype"] not in TYPES:
                raise UserError(f"{t['name']}: datatype {t['dtype']} has no Triton type here")
            out.append({"name": t["name"], "data_type": TYPES[t["dtype"]],
                        "dims": [int(d) for d in t["shape"][1:]]})
        return out

    config: dict[str, Any] = {
        "name": name, "backend": backend, "max_batch_size": int(rng["max"]),
        "input": tensors(manifest["inputs"]), "output": tensors(manifest["outputs"]),
        "dynamic_batching": {"preferred_batch_size": sorted({int(rng["opt"]), int(rng["max"])}),
                             "max_queue_delay_microseconds": opts.max_queue_delay_us},
        "instance_group": [{"count": opts.instances, "kind": f"KIND_{kind.upper()}"}],
        "version_policy": {"latest": {"num_versions": 1}},
    }
    for info in runtimes_for_backend(backend)[:1]:  # the backend's own settings
        config.update(copy.deepcopy(dict(info.triton_config)))
    return config


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value if value.startswith(("TYPE_", "KIND_")) else f'"{value}"'
    return str(value)


def _render(data: dict[str, Any], indent: int = 0) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    for key, value in data.items():
        if key == "parameters":  # a protobuf map: one entry per key
            for k, v in value.items():
                lines += [f"{pad}parameters {{", f'{pad}  key: "{k}"', f"{pad}  value {{",
                          *_render(v, indent + 2), f"{pad}  }}", f"{pad}}}"]
        elif isinstance(value, dict):
            lines += [f"{pad}{key} {{", *_render(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines += [f"{pad}{key} {{", *_render(item, indent + 1), f"{pad}}}"]
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_value(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_value(value)}")
    return lines


def config_text(config: dict[str, Any], manifest: Mapping[str, Any]) -> str:
    """``config.pbtxt``: the configuration in protobuf text format, with where it came from."""
    rng = manifest["batch_range"]
    head = [MARKER, (f"# {manifest['model']['name']} {manifest['format']} "
                     f"({manifest['precision']} contract), batch {rng['min']}..{rng['max']}")]
    if manifest["format"] == "trt":
        trt = manifest["versions"].get("tensorrt")
        gpu = (manifest.get("gpu") or {}).get("name", "its GPU")
        head.append(f"# engine built with TensorRT {trt} for {gpu}: the container's TensorRT "
                    "and GPU must match")
    return "\n".join(head + _render(config)) + "\n"


def _ours(folder: Path) -> bool:
    """A model folder this command wrote: its config starts with our marker, and it holds
    nothing but config.pbtxt and version 1's model file."""
    try:
        with open(folder / "config.pbtxt", encoding="utf-8") as fh:
            if not fh.readline().startswith(MARKER):
                return False
        entries = {e.name for e in os.scandir(folder)}
        inside = {e.name for e in os.scandir(folder / "1")}
    except OSError:
        return False
    return entries <= {"config.pbtxt", "1"} and inside <= {"model.onnx", "model.plan"}


def write_model(folder: Path, out: Path, opts: RepoOptions, name: str | None = None,
                overwrite: bool = False) -> Path:
    """One artifact -> ``out/<name>/``; returns that folder."""
    manifest = read_manifest(folder)
    if not manifest["parity"].get("passed"):
        raise UserError(f"refusing {folder}: its parity gate failed at export")
    verify_files(folder, manifest)
    name = check_name(name or model_name(manifest))
    config = model_config(manifest, name, opts)
    target = out / name
    if target.exists() and not (overwrite and _ours(target)):
        raise UserError(f"{target} exists" + (" and is not a model folder this command wrote"
                                              if overwrite else "; pass --overwrite to replace "
                                              "it"))
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
    try:
        (staging / "1").mkdir()
        model_file = "model.plan" if manifest["format"] == "trt" else "model.onnx"
        shutil.copyfile(artifact_file(folder, manifest["artifact"]), staging / "1" / model_file)
        (staging / "config.pbtxt").write_text(config_text(config, manifest), encoding="utf-8")
        os.chmod(staging, 0o755)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=out))
            os.rename(target, old / name)
            os.rename(staging, target)
            shutil.rmtree(old)
        else:
            os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def write_repository(folders: list[Path], out: Path, opts: RepoOptions,
                     names: list[str] | None = None, overwrite: bool = False) -> list[Path]:
    """Every artifact into ``out`` (names must not repeat); returns the model folders."""
    if names and len(names) != len(folders):
        raise BadOption(f"--name given {len(names)} time(s) for {len(folders)} artifact(s)")
    chosen = [check_name(n) for n in names] if names else [
        model_name(read_manifest(f)) for f in folders]
    if len(set(chosen)) != len(chosen):
        raise BadOption(f"two artifacts would both be named {chosen!r}; give --name for each")
    return [write_model(f, out, opts, n, overwrite) for f, n in zip(folders, chosen)]


__all__ = ["RepoOptions", "backend_choices", "backend_device", "check_name", "choose_backend",
           "config_text", "judged_on", "model_config", "model_name", "runtimes_for_backend",
           "write_model", "write_repository"]
