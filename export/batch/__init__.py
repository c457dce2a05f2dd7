"""Offline batch prediction (``resnet-batch``): a source of any size -> Parquet, every image
exactly once, on this machine's processes or on Ray Data.

sources      folders, lists of paths, WebDataset tars, Parquet -> deterministic shards
decode       items -> model input (the one read and preprocess), in worker processes
shards       a shard's output tables and their commit (temporary name, fsync, rename, marker)
job          the job's identity, job.json, the output folder's checks and lock
local        the one-machine engine: decode workers overlapped with batched inference
distributed  the same job on Ray Data (through the one adapter, raydata)
run, report  the job from start to end; the labelled-folder score
"""
