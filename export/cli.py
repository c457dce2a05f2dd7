"""``resnet-export``: export a model to ONNX / FP16 / INT8 ONNX / TensorRT and gate it; verify an
artifact again; write a Triton model repository."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .convert.onnx_export import DEFAULT_OPSET
from .convert.triton_repo import backend_choices
from .core.cli import (
    DefaultCommand,
    DefaultGroup,
    LazyChoice,
    OneLineCommand,
    OneLineUsageError,
    model_options,
    one_line_errors,
    print_family_table,
    resolve_model_name,
    signals_as_interrupt,
)
from .core.errors import UserError
from .core.manifest import FORMATS, MAX_BATCH, MAX_INPUT_SIZE
from .core.shapes import BatchRange

#: Bounds of the options that size the model (docs/export.md, "Limits"). Classes: the fc layer
#: of a 2048-feature model at 100,000 classes is 819 MB, and a single-file ONNX must stay below
#: protobuf's 2 GB. Channels: 1024 covers hyperspectral inputs. Seeds: torch takes 64 bits.
MAX_CLASSES = 100_000
MAX_IN_CHANS = 1024
SEED_RANGE = (-(2**63), 2**63 - 2)  # the calibration seeds a generator with seed + 1
MAX_WORKSPACE = 1 << 40  # 1 TiB: more than any GPU's memory


class _Parsed(click.ParamType):
    """A click type from a parse function that raises UserError."""

    def __init__(self, name: str, parse: Any):
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self._parse(value)
        except UserError as exc:
            self.fail(str(exc), param, ctx)


def _parse_batch_range(text: str) -> BatchRange:
    batch = BatchRange.parse(text)
    if batch.max > MAX_BATCH:
        raise UserError(f"{text}: the largest batch is {MAX_BATCH}")
    return batch


def _parse_workspace(text: str) -> int:
    from .convert.tensorrt_build import parse_size

    try:
        size = parse_size(text)
    except (OverflowError, ValueError):  # float("9" * 400) is inf
        size = MAX_WORKSPACE + 1
    if size > MAX_WORKSPACE:
        raise UserError(f"--workspace {text} is above 1T; no GPU has that much memory")
    return size


@click.group(cls=DefaultGroup, default_command="build",
             context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Export a ResNet and prove the artifact gives the eager model's logits."""


@main.command("build", cls=DefaultCommand, hidden=True)
@model_options(default="resnet50")
@click.option("--list-models", is_flag=True, expose_value=False, is_eager=True,
              callback=print_family_table, help="Print the model family table and exit.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Weights: a resnet-train checkpoint (it says which model it is) or a plain "
                   "torchvision-format state dict (say the model with --depth/--model). Loaded "
                   "without executing code. Without it: seeded UNTRAINED weights, with a warning.")
@click.option("--num-classes", type=click.IntRange(min=1, max=MAX_CLASSES), default=None,
              help="Classes [default: the checkpoint's; 1000 ImageNet, 10 small-image].")
@click.option("--in-chans", type=click.IntRange(min=1, max=MAX_IN_CHANS), default=None,
              help="Input channels [default: the checkpoint's; 3 ImageNet, 1 small-image].")
@click.option("--fmt", "formats", type=click.Choice(list(FORMATS)),
              multiple=True, default=("onnx",), show_default=True,
              help="onnx: FP32 ONNX; onnx-fp16: FP16-typed ONNX; onnx-int8: INT8 QDQ ONNX "
                   "(calibrated); trt: TensorRT engine. Repeat it to write several formats from "
                   "one export.")
@click.option("--input-size", type=click.IntRange(min=8, max=MAX_INPUT_SIZE), default=None,
              help="Input side length [default: the model's, 224 or 32].")
@click.option("--batch-range", type=_Parsed("MIN:OPT:MAX", _parse_batch_range), default=None,
              help="Dynamic batch range, e.g. 1:8:32 [default 1:8:32 ImageNet, 1:64:256 "
                   "small-image].")
@click.option("--min-batch", type=click.IntRange(min=1, max=MAX_BATCH), default=None,
              help="Smallest batch.")
@click.option("--opt-batch", type=click.IntRange(min=1, max=MAX_BATCH), default=None,
              help="Batch TensorRT tunes for.")
@click.option("--max-batch", type=click.IntRange(min=1, max=MAX_BATCH), default=None,
              help="Largest batch.")
@click.option("--opset", type=click.IntRange(min=13), default=DEFAULT_OPSET, show_default=True,
              help="ONNX opset (20 is the newest TensorRT 10 reads).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder of one format [default: <out-dir>/<run>-<fmt>, e.g. "
                   "artifacts/resnet20-digits-onnx for artifacts/train/resnet20-digits/best.pt].")
@click.option("--out-dir", type=click.Path(path_type=Path), default=None,
              help="Parent folder of the artifacts, one <run>-<fmt> folder per --fmt "
                   "[default: artifacts].")
@click.option("--fp16-io", is_flag=True,
              help="FP16 inputs and outputs for FP16 artifacts [default: FP32 I/O, cast inside].")
@click.option("--trt-precision", type=click.Choice(["fp16", "fp32", "int8"]), default="fp16",
              show_default=True, help="Engine precision: fp16 builds from the FP16 ONNX, int8 "
                                      "from the TensorRT-flavour INT8 QDQ ONNX.")
@click.option("--int8-flavour", type=click.Choice(["cpu", "tensorrt"]), default="cpu",
              show_default=True, help="onnx-int8: cpu = uint8 activations (fastest on ONNX "
                                      "Runtime and OpenVINO); tensorrt = symmetric int8, zero "
                                      "points 0 (TensorRT's explicit quantization).")
