"""The description of a tiny served model (3 classes, 1 x 4 x 4 inputs, batches of 1 to 4) that
the serving tests build their stand-in models on."""

MANIFEST = {"model": {"name": "resnet20", "num_classes": 3, "in_chans": 1, "input_size": 4,
                      "shortcut": "A", "mean": [0.5], "std": [0.5], "stem": "small"},
            "batch_range": {"min": 1, "opt": 2, "max": 4}, "format": "onnx",
            "precision": "fp32", "class_names": ["a", "b", "c"],
            "inputs": [{"name": "images", "shape": ["batch", 1, 4, 4], "dtype": "float32"}],
            "outputs": [{"name": "logits", "shape": ["batch", 3], "dtype": "float32"}]}
