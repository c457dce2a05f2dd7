"""Latency and throughput of the ResNet family per backend, precision and batch size."""
