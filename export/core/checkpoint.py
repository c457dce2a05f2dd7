"""Checkpoints and weight files: saved atomically, loaded without executing code.

A checkpoint written by ``resnet-train`` is a dict of tensors and plain data:

    {"format": "resnet-deploy-checkpoint", "version": 1, "model": ModelSpec.to_dict(),
     "state_dict": {...}, "class_names": [...], "dataset": {...}, "train_config": {...},
     "metrics": {...}, "epoch": int, ...resume state...}

A plain torchvision-format state dict (``{"conv1.weight": ..., ...}``) is also accepted where
weights are asked for. Both are read with ``torch.load(weights_only=True)``, which refuses any
pickled object other than tensors and plain containers, so a hostile file cannot run code.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import torch
from torch import nn

from .errors import UnknownModelError, UserError
from .fileio import atomic_path, sha256_file
from .models import ModelSpec

CHECKPOINT_FORMAT = "resnet-deploy-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    """What a weights file holds, whichever of the two kinds it was."""

    path: Path
    sha256: str
    state_dict: dict[str, torch.Tensor]
    spec: ModelSpec | None = None  # None for a plain state dict: the caller must name the model
    class_names: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # everything else a checkpoint carried


def read_weights_file(path: str | os.PathLike) -> Any:
    """Load a torch file safely; every failure becomes one clear :class:`UserError`."""
    path = Path(path)
    # os.path (not Path) answers False rather than raising for a name too long to exist.
    if not os.path.exists(path):
        raise UserError(f"weights file not found: {path}")
    if os.path.isdir(path) and os.path.isfile(path / "best.pt"):
        raise UserError(f"{path} is a training run folder; did you mean {path / 'best.pt'}?")
    if not os.path.isfile(path):  # a folder, a FIFO (opening it would block), a device...
        raise UserError(f"weights path is not a regular file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        code_reason = _global_reference(exc)
        if code_reason:  # a class or function reference: loading it would run code
            raise UserError(f"refusing {path}: it holds objects that would execute code when "
                            f"loaded (only tensors and plain data are accepted) [{code_reason}]"
                            ) from None
        raise UserError(f"cannot read {path}: not a valid PyTorch weights file "
                        f"({_unpickler_reason(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - a crafted file can raise almost anything
        # Text, random bytes, an empty file or a zip that torch did not write make the
        # unpickler fail in many ways (KeyError, IndexError, struct.error, EOFError,
        # RuntimeError, BadZipFile...): every one of them means the same thing to the user.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise UserError(f"cannot read {path}: not a valid PyTorch weights file ({reason})"
                        ) from None


def _global_reference(exc: Exception) -> str | None:
    """The line of torch's weights-only refusal that names a GLOBAL (a class or function)."""
    return next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), None)


def _unpickler_reason(exc: Exception) -> str:
    """The one line of torch's long weights-only message that says what was wrong."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _is_tensor_dict(obj: Any) -> TypeGuard[dict[str, torch.Tensor]]:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a resnet-train checkpoint or a plain state dict (e.g. torchvision ImageNet weights)."""
    path = Path(path)
    obj = read_weights_file(path)
    digest = sha256_file(path)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        version = obj.get("version")
        if version != CHECKPOINT_VERSION:
            raise UserError(f"{path}: checkpoint version {version} is not supported "
                            f"(this release reads version {CHECKPOINT_VERSION})")
        try:
            spec = ModelSpec.from_dict(obj["model"])
        except (KeyError, TypeError, ValueError, UnknownModelError) as exc:
            raise UserError(f"{path}: checkpoint has a bad model description ({exc})") from None
        state = obj.get("state_dict")
        if not _is_tensor_dict(state):
            raise UserError(f"{path}: checkpoint has no state_dict of tensors")
        _check_fits(path, spec, state)
        class_names = _checked_class_names(path, obj.get("class_names"), spec)
        meta = {k: v for k, v in obj.items() if k not in ("model", "state_dict", "class_names")}
        _check_meta(path, meta)
        return Checkpoint(path, digest, state, spec, class_names, meta)
    # Common wrappers around a plain state dict.
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and _is_tensor_dict(obj.get(key)):
            obj = obj[key]
            break
    if _is_tensor_dict(obj):
        return Checkpoint(path, digest, obj)
    raise UserError(f"{path}: neither a resnet-train checkpoint nor a state dict of tensors")


