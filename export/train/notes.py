"""The run's defaults line: which defaults the data (or ``--init-weights``) chose."""

from __future__ import annotations

from ..core.models import get_architecture
from .config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    EPOCH_BUDGET_IMAGES,
    FINE_TUNE_LR_FACTOR,
    MIN_STEPS_PER_EPOCH,
    OWN_DATA_MODEL,
    SMALL_DATA_OPTIMIZER,
    SMALL_STEM_MAX_INPUT,
    TrainConfig,
    small_data,
)


def default_notes(asked: TrainConfig, chosen: TrainConfig, image_size: int | None,
                  train_images: int | None) -> list[tuple[str, str]]:
    """What the defaults chose because of the data or of --init-weights: (phrase, option) pairs,
    e.g. ("input size 28 (the images are 28 px)", "--input-size")."""
    notes = []
    arch = get_architecture(chosen.model)
    if asked.model is None and chosen.model == OWN_DATA_MODEL:
        notes.append((f"{chosen.model} with {chosen.downsample} downsampling (your data)",
                      "--model"))
    if asked.jitter is None and asked.augment and chosen.jitter == "shift":
        notes.append(("whole-pixel shifts (the images are not upscaled)", "--jitter"))
    small = small_data(chosen.model, train_images, asked.init_weights)
    if asked.input_size is None and image_size is not None \
            and chosen.input_size != arch.input_size:
        how = ("" if chosen.input_size == image_size else
               f", {'upscaled' if chosen.input_size > image_size else 'downscaled'}")
        if small and (chosen.input_size or 0) < min(image_size, arch.input_size):
            how += " for small data: the small stem costs 4x the work at twice the side"
        notes.append((f"input size {chosen.input_size} (the images are {image_size} px{how})",
                      "--input-size"))
    if asked.stem is None and arch.kind == "imagenet" and chosen.stem == "small":
        notes.append((f"small stem (3x3 stride-1 conv1, no max-pool: inputs up to "
                      f"{SMALL_STEM_MAX_INPUT} px)", "--stem"))
    if small and asked.optimizer is None:
        notes.append((f"{SMALL_DATA_OPTIMIZER} (small data: {train_images:,} training images)",
                      "--optimizer"))
    if small and asked.epochs is None:
        notes.append((f"{chosen.epochs} epochs (small data)", "--epochs"))
    elif asked.epochs is None and chosen.epochs != DEFAULT_EPOCHS and train_images:
        notes.append((f"{chosen.epochs} epochs (about {EPOCH_BUDGET_IMAGES:,} images for "
                      f"{train_images:,} training images)", "--epochs"))
    if asked.batch_size is None and chosen.batch_size != DEFAULT_BATCH_SIZE:
        notes.append((f"batch {chosen.batch_size} (at least {MIN_STEPS_PER_EPOCH} steps per "
                      "epoch)", "--batch-size"))
    if asked.lr is None and (asked.init_weights or chosen.lr != DEFAULT_LR[chosen.optimizer]):
        why = [f"for batch {chosen.batch_size}"] if chosen.optimizer == "sgd" \
            and chosen.batch_size < DEFAULT_BATCH_SIZE else []
        if asked.init_weights:
            why.append(f"{1 / FINE_TUNE_LR_FACTOR:.0f}x lower for fine-tuning from "
                       "--init-weights")
        notes.append((f"lr {chosen.lr:g} ({', '.join(why)})", "--lr"))
    return notes