@click.option("--calib-data", type=click.Path(path_type=Path), default=None,
              help="INT8 calibration images: a class-per-folder tree, an .npz or a dataset "
                   "layout [default: the checkpoint's training split].")
@click.option("--calib-count", type=click.IntRange(min=32, max=100_000), default=256,
              show_default=True, help="INT8 calibration images (seeded subset).")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]),
              default="minmax", show_default=True, help="INT8 range calibration method.")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0, max=100), default=None,
              help="INT8 gate: points of held-out top-1 the artifact may lose; it fails only "
                   "where the paired (McNemar) test shows the loss is real [default: 1.0].")
@click.option("--workspace", type=_Parsed("SIZE", _parse_workspace), default="4G",
              show_default=True, help="TensorRT workspace limit, e.g. 4G, 512M.")
@click.option("--seed", type=click.IntRange(*SEED_RANGE), default=0, show_default=True,
              help="Seed for fresh weights (no --checkpoint).")
@click.option("--keep-failed", is_flag=True,
              help="Keep an artifact that fails the gate as <out>.FAILED [default: delete it].")
@click.option("--overwrite", is_flag=True,
              help="Replace an artifact at --out that was exported from other weights (another "
                   "checkpoint, or seeded weights). Re-exporting the same weights needs no flag; "
                   "a folder that is not an artifact is never replaced.")
@one_line_errors
def build(depth: int | None, model: str | None, checkpoint: Path | None,
          num_classes: int | None, in_chans: int | None, formats: tuple[str, ...],
          input_size: int | None, batch_range: BatchRange | None, min_batch: int | None,
          opt_batch: int | None, max_batch: int | None, opset: int, out: Path | None,
          out_dir: Path | None, fp16_io: bool, trt_precision: str, int8_flavour: str,
          calib_data: Path | None, calib_count: int, calib_method: str,
          max_accuracy_drop: float | None, workspace: int, seed: int, keep_failed: bool,
          overwrite: bool) -> None:
    """Export a ResNet and prove the artifact gives the eager model's logits.

    \b
    resnet-export --depth 50 --fmt onnx        export ResNet-50 (fresh weights)
    resnet-export --checkpoint artifacts/train/resnet20-digits/best.pt --fmt onnx-fp16
    resnet-export --depth 50 --fmt trt         TensorRT FP16 engine (needs a GPU)
    resnet-export --depth 50 --fmt onnx --fmt onnx-fp16   both, from one export
    resnet-export --list-models                the family with parameters and MACs
    resnet-export verify artifacts/resnet50-onnx   re-run the gate on an existing artifact
    """
    from .pipeline import ExportRequest, export_artifacts
    from .request import check_options

    name = resolve_model_name(depth, model) if (depth is not None or model is not None) else None
    request = ExportRequest(
        fmt=formats[0], model=name, checkpoint=checkpoint, num_classes=num_classes,
        in_chans=in_chans, input_size=input_size, batch=batch_range,
        batch_parts=(min_batch, opt_batch, max_batch), opset=opset, out=out, io_fp16=fp16_io,
        trt_precision=trt_precision, workspace=workspace, seed=seed, keep_failed=keep_failed,
        int8_flavour=int8_flavour, calib_data=calib_data, calib_count=calib_count,
        calib_method=calib_method, max_accuracy_drop=max_accuracy_drop, out_dir=out_dir,
        overwrite=overwrite)
    try:
        check_options(request, list(formats))
    except UserError as exc:
        raise OneLineUsageError(str(exc)) from None
    with signals_as_interrupt():  # `kill`/`timeout`/hang-up: clean up like Ctrl-C
        export_artifacts(request, list(formats), echo=click.echo,
                         warn=lambda line: click.echo(line, err=True))


@main.command("verify", cls=OneLineCommand)
@click.argument("folder", type=click.Path(path_type=Path))
@one_line_errors
def verify(folder: Path) -> None:
    """Re-run the parity gate on an existing artifact folder (exit 1 if it fails).

    Checks every file's sha256 against manifest.json, rebuilds the eager reference from the
    recorded weights (their sha256 checked) or seed, and runs the same gate as the export.
    """
    from .pipeline import verify_artifact

    with signals_as_interrupt():
        verify_artifact(folder, echo=click.echo)
    click.echo(f"verified {folder}: PASS")


@main.command("triton-repo", cls=OneLineCommand)
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path),
                metavar="ARTIFACT...")
@click.option("--out", type=click.Path(path_type=Path), default=Path("model_repository"),
              show_default=True, help="The model repository folder.")
@click.option("--name", "names", multiple=True,
              help="Model name for each artifact, in order [default: <model>-<format>].")
@click.option("--backend", type=LazyChoice(backend_choices),
              default="auto", show_default=True,
              help="Triton backend (auto: tensorrt for engines, onnxruntime for ONNX; openvino "
                   "only where the gate judged OpenVINO at the artifact's precision).")
@click.option("--kind", type=click.Choice(["auto", "gpu", "cpu"]), default="auto",
              show_default=True, help="instance_group kind (auto: GPU, CPU for openvino).")
@click.option("--instances", type=click.IntRange(min=1, max=64), default=1, show_default=True,
              help="Model instances per device.")
@click.option("--overwrite", is_flag=True,
              help="Replace a model folder this command wrote before.")
@one_line_errors
def triton_repo(artifacts: tuple[Path, ...], out: Path, names: tuple[str, ...], backend: str,
                kind: str, instances: int, overwrite: bool) -> None:
    """Write a Triton model repository: <name>/config.pbtxt and <name>/1/model.onnx|plan."""
    from .convert.triton_repo import RepoOptions, write_repository

    written = write_repository(list(artifacts), out, RepoOptions(backend, kind, instances),
                               list(names), overwrite)
    for folder in written:
        click.echo(f"wrote {folder}/config.pbtxt")