def _check_fits(path: Path, spec: ModelSpec, state: dict[str, torch.Tensor]) -> None:
    """The description must say what the weights are: classes from fc, channels from conv1."""
    fc, stem = state.get("fc.weight"), state.get("conv1.weight")
    if fc is not None and fc.ndim == 2 and fc.shape[0] != spec.num_classes:
        raise UserError(f"{path}: its model description says {spec.num_classes} classes but "
                        f"its fc.weight has {fc.shape[0]} rows")
    if stem is not None and stem.ndim == 4 and stem.shape[1] != spec.in_chans:
        raise UserError(f"{path}: its model description says {spec.in_chans} input channels "
                        f"but its conv1.weight takes {stem.shape[1]}")


def _checked_class_names(path: Path, names: Any, spec: ModelSpec) -> list[str] | None:
    """None, or one distinct string per class of the model."""
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"{path}: class_names must be a list of strings, got "
                        f"{_describe_value(names)}")
    if len(names) != spec.num_classes:
        raise UserError(f"{path}: it lists {len(names)} class names but the model has "
                        f"{spec.num_classes} classes")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UserError(f"{path}: class_names repeats the class name {name!r}")
        seen.add(name)
    return names


#: the dataset dict's keys (``export.data.describe_source``): required ones, then optional
_DATASET_KEYS = {"kind": (str,), "seed": (int,), "val_fraction": (float, int),
                 "test_fraction": (float, int)}
_DATASET_OPTIONAL = {"path": (str, type(None)), "num_images": (int,)}


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
    """The plain-data entries other code reads: right types, sensible values, or one error."""
    dataset = meta.get("dataset")
    if dataset is not None:
        if not isinstance(dataset, dict):
            raise UserError(f"{path}: its dataset must be a dict, got {_describe_value(dataset)}")
        missing = [k for k in _DATASET_KEYS if k not in dataset]
        if missing:
            raise UserError(f"{path}: its dataset lacks {', '.join(missing)}")
        for key, types in {**_DATASET_KEYS, **_DATASET_OPTIONAL}.items():
            if key not in dataset:
                continue
            value = dataset[key]
            if key == "test_fraction" and value is None and dataset.get("kind") == "layout":
                continue  # a dataset layout brings its own test split
            ok = isinstance(value, types) and not isinstance(value, bool)
            if ok and key in ("seed", "num_images"):
                ok = value >= 0
            if ok and key.endswith("_fraction"):
                ok = 0.0 < value < 1.0
            if not ok:
                want = {"kind": "a string", "path": "a string or None",
                        "seed": "an integer >= 0", "num_images": "an integer >= 0"}.get(
                            key, "a number between 0 and 1")
                raise UserError(f"{path}: its dataset {key!r} must be {want}, got {value!r}")
    for key in ("metrics", "train_config"):
        if key in meta and meta[key] is not None and not isinstance(meta[key], dict):
            raise UserError(f"{path}: its {key} must be a dict, got "
                            f"{_describe_value(meta[key])}")
    epoch = meta.get("epoch")
    if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool)
                              or epoch < 0):
        raise UserError(f"{path}: its epoch must be an integer >= 0, got {epoch!r}")


def _describe_value(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def load_state_into(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly, turning a mismatch into a short message rather than a wall of keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
             for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} with wrong shape (e.g. {wrong[0]})")
        raise UserError(f"{source} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(state_dict)


def model_from_checkpoint(ckpt: Checkpoint, spec: ModelSpec | None = None) -> nn.Module:
    """Rebuild the network a checkpoint describes (or ``spec`` for a plain state dict)."""
    spec = spec or ckpt.spec
    if spec is None:
        raise UserError(f"{ckpt.path} is a plain state dict: name the model it belongs to")
    model = spec.build()
    load_state_into(model, ckpt.state_dict, str(ckpt.path))
    return model.eval()


def save_checkpoint(path: str | os.PathLike, model: nn.Module, spec: ModelSpec,
                    class_names: list[str] | None = None, **extra: Any) -> Path:
    """Write a checkpoint atomically; ``extra`` must be tensors and plain data only."""
    state = {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
               "model": spec.to_dict(), "state_dict": state,
               "class_names": list(class_names) if class_names is not None else None, **extra}
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer = _WriteErrors(fh)
        try:
            torch.save(payload, writer)  # type: ignore[arg-type]  # write and flush suffice
        except RuntimeError:
            # torch's writer reports a failed write (a full disk, a file size limit) as a
            # RuntimeError about stream positions: give the OSError that caused it instead.
            if writer.error is not None:
                raise writer.error from None
            raise
    return path


class _WriteErrors:
    """A binary file that remembers the OSError its last write raised (see save_checkpoint)."""

    def __init__(self, fh: Any):
        self._fh = fh
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self._fh.flush()


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind DistributedDataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
