"""``resnet-train``: train a ResNet on the embedded digits data or the user's own data."""

from __future__ import annotations

from typing import Any

import click
from click.core import ParameterSource

from ..core.cli import (
    OneLineCommand,
    OneLineUsageError,
    model_options,
    one_line_errors,
    print_family_table,
    resolve_model_name,
)
from ..core.hardware import thread_problem
from ..core.models import DOWNSAMPLING
from ..data.layouts import detect_layout
from .config import (
    BOUNDS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_MODEL,
    DEFAULT_VAL_FRACTION,
    DIGITS_TEST_FRACTION,
    EPOCH_BUDGET_IMAGES,
    FINE_TUNE_LR_FACTOR,
    JITTERS,
    MIN_DEFAULT_BATCH_SIZE,
    MIN_STEPS_PER_EPOCH,
    OWN_DATA_DOWNSAMPLE,
    OWN_DATA_MODEL,
    OWN_DATA_TEST_FRACTION,
    RESUME_CHANGES,
    SMALL_DATA_EPOCHS,
    SMALL_DATA_IMAGES,
    SMALL_DATA_INPUT,
    SMALL_STEM_MAX_INPUT,
    TrainConfig,
    bound_problem,
)
from .loop import run_training

DEFAULTS = TrainConfig()


def bounded(option: str) -> click.ParamType:
    """The click type of a numeric option: its range from :data:`BOUNDS` (shown in --help),
    finite numbers only (``nan`` and ``inf`` are refused), and the reason for the range in the
    error, so a bad value is one ``Error:`` line with exit status 2."""
    bound = BOUNDS[option]
    base = click.IntRange if bound.kind is int else click.FloatRange
    plain = click.INT if bound.kind is int else click.FLOAT

    class Bounded(base):  # type: ignore[misc, valid-type]
        def convert(self, value: Any, param: click.Parameter | None,
                    ctx: click.Context | None) -> Any:
            number = plain.convert(value, param, ctx)
            problem = bound_problem(option, number)
            if problem is None and option in ("threads", "workers"):  # tied to this machine
                problem = thread_problem(f"--{option}", int(number))
            if problem:
                self.fail(problem, param, ctx)
            return number

    return Bounded(bound.lo, bound.hi, min_open=bound.lo_open, max_open=bound.hi_open)


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"],
                                                     "show_default": True})
@model_options(default=f"{OWN_DATA_MODEL} with {OWN_DATA_DOWNSAMPLE} downsampling on your "
                       f"folder or arrays; {DEFAULT_MODEL} on the digits, MNIST and CIFAR")
@click.option("--data", type=click.Path(), default=None,
              help="A folder with one sub-folder of PNG/JPEG images per class, an .npz file "
                   "with arrays x (N x H x W [x C]) and y (N), or MNIST / Fashion-MNIST / "
                   "KMNIST / EMNIST / CIFAR-10 / CIFAR-100 as torchvision or Keras store them "
                   "(the root, dataset or raw folder, or mnist.npz), tested on their own test "
                   "split. [default: the embedded scikit-learn digits]")
@click.option("--epochs", type=bounded("epochs"), default=None,
              help=f"Epochs to train. [default: {DEFAULT_EPOCHS}, or fewer on a large training "
                   f"split: about {EPOCH_BUDGET_IMAGES:,} images, at least 2; "
                   f"{SMALL_DATA_EPOCHS} for resnet18..152 on small data]")
@click.option("--batch-size", type=bounded("batch_size"), default=None,
              help=f"Images per step and per process. [default: {DEFAULT_BATCH_SIZE}; on a "
                   f"small training split less, for {MIN_STEPS_PER_EPOCH} steps per epoch, at "
                   f"least {MIN_DEFAULT_BATCH_SIZE}]")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default=None,
              help="SGD with Nesterov momentum 0.9, or AdamW. [default: sgd; adamw for "
                   f"resnet18..152 from scratch on up to {SMALL_DATA_IMAGES:,} training images]")
@click.option("--lr", type=bounded("lr"), default=None,
              help="Peak learning rate. [default: 0.1 for sgd (x batch / 64 below 64), "
                   f"0.001 for adamw; {1 / FINE_TUNE_LR_FACTOR:.0f}x lower with "
                   "--init-weights]")
@click.option("--weight-decay", type=bounded("weight_decay"), default=None,
              help="Weight decay (not on BatchNorm or biases). [default: 5e-4 sgd, 0.05 adamw]")
@click.option("--warmup-epochs", type=bounded("warmup_epochs"), default=None,
              help="Linear warm-up before the cosine decay. [default: 1, or a tenth of the "
                   "default epochs where they are fewer than 10]")
@click.option("--label-smoothing", type=bounded("label_smoothing"),
              default=DEFAULTS.label_smoothing,
              help="Label smoothing of the training loss (0 turns it off).")
@click.option("--input-size", type=bounded("input_size"), default=None,
              help="Side length images are resized to. [default: the data's own size (at "
                   "least 16, at most the model's design size: 32 for resnet20..110, 224 for "
                   f"resnet18..152, {SMALL_DATA_INPUT} for them on small data); 16 on the 8x8 "
                   "digits]")
@click.option("--stem", type=click.Choice(["imagenet", "small"]), default=None,
              help="Stem of resnet18..152: imagenet (7x7 stride 2 + max-pool) or small (3x3 "
                   "stride 1, no max-pool). [default: small for inputs up to "
                   f"{SMALL_STEM_MAX_INPUT} px, else imagenet]")
@click.option("--augment/--no-augment", default=DEFAULTS.augment,
              help="Random jitter of the training images (--jitter; flips only with --hflip).")
