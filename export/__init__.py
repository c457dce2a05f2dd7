"""resnet-deploy: build, train and export the ResNet family, and prove every artifact matches."""

from .core.counting import count_macs, count_parameters
from .core.models import ModelSpec, build_model, model_names

__version__ = "0.1.0"
__all__ = ["ModelSpec", "build_model", "count_macs", "count_parameters", "model_names"]
