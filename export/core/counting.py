"""Counting the family: parameters and multiply-accumulates, and the table ``--list-models``
prints from them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .models import default_spec, get_architecture, model_names


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int, in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass on one image, from torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model.eval()
    x = torch.zeros(1, in_chans, input_size, input_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


@dataclass
class FamilyRow:
    name: str
    block: str
    layers: tuple[int, ...]
    input_size: int
    params: int
    macs: int


def family_table(num_classes: int = 1000, names: list[str] | None = None) -> list[FamilyRow]:
    """Name, block, layers, parameters and MACs at the design input size, for each member."""
    rows = []
    for name in names or model_names():
        arch = get_architecture(name)
        spec = default_spec(name, num_classes if arch.kind == "imagenet" else None)
        model = spec.build()
        rows.append(FamilyRow(arch.name, arch.block.__name__, arch.layers, arch.input_size,
                              count_parameters(model),
                              count_macs(model, arch.input_size, spec.in_chans)))
    return rows