@click.option("--jitter", type=click.Choice(JITTERS), default=None,
              help="affine: small rotations, shifts and scaling (resampled); shift: "
                   "whole-pixel shifts up to 1/8 of the side. [default: shift for your own "
                   "images at their own size or smaller; affine where upscaled, and for the "
                   "digits, MNIST and CIFAR]")
@click.option("--downsample", type=click.Choice(DOWNSAMPLING), default=None,
              help="How resnet8..110 halve the map between stages: stride (the paper's "
                   "stride-2 convolutions) or avgpool (2x2 average pooling). [default: "
                   f"{OWN_DATA_DOWNSAMPLE} for the default model on your folder or arrays, else "
                   "stride]")
@click.option("--hflip/--no-hflip", default=DEFAULTS.hflip,
              help="Random horizontal flips of the training images: only for classes a mirror "
                   "image leaves the same (not digits, letters or left/right classes).")
@click.option("--val-fraction", type=bounded("val_fraction"), default=None,
              help=f"Share of the data held out for validation (picks best.pt). [default: "
                   f"{DEFAULT_VAL_FRACTION}]")
@click.option("--test-fraction", type=bounded("test_fraction"), default=None,
              help="Share of the data held out for the final test (not for datasets with a "
                   f"test split of their own, such as MNIST and CIFAR). [default: "
                   f"{OWN_DATA_TEST_FRACTION} of --data, {DIGITS_TEST_FRACTION} of the digits]")
@click.option("--seed", type=bounded("seed"), default=DEFAULTS.seed,
              help="Seeds the split, initialisation, shuffling and augmentation.")
@click.option("--init-weights", type=click.Path(), default=None, metavar="FILE",
              help="Start from these weights (a torchvision state dict or a resnet-train "
                   "checkpoint), or 'imagenet': torchvision's published ImageNet weights of "
                   "resnet18..152 (from the torch hub cache, else downloaded; sha256 checked). "
                   "A classifier of another size is replaced.")
@click.option("--out", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Run folder. [default: artifacts/train/<model>-<data>, numbered -2, -3... "
                   "when taken]")
@click.option("--overwrite", is_flag=True, help="Start a new run in an --out that holds one.")
@click.option("--resume", type=click.Path(), default=None, metavar="RUN",
              help="Continue the run in this folder (or from this last.pt) where it stopped "
                   "(Ctrl-C, SIGTERM or --max-steps: the exact command is printed); "
                   "only --epochs, --device, --workers, --threads, --max-steps and --progress "
                   "may change.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=DEFAULTS.device,
              help="auto takes CUDA when available (with mixed precision and channels_last).")
@click.option("--workers", type=bounded("workers"), default=DEFAULTS.workers,
              help="DataLoader worker processes (0 loads in the training process).")
@click.option("--threads", type=bounded("threads"), default=DEFAULTS.threads,
              help="CPU threads per process; 0 picks the idle cores (or OMP_NUM_THREADS).")
@click.option("--max-steps", type=bounded("max_steps"), default=None,
              help="Stop after this many optimiser steps in this invocation (smoke tests); "
                   "--resume goes on from that step, within its epoch.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bars. [default: only when stderr is a terminal]")
@click.option("--list-models", is_flag=True, expose_value=False, is_eager=True,
              callback=print_family_table, help="Print the model family table and exit.")
@one_line_errors
def main(depth: int | None, model: str | None, resume: str | None, out: str | None,
         overwrite: bool, progress: bool | None, **options: Any) -> None:
    """Train a ResNet and write a checkpoint that resnet-export understands.

    \b
    resnet-train                                  resnet20 on the embedded digits
    resnet-train --data my_images/ --depth 18     your folder, one sub-folder per class
    resnet-train --data train.npz --epochs 30     arrays x (N x H x W [x C]) and y (N)
    resnet-train --data data/ --depth 18          data/MNIST/raw as torchvision left it
    resnet-train --resume artifacts/train/resnet20-digits --epochs 30
    torchrun --nproc_per_node=2 -m export.train.cli ...   DistributedDataParallel

    The run folder gets best.pt (best validation accuracy; resnet-export --checkpoint takes
    it), last.pt (for --resume), metrics.jsonl, curves.png and summary.json (test accuracy,
    per-class accuracy, confusion matrix).
    """
    ctx = click.get_current_context()
    given = [name for name in ctx.params
             if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE,
                                                   ParameterSource.ENVIRONMENT)]
    if resume is not None:
        fixed = [n for n in given if n not in (*RESUME_CHANGES, "resume", "progress")]
        if fixed:
            flags = ", ".join("--" + n.replace("_", "-") for n in fixed)
            raise OneLineUsageError(f"--resume continues the saved run, so {flags} cannot "
                                    "change; only --epochs, --device, --workers, "
                                    "--threads, --max-steps and --progress can")
        changes = {n: options[n] for n in RESUME_CHANGES if n in given}
        run_training(None, resume=resume, changes=changes, echo=click.echo, progress=progress)
        return
    if "test_fraction" in given and options["data"] is not None \
            and detect_layout(options["data"]) is not None:
        raise OneLineUsageError(f"--test-fraction does not apply to {options['data']}: the "
                                "dataset's own test split is the test split")
    # no model named: the default follows the data (config.default_model)
    config = TrainConfig(**options) if depth is None and model is None else \
        TrainConfig(model=resolve_model_name(depth, model), **options)
    run_training(config, out=out, overwrite=overwrite, echo=click.echo, progress=progress)


if __name__ == "__main__":
    main(prog_name="resnet-train")
