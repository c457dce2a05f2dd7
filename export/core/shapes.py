"""The dynamic batch range an artifact promises, and the shapes that follow from it.

One small value type shared by the exporter (manifest), the TensorRT builder (optimization
profile), the parity gate (which batch sizes to test) and the runners (what input fits).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError
from .models import ModelSpec


@dataclass(frozen=True)
class BatchRange:
    """min <= opt <= max; TensorRT tunes its kernels for ``opt``."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not (1 <= self.min <= self.opt <= self.max):
            raise UserError(f"batch range must satisfy 1 <= min <= opt <= max, got "
                            f"{self.min}:{self.opt}:{self.max}")

    @classmethod
    def parse(cls, text: str) -> BatchRange:
        """``"1:8:32"`` (min:opt:max) or ``"1:32"`` (opt = max) or ``"8"`` (static 8)."""
        try:
            parts = [int(p) for p in text.split(":")]
        except ValueError:
            raise UserError(f"--batch-range wants MIN:OPT:MAX, e.g. 1:8:32, got {text!r}") from None
        if len(parts) == 1:
            parts = parts * 3
        elif len(parts) == 2:
            parts = [parts[0], parts[1], parts[1]]
        elif len(parts) != 3:
            raise UserError(f"--batch-range wants MIN:OPT:MAX, e.g. 1:8:32, got {text!r}")
        return cls(*parts)

    @classmethod
    def default_for(cls, spec: ModelSpec) -> BatchRange:
        """1:8:32 for ImageNet-sized models; 1:64:256 for the small-image ones (tiny per image)."""
        if spec.architecture.kind == "cifar":
            return cls(1, 64, 256)
        return cls(1, 8, 32)

    def __contains__(self, batch: object) -> bool:
        return isinstance(batch, int) and self.min <= batch <= self.max

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> BatchRange:
        return cls(int(data["min"]), int(data["opt"]), int(data["max"]))

    def parity_sizes(self) -> list[int]:
        """Batch sizes the gate tests: min, opt and max, each once (one size for a static
        range)."""
        return sorted({self.min, self.opt, self.max})

    def profile_shapes(self, spec: ModelSpec) -> tuple[tuple[int, ...], tuple[int, ...],
                                                         tuple[int, ...]]:
        """(min, opt, max) NCHW shapes for a TensorRT optimization profile."""
        chw = (spec.in_chans, spec.input_size, spec.input_size)
        return (self.min, *chw), (self.opt, *chw), (self.max, *chw)


def check_batch(shape: tuple[int, ...], expected_chw: tuple[int, int, int], batch: BatchRange,
                input_name: str) -> None:
    """Refuse an input that the artifact cannot take, with a message that says why."""
    want = f"(N, {', '.join(str(d) for d in expected_chw)}) with N in {batch.min}..{batch.max}"
    if len(shape) != 4 or tuple(shape[1:]) != tuple(expected_chw):
        raise ValueError(f"input shape {tuple(shape)} does not fit {input_name}: expected {want}")
    if shape[0] not in batch:
        raise ValueError(f"batch size {shape[0]} is outside {input_name}'s range: expected {want}")
