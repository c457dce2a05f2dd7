"""The data layer: every image the project reads goes through here.

sources  what a dataset is (the embedded digits, an image folder, an ``.npz`` file, a torchvision
         or Keras layout) and how to scan it; ``layouts`` reads the dataset formats
splits   seeded, stratified train / validation / test parts, decoded
pixels   one image file -> pixels, and the one ``preprocess`` (resize, channels, normalise)
npz      the one reader of ``.npz`` archives (the user's x/y files and Keras's datasets)
formats  idx files and CIFAR batches, one file at a time
pickles  CIFAR's pickles: a restricted unpickler whose result is bounded before use
"""

from .pixels import (
                     IMAGE_SUFFIXES,
                     channel_stats,
                     decode_image,
                     image_files,
                     normalise,
                     preprocess,
                     read_image,
                     resize_array,
                     to_channels,
)
from .sources import (
                     DEFAULT_TEST_FRACTION,
                     DEFAULT_VAL_FRACTION,
                     Scanned,
                     describe_source,
                     scan,
                     source_name,
)
from .splits import (
                     Labelled,
                     Split,
                     TrainingData,
                     describe_split,
                     indices_digest,
                     load_training_data,
                     reference_images,
                     split_images,
                     split_indices,
                     split_of,
)

__all__ = ["DEFAULT_TEST_FRACTION", "DEFAULT_VAL_FRACTION", "IMAGE_SUFFIXES", "Labelled",
           "Scanned", "Split", "TrainingData", "channel_stats", "decode_image", "describe_source",
           "describe_split", "image_files", "indices_digest", "load_training_data", "normalise",
           "preprocess", "read_image",
           "reference_images", "resize_array", "scan", "source_name", "split_images",
           "split_indices", "split_of", "to_channels"]
