"""Serving: the Open Inference Protocol on Ray Serve (``resnet-serve``)."""
