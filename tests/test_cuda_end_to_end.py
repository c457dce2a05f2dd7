"""CUDA paths of training and the torchvision interop, run where a GPU is (skipped elsewhere).

Training on CUDA uses mixed precision and channels_last; its checkpoint must still be a plain
FP32 checkpoint that reloads on the CPU, gives the same predictions, and exports through the
same parity gate as a CPU-trained one.
"""

import json

import numpy as np
import pytest
import torch

from export.core.checkpoint import load_checkpoint, model_from_checkpoint
from export.data import reference_images
from export.train import TrainConfig, run_training


@pytest.mark.cuda
def test_training_on_cuda_with_amp_reaches_the_bar_and_reloads_on_cpu(tmp_path):
    config = TrainConfig(epochs=15, device="cuda", seed=0)  # the default run, on the GPU
    result = run_training(config, out=tmp_path / "run", echo=lambda *_: None)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_top1"] >= 0.97

    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert all(t.device.type == "cpu" and t.dtype != torch.float16
               for t in ckpt.state_dict.values())
    cpu_model = model_from_checkpoint(ckpt)
    images = reference_images(ckpt.meta["dataset"], ckpt.spec, limit=1000)
    # FP32 on both sides: cuDNN's TF32 convolutions (on by default) would differ by ~3e-3.
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        cpu_logits = cpu_model(torch.from_numpy(images))
        trained = result.model.eval().float()
        device = next(trained.parameters()).device
        gpu_logits = trained(torch.from_numpy(images).to(device)).cpu()
    torch.testing.assert_close(cpu_logits, gpu_logits, atol=1e-3, rtol=1e-3)
    assert (cpu_logits.argmax(1) == gpu_logits.argmax(1)).float().mean() > 0.99


@pytest.mark.cuda
def test_export_of_a_cuda_trained_checkpoint_passes_the_gate(tmp_path):
    from click.testing import CliRunner

    from export.cli import main as export_cli

    run_training(TrainConfig(epochs=2, device="cuda", seed=1), out=tmp_path / "run",
                 echo=lambda *_: None)
    out = tmp_path / "onnx"
    result = CliRunner().invoke(export_cli, ["--checkpoint", str(tmp_path / "run" / "best.pt"),
                                             "--fmt", "onnx", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parity"]["passed"] is True
    assert np.isfinite(manifest["parity"]["runs"][0]["summary"]["max_abs_error"])
