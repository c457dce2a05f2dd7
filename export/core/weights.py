"""Where the eager FP32 reference comes from: a checkpoint, a plain state dict, or a seed.

Every export needs one eager model: it is what gets exported and what the artifact is judged
against. The :class:`WeightsSource` record goes into the manifest, so ``resnet-export verify`` can
rebuild exactly the same model later (re-reading the file and checking its sha256, or replaying
the seed).

Fresh weights are seeded Kaiming weights made to behave like a trained network, because the gate
must judge the export, not the pathology of a random network:

- BatchNorm statistics are calibrated on seeded random inputs. Without that a fresh network in
  eval mode normalises nothing (running mean 0, variance 1) and activations grow with depth: a
  fresh ResNet-152 reaches about 4e8 at layer4, far past FP16's 65504.
- The last BatchNorm of every residual branch gets gamma = 1/sqrt(number of blocks) (SkipInit /
  Fixup style; torchvision's ``zero_init_residual`` is the gamma = 0 extreme). With gamma = 1 a
  random ResNet-101/152 is chaotic: 1e-3 relative noise on the input moves the logits by 40-66%
  of their spread, and FP32 eager itself differs from FP64 eager by 1e-3. FP16 rounding would
  then flip decisions for reasons that have nothing to do with the artifact. Scaled, the same
  noise moves the logits by about 1% and FP32 agrees with FP64 to 5e-6, as for a trained model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_checkpoint, model_from_checkpoint
from .errors import UserError
from .fileio import sha256_file
from .manifest import Manifest
from .models import BasicBlock, Bottleneck, ModelSpec, get_architecture

DEFAULT_SEED = 0
CALIBRATION_BATCHES = 2
CALIBRATION_BATCH_SIZE = 8


@dataclass
class SourceModel:
    """The eager reference and everything the manifest must say about where it came from."""

    model: nn.Module
    spec: ModelSpec
    source: dict[str, Any]  # the manifest's "source" section
    class_names: list[str] | None = None
    dataset: dict[str, Any] | None = None  # the checkpoint's dataset description, if any
    warnings: list[str] = field(default_factory=list)


def state_digest(model: nn.Module) -> str:
    """sha256 over the parameters and buffers (names, shapes, bytes): identifies weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy()
                      .tobytes())
    return digest.hexdigest()


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, spec: ModelSpec, seed: int,
                        batches: int = CALIBRATION_BATCHES,
                        batch_size: int = CALIBRATION_BATCH_SIZE) -> None:
    """Set every BatchNorm's running statistics from seeded N(0, 1) inputs (cumulative mean)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts the same
    generator = torch.Generator().manual_seed(seed + 1)
    model.train()
    try:
        for _ in range(batches):
            model(torch.randn(batch_size, spec.in_chans, spec.input_size, spec.input_size,
                              generator=generator))
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.eval()


def scale_residual_branches(model: nn.Module) -> float:
    """gamma = 1/sqrt(blocks) on the last BatchNorm of every residual branch; returns gamma."""
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    gamma = 1.0 / math.sqrt(len(blocks)) if blocks else 1.0
    with torch.no_grad():
        for block in blocks:
            last = block.bn3 if isinstance(block, Bottleneck) else block.bn2
            last.weight.fill_(gamma)
    return gamma


def fresh_source(spec: ModelSpec, seed: int = DEFAULT_SEED) -> SourceModel:
    """Seeded Kaiming weights, residual branches scaled, BatchNorm calibrated (module docstring)."""
    torch.manual_seed(seed)
    model = spec.build()
    init_digest = state_digest(model)
    gamma = scale_residual_branches(model)
    calibrate_batchnorm(model, spec, seed)
    source = {"kind": "seed", "seed": seed, "path": None, "sha256": None,
              "init_sha256": init_digest, "residual_gamma": gamma,
              "batchnorm_calibration": {"batches": CALIBRATION_BATCHES,
                                        "batch_size": CALIBRATION_BATCH_SIZE,
                                        "inputs": "N(0,1), torch.Generator seeded seed+1"}}
    warning = (f"no --checkpoint: exporting an UNTRAINED {spec.name} (seed {seed}; see "
               "docs/export.md, 'Fresh weights'); its predictions mean nothing")
    return SourceModel(model.eval(), spec, source, warnings=[warning])


def checkpoint_source(path: str | Path, name: str | None = None, num_classes: int | None = None,
                      in_chans: int | None = None, input_size: int | None = None) -> SourceModel:
    """A resnet-train checkpoint (carries its spec) or a plain state dict (the options say what).

    For a checkpoint, options that contradict its description are refused and ``input_size``
    re-targets the export. For a plain state dict the model name is required; the class count
    and input channels default to what ``fc.weight`` and ``conv1.weight`` say.
    """
    ckpt = load_checkpoint(path)
    notes: list[str] = []
    if ckpt.spec is not None:
        spec = ckpt.spec
        asked = {"model": name and get_architecture(name).name, "num_classes": num_classes,
                 "in_chans": in_chans}
        held = {"model": spec.name, "num_classes": spec.num_classes, "in_chans": spec.in_chans}
        clash = [f"{k} {asked[k]} (it holds {held[k]})" for k in asked
                 if asked[k] is not None and asked[k] != held[k]]
        if clash:
            raise UserError(f"{path} is a {_describe(spec)} checkpoint; it does not fit "
                            + ", ".join(clash))
        if input_size is not None and input_size != spec.input_size:
            notes.append(f"exporting at input size {input_size} (trained at {spec.input_size})")
            spec = dataclasses.replace(spec, input_size=input_size)
        kind = "checkpoint"
    else:
        if name is None:
            raise UserError(f"{path} is a plain state dict: say which model it is with --depth "
                            "or --model")
        state = ckpt.state_dict
        if num_classes is None and "fc.weight" in state and state["fc.weight"].ndim == 2:
            num_classes = int(state["fc.weight"].shape[0])
        stem = None
        if "conv1.weight" in state and state["conv1.weight"].ndim == 4:
            if in_chans is None:
                in_chans = int(state["conv1.weight"].shape[1])
            # an ImageNet model trained with the small stem has a 3x3 conv1 (7x7 otherwise)
            if get_architecture(name).kind == "imagenet" and state["conv1.weight"].shape[-1] == 3:
                stem = "small"
        spec = ModelSpec.create(name, num_classes=num_classes or 1000, in_chans=in_chans or 3,
                                input_size=input_size, stem=stem)
        kind = "state_dict"
    model = model_from_checkpoint(ckpt, spec)
    source = {"kind": kind, "path": str(Path(path).resolve()), "sha256": ckpt.sha256,
              "seed": None}
    return SourceModel(model, spec, source, ckpt.class_names, ckpt.meta.get("dataset"), notes)


def _describe(spec: ModelSpec) -> str:
    return f"{spec.name} ({spec.num_classes} classes, {spec.in_chans} input channels)"


def with_relative_path(source: dict[str, Any], artifact_folder: Path) -> dict[str, Any]:
    """The manifest's ``source`` with ``relative_path``: the weights file relative to the artifact
    folder (None without a file). ``path`` stays absolute: it finds the weights from anywhere on
    this machine; the relative form finds them when the folders moved together (a project copied
    elsewhere)."""
    relative = None
    if source.get("path"):
        try:
            relative = os.path.relpath(source["path"], Path(artifact_folder).resolve())
        except ValueError:  # another drive (Windows): no relative form
            relative = None
    return {**source, "relative_path": relative}


def source_from_manifest(manifest: Manifest, folder: str | Path | None = None
                         ) -> SourceModel:
    """Rebuild the reference a manifest describes, refusing weights that are not the same.

    The weights are looked for at ``source.path``, then (where that is gone) at
    ``source.relative_path`` from the artifact ``folder``; their sha256 must match either way.
    """
    spec = ModelSpec.from_dict(manifest["model"])
    source = manifest["source"]
    if source["kind"] == "seed":
        rebuilt = fresh_source(spec, int(source["seed"]))
        recorded = source.get("init_sha256")
        if recorded and rebuilt.source["init_sha256"] != recorded:
            raise UserError(f"seed {source['seed']} no longer gives the weights this artifact was "
                            f"exported from (this torch {torch.__version__} initialises "
                            f"differently from torch {manifest['versions'].get('torch')})")
        rebuilt.class_names = manifest.get("class_names")
        rebuilt.warnings = []
        return rebuilt
    path = Path(source["path"])
    if not path.is_file() and folder is not None and source.get("relative_path"):
        moved = Path(folder) / source["relative_path"]
        path = moved if moved.is_file() else path
    if not path.is_file():
        also = (f" (nor at {Path(folder) / source['relative_path']})"
                if folder is not None and source.get("relative_path") else "")
        raise UserError(f"the source weights {path} are gone{also}; verify needs them to "
                        "rebuild the eager reference")
    digest = sha256_file(path)
    if digest != source["sha256"]:
        raise UserError(f"the source weights {path} changed since export (sha256 {digest[:12]}, "
                        f"manifest says {source['sha256'][:12]})")
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, spec)
    return SourceModel(model, spec, dict(source), ckpt.class_names or manifest.get("class_names"),
                       ckpt.meta.get("dataset"))
