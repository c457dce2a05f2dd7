"""Building TensorRT engines, kept thin: ONNX file -> strongly typed network -> serialized engine.

Supports TensorRT 10.x and 11.x with one code path:

- The network is created with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``: precision comes
  from the ONNX graph's types. TensorRT 11 removed ``BuilderFlag.FP16`` (and all weak typing;
  the flag is still accepted there but ignored, as strong typing is always on); on 10.x we choose
  strong typing too rather than ``BuilderFlag.FP16``, so the engine computes in exactly the
  precision of the FP16 ONNX that the ONNX Runtime gate already judged, on both versions.
- ``EXPLICIT_BATCH`` is never set: it is ignored since 10.0 and gone from 11's enum.
- FP32 engines (``--trt-precision fp32``) are built from the FP32 ONNX with ``BuilderFlag.TF32``
  cleared, so they are true FP32 and meet the FP32 tolerance.
- A timing cache in the output folder is loaded before the build and saved after it; it is only
  reused when the previous manifest names the same TensorRT version and GPU.

Everything that does not need TensorRT itself (what is missing, whether a recorded engine fits
this machine, the profile shapes) is plain Python and unit-tested without a GPU. Running engines
is :mod:`export.runtime.tensorrt_runner`'s job.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import EngineIncompatible, UserError
from ..core.manifest import Manifest
from ..runtime.tensorrt_runner import GpuInfo, check_engine_compatible, require_tensorrt

DEFAULT_WORKSPACE = 4 << 30  # 4 GiB: ResNet-152 tactics need far less; a cap, not an allocation


def parse_size(text: str) -> int:
    """``"4G"``, ``"512M"``, ``"1.5GiB"`` or a plain number of MiB -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise UserError(f"--workspace wants a size such as 4G or 512M, got {text!r}")
    value, unit = float(match.group(1)), match.group(2).upper()
    factor = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
    size = int(value * factor)
    if size < (16 << 20):
        raise UserError(f"--workspace {text} is below 16 MiB; TensorRT would find few tactics")
    return size


def check_parse(parsed: bool, errors: list[str], name: str) -> None:
    """The parser failed if it returned false OR recorded any error (as Polygraphy judges it):
    ``parse_from_file`` can return true while ``num_errors`` > 0, and such a network is partial."""
    if parsed and not errors:
        return
    first = errors[0].splitlines()[0] if errors else "no error reported"
    raise UserError(f"TensorRT's ONNX parser rejected {name}: {len(errors)} error(s), first: "
                    f"{first}")


def network_flags(trt: Any) -> int:
    """STRONGLY_TYPED where the enum has it (10.x needs it; 11.x accepts and ignores it)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def timing_cache_reusable(previous_manifest: Manifest | None, trt_version: str | None,
                          gpu: GpuInfo | None) -> bool:
    """A cache is only worth loading on the TensorRT version and GPU that wrote it."""
    if not previous_manifest:
        return False
    try:
        check_engine_compatible(previous_manifest, trt_version, gpu)
    except EngineIncompatible:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Loader that builds: ONNX file -> serialized engine
# ---------------------------------------------------------------------------------------------


#: the three profile shapes of the input: (min, opt, max)
ProfileShapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class EngineSettings:
    """What one engine build is asked for (recorded in the manifest's ``tensorrt`` section).

    ``precision``: the artifact's contract ("fp32" clears TF32); ``workspace``: the builder's
    memory pool cap in bytes; ``timing_cache``: where the cache is read from (only when
    ``reuse_timing_cache`` and it exists) and written to after the build.
    """

    input_name: str
    profile_shapes: ProfileShapes
    precision: str
    workspace: int
    timing_cache: Path
    reuse_timing_cache: bool


def build_engine(onnx_path: Path, engine_path: Path, settings: EngineSettings,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Parse ``onnx_path`` into a strongly typed network and build ``engine_path``.

    Returns the build settings for the manifest's ``tensorrt`` section.
    """
    input_name, precision, workspace = settings.input_name, settings.precision, settings.workspace
    timing_cache = settings.timing_cache
    trt, _gpu = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    parsed = parser.parse_from_file(str(onnx_path))
    errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    check_parse(parsed, errors, onnx_path.name)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 would round FP32 convolutions to 10 bits

    profile = builder.create_optimization_profile()
    shape_min, shape_opt, shape_max = settings.profile_shapes
    profile.set_shape(input_name, shape_min, shape_opt, shape_max)
    config.add_optimization_profile(profile)

    reuse = settings.reuse_timing_cache and timing_cache.is_file()
    cache_bytes = timing_cache.read_bytes() if reuse else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, False):
        log("timing cache from the previous build does not fit; starting a new one")
        cache_bytes = b""
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)

    log(f"building TensorRT {trt.__version__} engine ({precision}, strongly typed, "
        f"profile {shape_min[0]}/{shape_opt[0]}/{shape_max[0]}); this takes a while")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError("TensorRT could not build the engine (its log above says why)")
    with open(engine_path, "wb") as fh:
        fh.write(memoryview(serialized))
    with open(timing_cache, "wb") as fh:
        fh.write(memoryview(config.get_timing_cache().serialize()))
    return {"version": trt.__version__, "strongly_typed": True,
            "network_flags": network_flags(trt), "tf32": precision != "fp32",
            "workspace_bytes": workspace, "built_from": onnx_path.name,
            "timing_cache": timing_cache.name, "timing_cache_reused": bool(cache_bytes),
            "profile": {"input": input_name, "min": list(shape_min), "opt": list(shape_opt),
                        "max": list(shape_max)}}


