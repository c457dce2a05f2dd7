"""Converters: a model or an ONNX file in, another artifact file out (ONNX, FP16 ONNX, INT8 QDQ
ONNX with its calibration, TensorRT engine)."""
