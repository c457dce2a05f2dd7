"""Prediction: classify images with any exported artifact, preprocessed exactly as in training.

``resnet-predict`` is :mod:`export.predict.cli`; :class:`Predictor` is the call behind it::

    from export.predict import Predictor

    with Predictor.load("artifacts/resnet20-digits-onnx") as predictor:
        top5 = predictor.predict_files(["digit.png"])[0]   # [Prediction(index, label, ...)]

Stands on the runtime (``load_artifact``) and training's data functions (``read_image``,
``preprocess``); nothing below imports it.
"""

from .predictor import FileResult, Prediction, Predictor
from .runtimes import runtime_choices

__all__ = ["FileResult", "Prediction", "Predictor", "runtime_choices"]
