"""Training: data, the loop, fitting someone else's weights, the run folder, plots and the CLI.

``resnet-train`` is :mod:`export.train.cli`; :func:`run_training` is the call behind it.
"""

from .config import TrainConfig
from .loop import TrainResult, run_training

__all__ = ["TrainConfig", "TrainResult", "run_training"]
