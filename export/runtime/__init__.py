"""The runtime layer: one place for "run a model", whatever runs it.

One runner per runtime behind :class:`Runner` (activate / infer / compute, the input contract
checked once, the clock that times it), and :func:`load_artifact` (manifest -> runner). Imports
only the ground layer (:mod:`export.core`); the exporter, the benchmark and prediction all use it.
"""

from .base import InputContract, Runner
from .loader import load_artifact

__all__ = ["InputContract", "Runner", "load_artifact"]
