"""The ground every other layer stands on: models, shapes, errors, files, checkpoints, manifests.

Nothing here imports from the layers above (runtime, train, the exporters, bench).
"""
