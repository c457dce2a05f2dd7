"""``resnet-predict``: classify image files with an exported artifact; a table or JSON."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..core.cli import (
    LazyChoice,
    OneLineCommand,
    OneLineUsageError,
    one_line_errors,
    thread_option,
)
from ..core.errors import BackendUnavailable, UserError, first_line, printable
from .predictor import FileResult, Predictor
from .runtimes import runtime_choices
from .scoring import Score, format_score, score

SCHEMA = "resnet-predict"
SCHEMA_VERSION = 1


def format_table(results: list[FileResult]) -> str:
    """One row per image: its path, then label and probability of each of its top-k classes
    (escaped for the terminal; the JSON document keeps every name exactly)."""
    k = max(len(r.top or []) for r in results)
    # names from the user's files and the artifact are escaped (printable): a control
    # character or bidirectional mark in them reaches the terminal as text, never as a command
    label_w = max(len(printable(p.label)) for r in results for p in r.top or [])
    cell_w = label_w + 7  # label, a space, "100.0%"
    path_w = max(5, *(len(printable(r.path)) for r in results))
    header = f"{'image':<{path_w}}" + "".join(f"   {f'top-{i + 1}':<{cell_w}}" for i in range(k))
    lines = [header.rstrip(), "-" * len(header.rstrip())]
    for r in results:
        cells = "".join(f"   {printable(p.label):<{label_w}} {p.probability:>6.1%}"
                        for p in r.top or [])
        lines.append(f"{printable(r.path):<{path_w}}{cells}")
    return "\n".join(lines)


def document(artifact: Path, predictor: Predictor, top: int, results: list[FileResult],
             errors: list[FileResult], scored: Score | None = None) -> dict[str, Any]:
    """The ``--json`` output (schema ``resnet-predict``, version 1; docs/predict.md)."""
    m = predictor.manifest
    spec = predictor.spec
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "artifact": {"path": str(artifact), "format": m["format"], "precision": m["precision"],
                     "model": spec.name, "num_classes": spec.num_classes,
                     "trained": predictor.trained},
        "runtime": predictor.runner.label,
        "preprocessing": {"input_size": spec.input_size, "in_chans": spec.in_chans,
                          "mean": list(spec.mean), "std": list(spec.std)},
        "top_k": min(top, spec.num_classes),
        "results": [{"path": str(r.path), "top": [p.to_dict() for p in r.top or []],
                     "converted": r.converted} for r in results],
        "errors": [{"path": str(r.path), "error": r.error} for r in errors],
        "evaluation": scored.to_dict() if scored is not None else None,
    }


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path),
                metavar="IMAGE_OR_FOLDER...")
@click.option("--top-k", "top", type=click.IntRange(min=1), default=5, show_default=True,
              help="Classes shown per image (at most the model's classes).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document (schema resnet-predict, version 1) instead of the "
                   "table.")
@click.option("--runtime", type=LazyChoice(runtime_choices), default="auto",
              show_default=True,
              help="What runs the artifact: auto = as its manifest's deploy section says "
                   "(resnet-plan's choice), else its own runtime (ONNX Runtime on the CPU for "
                   "ONNX files, TensorRT for engines); onnxruntime, onnxruntime-cuda, openvino "
                   "(the openvino extra), tensorrt (engines).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per call, within the artifact's batch range [default: its opt].")
@click.option("--threads", type=thread_option("--threads"), default=None,
              help="CPU threads for ONNX Runtime / OpenVINO [default: the runtime's choice].")
@one_line_errors
def main(artifact: Path, images: tuple[Path, ...], top: int, as_json: bool, runtime: str,
         batch_size: int | None, threads: int | None) -> None:
    """Classify images with an exported artifact (any format resnet-export writes).

    IMAGE_OR_FOLDER: image files (any format Pillow reads) or folders, searched recursively for
    PNG/JPEG files as a training folder is. Each image is read, resized, converted to the
    model's channels (RGB to grayscale by ITU-R 601 luma, grayscale to RGB by replication: as
    training converts them) and normalised exactly as training does. A file that cannot be
    classified is one line on stderr; the others are still classified, and the exit status is 1.
    Where every image sits in a sub-folder named after one of the model's classes (a training
    folder's layout), the output also scores them: accuracy, per class, the confusion matrix
    and the files predicted wrong ("evaluation" in --json).

    \b
    resnet-predict artifacts/resnet20-digits-onnx digit.png more_digits/
    resnet-predict artifacts/resnet20-digits-onnx-fp16 photos/ --top-k 3 --json
    resnet-predict artifacts/resnet20-trt photos/ --runtime onnxruntime
    """
    predictor = Predictor.load(artifact, runtime, threads)
    if batch_size is not None and batch_size not in predictor.batch:
        raise OneLineUsageError(f"--batch-size {batch_size} is outside {artifact}'s batch range "
                                f"{predictor.batch.min}..{predictor.batch.max}")
    click.echo(f"{printable(artifact)}: {printable(predictor.describe())}", err=True)
    if not predictor.trained:
        click.echo(f"warning: {printable(artifact)} was exported from UNTRAINED (seeded) "
                   "weights; its predictions mean nothing", err=True)
    started = time.perf_counter()
    try:
        predictor.runner.activate()
    except (UserError, BackendUnavailable):
        raise
    except Exception as exc:  # a runtime's own error: one line, not its stack
        raise UserError(f"{predictor.runner.label} could not load {artifact}: "
                        f"{first_line(exc)}") from None
    results: list[FileResult] = []
    errors: list[FileResult] = []
    with predictor:
        for result in predictor.iter_files(images, top, batch_size):
            if result.error is not None:
                click.echo(f"Error: {printable(result.error)}", err=True)
                errors.append(result)
            else:
                results.append(result)
    converted: dict[str, int] = {}
    for r in results:
        if r.converted:
            converted[r.converted] = converted.get(r.converted, 0) + 1
    for how, count in converted.items():
        click.echo(f"note: {count} image(s) converted {how} to fit the model, as training "
                   "converts them", err=True)
    scored = score(results, predictor.class_names) if results else None
    if as_json:
        click.echo(json.dumps(document(artifact, predictor, top, results, errors, scored),
                              indent=2))
    elif results:
        click.echo(format_table(results))
        if scored is not None:
            click.echo(format_score(scored))
    click.echo(f"{len(results)} image(s) classified in {time.perf_counter() - started:.2f}s"
               + (f", {len(errors)} failed" if errors else ""), err=True)
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
