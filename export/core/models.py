"""The ResNet family: ImageNet ResNets in torchvision's layout and the paper's small-image ResNets.

Everything is built through two private constructors (``_ResNet`` for 224x224 inputs and
``_CifarResNet`` for 32x32 inputs) and a table of architectures, so a name always means exactly
one network. Module names follow torchvision (conv1, bn1, layer1..4, downsample, fc), so a state
dict saved by torchvision loads here unchanged and the other way round.

The ImageNet models take a ``stem``: ``"imagenet"`` (torchvision's 7x7 stride-2 convolution and
3x3 stride-2 max-pool, which divide the input by 4 before the first stage) or ``"small"`` (a 3x3
stride-1 convolution and no max-pool: the common ResNet-18 variant for 28x28 / 32x32 images such
as MNIST and CIFAR). The small stem keeps every module name; only ``conv1.weight`` changes shape
(64 x C x 3 x 3), and ``maxpool`` becomes a parameter-free identity.

A :class:`ModelSpec` is the small, serialisable description that checkpoints and manifests carry:
``ModelSpec.from_dict(spec.to_dict()).build()`` rebuilds the same network.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .blocks import BasicBlock, Bottleneck, PadShortcut, conv1x1, conv3x3, init_weights
from .errors import UnknownModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: stems of the ImageNet models; the small-image ResNets always have the "small" one
STEMS = ("imagenet", "small")
#: how the small-image ResNets halve the feature map between stages: "stride" (the paper's
#: stride-2 convolution and a shortcut that keeps every other pixel) or "avgpool" (2x2 average
#: pooling before the stage, whose blocks then run at stride 1: four pixels averaged instead of
#: one kept, which measured better on small, noisy datasets: docs/training.md)
DOWNSAMPLING = ("stride", "avgpool")


# ---------------------------------------------------------------------------------------------
# The two constructors
# ---------------------------------------------------------------------------------------------


class _ResNet(nn.Module):
    """ResNet for ImageNet-sized inputs (He et al. 2015, torchvision layout)."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int],
                 num_classes: int = 1000, in_chans: int = 3, zero_init_residual: bool = False,
                 groups: int = 1, width_per_group: int = 64, stem: str = "imagenet"):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")
        self.inplanes = 64
        self.groups = groups
        self.base_width = width_per_group
        imagenet = stem == "imagenet"  # 7x7 stride 2, then max-pool stride 2: the input / 4
        self.conv1 = (nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
                      if imagenet else conv3x3(in_chans, 64))  # small: full resolution
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if imagenet else \
            nn.Identity()
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_weights(self, zero_init_residual)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int,
                    stride: int = 1) -> nn.Sequential:
        downsample: nn.Module | None = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, groups=self.groups, base_width=self.base_width)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class _CifarResNet(nn.Module):
    """The paper's 6n+2-layer ResNet for 32x32 inputs: a 3x3 stem, stages of 16/32/64 channels.

    ``downsample="avgpool"`` halves the map before layer2 and layer3 with a 2x2 average pool
    (the parameter-free ``pool``) and runs those stages at stride 1; the module names and the
    parameters are the same as the paper's network.
    """

    def __init__(self, n: int, num_classes: int = 10, in_chans: int = 3, shortcut: str = "A",
                 zero_init_residual: bool = False, downsample: str = "stride"):
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-pad) or 'B' (projection), "
                             f"got {shortcut!r}")
        if downsample not in DOWNSAMPLING:
            raise ValueError(f"downsample must be one of {', '.join(DOWNSAMPLING)}, "
                             f"got {downsample!r}")
        self.inplanes = 16
        self.shortcut = shortcut
        pooled = downsample == "avgpool"
        self.pool = nn.AvgPool2d(2) if pooled else nn.Identity()
        stride = 1 if pooled else 2
        self.conv1 = conv3x3(in_chans, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, n)
        self.layer2 = self._make_layer(32, n, stride=stride)
        self.layer3 = self._make_layer(64, n, stride=stride)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        init_weights(self, zero_init_residual)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample: nn.Module | None = None
        if stride != 1 or self.inplanes != planes:
            if self.shortcut == "A":
                downsample = PadShortcut(planes, stride)
            else:
                downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride),
                                           nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.pool(self.layer2(self.pool(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---------------------------------------------------------------------------------------------
# The family table and the public builders
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    """One row of the family: what a name means."""

    name: str
    kind: str  # "imagenet" or "cifar"
    block: type[BasicBlock] | type[Bottleneck]
    layers: tuple[int, ...]
    input_size: int  # the input side length the architecture was designed for
    groups: int = 1
    width_per_group: int = 64

    @property
    def depth(self) -> int:
        per_block = 2 if self.block is BasicBlock else 3
        return per_block * sum(self.layers) + 2

    @property
    def default_stem(self) -> str:
        return "imagenet" if self.kind == "imagenet" else "small"

    def construct(self, num_classes: int, in_chans: int, shortcut: str,
                  zero_init_residual: bool, stem: str | None = None,
                  downsample: str | None = None) -> nn.Module:
        stem = check_stem(self, stem)
        downsample = check_downsample(self, downsample)
        if self.kind == "cifar":
            return _CifarResNet(self.layers[0], num_classes, in_chans, shortcut, zero_init_residual,
                                downsample)
        return _ResNet(self.block, list(self.layers), num_classes, in_chans, zero_init_residual,
                       self.groups, self.width_per_group, stem)


def check_stem(arch: Architecture, stem: str | None) -> str:
    """``stem`` for ``arch`` (None: its own), or ValueError for one it cannot have."""
    if stem is None:
        return arch.default_stem
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")
    if arch.kind == "cifar" and stem != "small":
        raise ValueError(f"{arch.name} is a small-image ResNet: its stem is always the small "
                         "3x3 one (the stem option is for resnet18..152, resnext, wide_resnet)")
    return stem


def check_downsample(arch: Architecture, downsample: str | None) -> str:
    """``downsample`` for ``arch`` (None: the paper's "stride"), or ValueError."""
    if downsample is None:
        return "stride"
    if downsample not in DOWNSAMPLING:
        raise ValueError(f"downsample must be one of {', '.join(DOWNSAMPLING)}, "
                         f"got {downsample!r}")
    if arch.kind != "cifar" and downsample != "stride":
        raise ValueError(f"{arch.name} downsamples as torchvision's does: the downsample "
                         "option is for the small-image ResNets (resnet8..110)")
    return downsample


def _family() -> dict[str, Architecture]:
    rows = [
        Architecture("resnet18", "imagenet", BasicBlock, (2, 2, 2, 2), 224),
        Architecture("resnet34", "imagenet", BasicBlock, (3, 4, 6, 3), 224),
        Architecture("resnet50", "imagenet", Bottleneck, (3, 4, 6, 3), 224),
        Architecture("resnet101", "imagenet", Bottleneck, (3, 4, 23, 3), 224),
        Architecture("resnet152", "imagenet", Bottleneck, (3, 8, 36, 3), 224),
        Architecture("resnext50_32x4d", "imagenet", Bottleneck, (3, 4, 6, 3), 224, 32, 4),
        Architecture("wide_resnet50_2", "imagenet", Bottleneck, (3, 4, 6, 3), 224, 1, 128),
    ]
    rows += [Architecture(f"resnet{6 * n + 2}", "cifar", BasicBlock, (n, n, n), 32)
             for n in (1, 3, 5, 7, 9, 18)]
    return {a.name: a for a in rows}


ARCHITECTURES: dict[str, Architecture] = _family()


def model_names() -> list[str]:
    return list(ARCHITECTURES)


def get_architecture(name: str | int) -> Architecture:
    """Look a name up; ``"50"`` and ``50`` are accepted for ``"resnet50"``."""
    key = str(name).strip().lower()
    if key.isdigit():
        key = f"resnet{key}"
    try:
        return ARCHITECTURES[key]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {str(name)!r}; choose one of: {', '.join(ARCHITECTURES)}") from None


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network and feed it: travels in checkpoints and manifests."""

    name: str
    num_classes: int = 1000
    in_chans: int = 3
    input_size: int = 224
    shortcut: str = "A"  # small-image ResNets only: "A" zero-pad, "B" projection
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    # ImageNet models: "imagenet" (7x7/2 + max-pool) or "small" (3x3/1, no max-pool); small-image
    # ResNets: always "small". None (and a description without the field, as every one written
    # before it existed) means the architecture's own.
    stem: str | None = None
    # small-image ResNets: "stride" (the paper's) or "avgpool"; None (and a description without
    # the field, as every one written before it existed) means "stride"
    downsample: str | None = None

    def __post_init__(self) -> None:
        arch = get_architecture(self.name)
        object.__setattr__(self, "name", arch.name)
        object.__setattr__(self, "stem", check_stem(arch, self.stem))
        object.__setattr__(self, "downsample", check_downsample(arch, self.downsample))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.num_classes < 1 or self.in_chans < 1 or self.input_size < 1:
            raise ValueError("num_classes, in_chans and input_size must be positive")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"mean/std need {self.in_chans} values (one per input channel)")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            raise ValueError(f"mean/std must be finite numbers, got {list(self.mean)} / "
                             f"{list(self.std)}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive (it divides the input), got "
                             f"{list(self.std)}")
        if self.shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-pad) or 'B' (projection), got "
                             f"{self.shortcut!r}")

    @classmethod
    def create(cls, name: str, num_classes: int = 1000, in_chans: int = 3,
               input_size: int | None = None, mean: tuple[float, ...] | None = None,
               std: tuple[float, ...] | None = None, **layout: str | None) -> ModelSpec:
        """A spec with defaults that suit the architecture (input size, normalisation, stem).
        ``layout``: ``shortcut``, ``stem``, ``downsample`` (the architecture's own if not given)."""
        arch = get_architecture(name)
        if mean is None or std is None:
            mean, std = default_normalisation(in_chans)
        unknown = set(layout) - {"shortcut", "stem", "downsample"}
        if unknown:
            raise TypeError(f"unknown layout option(s): {', '.join(sorted(unknown))}")
        return cls(arch.name, num_classes, in_chans, input_size or arch.input_size,
                   layout.get("shortcut") or "A", tuple(mean), tuple(std), layout.get("stem"),
                   layout.get("downsample"))

    @property
    def architecture(self) -> Architecture:
        return get_architecture(self.name)

    def build(self, zero_init_residual: bool = False) -> nn.Module:
        return self.architecture.construct(self.num_classes, self.in_chans, self.shortcut,
                                           zero_init_residual, self.stem, self.downsample)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """The inverse of :meth:`to_dict`, checking every field's type (the dict may come from
        a file anyone could have written); a bad one raises ValueError."""
        if not isinstance(data, dict):
            raise ValueError(f"model description must be a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"model description has unknown fields: {sorted(map(str, unknown))}")
        if "name" not in data:
            raise ValueError("model description has no 'name'")
        for key in ("name", "shortcut", "downsample"):
            if key in data and not isinstance(data[key], str) and not (
                    key == "downsample" and data[key] is None):
                raise ValueError(f"{key} must be a string, got {data[key]!r}")
        for key in ("num_classes", "in_chans", "input_size"):
            if key in data and (not isinstance(data[key], int) or isinstance(data[key], bool)):
                raise ValueError(f"{key} must be an integer, got {data[key]!r}")
        for key in ("mean", "std"):
            value = data.get(key, ())
            if not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ValueError(f"{key} must be a list of numbers, got {value!r}")
        fields: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v)
                                  for k, v in data.items()}
        return cls(**fields)


def default_normalisation(in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet statistics for RGB; mid-grey centring for any other channel count."""
    if in_chans == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (0.5,) * in_chans, (0.5,) * in_chans


def default_spec(name: str, num_classes: int | None = None, in_chans: int | None = None,
                 input_size: int | None = None) -> ModelSpec:
    """THE defaults of a family member, for every command (train, export, bench, the family
    table): what "resnet20" means when a user names no checkpoint.

    ImageNet models: 1000 classes, RGB, 224x224. Small-image models: the shape of the embedded
    digits that ``resnet-train`` trains them on by default, 10 classes and 1 channel, at the
    paper's 32x32 (``in_chans=3`` gives the paper's CIFAR-10 network). Explicit values win.
    """
    arch = get_architecture(name)
    small = arch.kind == "cifar"
    return ModelSpec.create(arch.name, num_classes=num_classes or (10 if small else 1000),
                            in_chans=in_chans or (1 if small else 3), input_size=input_size)


def build_model(name: str, num_classes: int = 1000, in_chans: int = 3, shortcut: str = "A",
                zero_init_residual: bool = False, stem: str | None = None,
                downsample: str | None = None) -> nn.Module:
    """Build a family member by name ("resnet50", "resnet20", or a bare depth such as "50").

    ``stem="small"`` gives an ImageNet model the 3x3 stride-1 stem without max-pool;
    ``downsample="avgpool"`` a small-image ResNet average pooling between stages.
    """
    return get_architecture(name).construct(num_classes, in_chans, shortcut, zero_init_residual,
                                            stem, downsample)


def _thin(name: str) -> Callable[..., nn.Module]:
    def builder(**kwargs: Any) -> nn.Module:
        return build_model(name, **kwargs)
    builder.__name__ = name
    builder.__doc__ = f"Build {name} (see :func:`build_model` for the keyword arguments)."
    return builder


resnet18 = _thin("resnet18")
resnet34 = _thin("resnet34")
resnet50 = _thin("resnet50")
resnet101 = _thin("resnet101")
resnet152 = _thin("resnet152")
resnext50_32x4d = _thin("resnext50_32x4d")
wide_resnet50_2 = _thin("wide_resnet50_2")
resnet8 = _thin("resnet8")
resnet20 = _thin("resnet20")
resnet32 = _thin("resnet32")
resnet44 = _thin("resnet44")
resnet56 = _thin("resnet56")
resnet110 = _thin("resnet110")
