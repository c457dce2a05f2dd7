"""Starting from someone else's weights: fit a torchvision-format state dict to this model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..core.checkpoint import load_checkpoint, load_state_into
from ..core.errors import UserError
from ..core.pretrained import IMAGENET, imagenet_weights
from .config import TrainConfig, default_model


def adapt_init_weights(model: nn.Module, state: dict[str, torch.Tensor],
                       source: str) -> list[str]:
    """Load fine-tuning weights, fitting the classifier and stem to this model; returns notes.

    A classifier (``fc``) of another size is replaced by the model's fresh one. A stem (``conv1``)
    for another channel count is converted: RGB -> grayscale sums the three kernels (the response
    to a grey image replicated to RGB), grayscale -> RGB spreads the kernel over three channels.
    A 7x7 ImageNet-stem ``conv1`` for a model with the small 3x3 stem (or the other way round)
    is replaced by the model's fresh one.
    """
    own = model.state_dict()
    state, notes = dict(state), []
    if "fc.weight" in state and state["fc.weight"].shape != own["fc.weight"].shape:
        notes.append(f"new classifier: {state['fc.weight'].shape[0]} -> "
                     f"{own['fc.weight'].shape[0]} classes")
        state["fc.weight"], state["fc.bias"] = own["fc.weight"], own["fc.bias"]
    stem = state.get("conv1.weight")
    want = own["conv1.weight"].shape
    if stem is not None and stem.ndim == 4 and stem.shape[0] == want[0] \
            and stem.shape[2:] != want[2:] and {stem.shape[-1], want[-1]} == {3, 7}:
        # the ImageNet stem's 7x7 conv1 and the small stem's 3x3 one: the rest still fits
        state["conv1.weight"] = own["conv1.weight"]
        notes.append(f"new stem: the file's conv1 is {stem.shape[-2]}x{stem.shape[-1]}, this "
                     f"model's {'small' if want[-1] == 3 else 'ImageNet'} stem needs "
                     f"{want[-2]}x{want[-1]}, so conv1 starts fresh (--stem "
                     f"{'imagenet' if want[-1] == 3 else 'small'} keeps the file's)")
    elif stem is not None and stem.ndim == 4 and stem.shape != want \
            and stem.shape[0] == want[0] and stem.shape[2:] == want[2:]:
        have, need = stem.shape[1], want[1]
        if have == 3 and need == 1:
            state["conv1.weight"] = stem.sum(dim=1, keepdim=True)
        elif have == 1 and need == 3:
            state["conv1.weight"] = stem.repeat(1, 3, 1, 1) / 3.0
        else:
            raise UserError(f"{source}: its first convolution takes {have} channels, the data "
                            f"has {need}; only 1 <-> 3 channel conversion is supported")
        notes.append(f"stem converted from {have} to {need} input channel(s)")
    load_state_into(model, state, source)
    return notes


def load_init_weights(model: nn.Module, config: TrainConfig) -> list[str]:
    """``--init-weights``: a file, or ``imagenet`` for torchvision's published weights."""
    if config.init_weights is None:
        return []
    notes = []
    path = config.init_weights
    name = config.model or default_model(config.data)
    if path == IMAGENET:
        path = str(imagenet_weights(name))
        notes.append(f"torchvision's ImageNet weights {Path(path).name} (sha256 checked) "
                     f"from {Path(path).parent}")
    ckpt = load_checkpoint(path)
    if ckpt.spec is not None and ckpt.spec.name != name:
        raise UserError(f"--init-weights {ckpt.path} holds a {ckpt.spec.name}, but this run "
                        f"trains a {name}: pass --model {ckpt.spec.name}")
    try:
        return notes + adapt_init_weights(model, ckpt.state_dict, f"--init-weights {ckpt.path}")
    except UserError as exc:
        raise UserError(f"{exc} (training {config.model}: is --model right?)") from None
