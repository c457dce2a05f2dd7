"""resnet-export as a user types it: defaults, weights files, one-line errors, verify."""

import json
import os

import pytest
import torch

from export.core.checkpoint import save_checkpoint
from export.core.models import ModelSpec
from export.runtime.tensorrt_runner import cuda_gpu, tensorrt_version

from artifact_fixtures import run  # cwd: the shared fixture of the same module
from cli_helpers import artifact_listing

FAST = ["--batch-range", "1:2:4"]  # small parity batches keep these tests quick




def one_line_error(result):
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    return lines[0]


def tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_default_export_prints_the_table_and_writes_the_default_folder(cwd):
    result = run("--depth", "20", *FAST)
    assert result.exit_code == 0, result.output
    assert "UNTRAINED resnet20" in result.stderr  # fresh weights are announced
    assert "parity: onnxruntime[CPU,fp32] vs torch[cpu,fp32]" in result.stdout
    assert "real b=4" in result.stdout and "random b=1" in result.stdout
    assert "verdict: PASS" in result.stdout
    folder = cwd / "artifacts/resnet20-onnx"
    assert tree(cwd) == ["artifacts", "artifacts/resnet20-onnx",
                         *(f"artifacts/resnet20-onnx/{name}"
                           for name in artifact_listing(folder, "resnet20.onnx"))]


def test_two_formats_from_one_export(cwd):
    result = run("--model", "resnet20", "--fmt", "onnx", "--fmt", "onnx-fp16", *FAST)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("traced and translated") == 1
    # one verdict per candidate runtime of each format, all passing
    assert result.stdout.count("verdict: PASS") >= 2 and "verdict: FAIL" not in result.stdout
    assert result.stdout.count("wrote artifacts/") == 2
    assert {p.name for p in (cwd / "artifacts").iterdir()} == {"resnet20-onnx",
                                                                "resnet20-onnx-fp16"}


def test_reexport_replaces_the_artifact_and_leaves_no_temporaries(cwd):
    assert run("--depth", "20", *FAST).exit_code == 0
    first = json.loads((cwd / "artifacts/resnet20-onnx/manifest.json").read_text())
    result = run("--depth", "20", "--seed", "7", "--overwrite", *FAST)  # other weights: asked
    assert result.exit_code == 0, result.output
    second = json.loads((cwd / "artifacts/resnet20-onnx/manifest.json").read_text())
    assert second["source"]["seed"] == 7 and first["source"]["seed"] == 0
    assert os.listdir(cwd / "artifacts") == ["resnet20-onnx"]


@pytest.mark.skipif(tensorrt_version() is not None and cuda_gpu() is not None,
                    reason="this machine has TensorRT and a GPU: --fmt trt would build")
def test_trt_without_tensorrt_is_one_line_exit_1_and_no_files(cwd):
    result = run("--depth", "50", "--fmt", "trt")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "--fmt trt needs TensorRT and a CUDA GPU" in line
    if tensorrt_version() is None:
        assert "TensorRT is not installed" in line
    if cuda_gpu() is None:
        assert "no CUDA GPU is visible to PyTorch" in line
    assert result.stdout == ""  # nothing was started
    assert list(cwd.iterdir()) == []


def test_trt_check_comes_before_the_checkpoint_is_even_read(cwd):
    if tensorrt_version() is not None and cuda_gpu() is not None:
        pytest.skip("this machine has TensorRT and a GPU")
    result = run("--checkpoint", "missing.pt", "--fmt", "trt")
    assert "needs TensorRT" in one_line_error(result)
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("args,exit_code,message", [
    (["--depth", "42"], 2, "unknown model '42'"),
    (["--model", "resnet9000"], 2, "unknown model 'resnet9000'"),
    (["--depth", "50", "--model", "resnet50"], 2, "not both"),
    (["--fmt", "tflite"], 2, "'tflite' is not one of"),
    (["--batch-range", "8:4:2"], 2, "1 <= min <= opt <= max"),
    (["--batch-range", "a:b"], 2, "MIN:OPT:MAX"),
    (["--batch-range", "1:8:32", "--max-batch", "64"], 2, "not both"),
    (["--workspace", "lots"], 2, "a size such as 4G"),
    (["--input-size", "4"], 2, "4 is not in the range"),
    (["--fp16-io", "--depth", "20"], 2, "--fp16-io applies to FP16 artifacts"),
    (["--fmt", "onnx", "--fmt", "onnx-fp16", "--out", "x"], 2, "--out names one folder"),
])
def test_user_errors_are_one_line_with_the_right_exit_code(cwd, args, exit_code, message):
    result = run(*args)
    assert result.exit_code == exit_code, result.output
    assert message in one_line_error(result)
    assert list(cwd.iterdir()) == []


def test_missing_and_corrupt_checkpoints_are_one_line_exit_1(cwd):
    result = run("--checkpoint", "nope.pt")
    assert result.exit_code == 1 and "weights file not found: nope.pt" in one_line_error(result)
    _trained_like_checkpoint(cwd / "whole.pt")
    data = (cwd / "whole.pt").read_bytes()
    (cwd / "cut.pt").write_bytes(data[: len(data) // 2])  # an interrupted copy
    result = run("--checkpoint", "cut.pt")
    assert result.exit_code == 1 and "not a valid PyTorch weights file" in one_line_error(result)
    assert sorted(p.name for p in cwd.iterdir()) == ["cut.pt", "whole.pt"]


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_a_weights_file_that_would_run_code_is_refused(cwd):
    torch.save({"conv1.weight": torch.zeros(1), "evil": _Payload()}, cwd / "evil.pt",
               pickle_protocol=2)
    result = run("--depth", "20", "--checkpoint", "evil.pt")
    assert result.exit_code == 1
    assert "execute code" in one_line_error(result)
    assert not (cwd / "pwned.txt").exists()


def _trained_like_checkpoint(path, dataset=None):
    spec = ModelSpec.create("resnet20", num_classes=10, in_chans=1)
    torch.manual_seed(3)
    model = spec.build()
    save_checkpoint(path, model, spec, class_names=[str(i) for i in range(10)],
                    dataset=dataset, epoch=1)
    return spec


def test_checkpoint_export_records_its_source_and_verify_rechecks_it(cwd):
    _trained_like_checkpoint(cwd / "ckpt.pt")
    result = run("--checkpoint", "ckpt.pt", "--fmt", "onnx-fp16", *FAST)
    assert result.exit_code == 0, result.output
    assert "UNTRAINED" not in result.output
    folder = cwd / "artifacts" / "resnet20-ckpt-onnx-fp16"  # named after the weights file
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["source"]["kind"] == "checkpoint"
    assert manifest["source"]["path"] == str((cwd / "ckpt.pt").resolve())
    from export.core.fileio import sha256_file
    assert manifest["source"]["sha256"] == sha256_file(cwd / "ckpt.pt")
    assert manifest["class_names"] == [str(i) for i in range(10)]

    ok = run("verify", folder)
    assert ok.exit_code == 0, ok.output
    assert "verified" in ok.stdout and "verdict: PASS" in ok.stdout

    torch.manual_seed(9)
    spec = ModelSpec.create("resnet20", num_classes=10, in_chans=1)
    save_checkpoint(cwd / "ckpt.pt", spec.build(), spec)  # retrained: different weights
    changed = run("verify", folder)
    assert changed.exit_code == 1
    assert "changed since export" in one_line_error(changed)


def test_checkpoint_that_contradicts_the_options_is_refused(cwd):
    _trained_like_checkpoint(cwd / "ckpt.pt")
    result = run("--checkpoint", "ckpt.pt", "--depth", "50")
    assert result.exit_code == 1
    assert "does not fit model resnet50 (it holds resnet20)" in one_line_error(result)


def test_plain_state_dict_needs_the_model_named_and_takes_classes_from_it(cwd):
    torch.manual_seed(0)
    state = ModelSpec.create("resnet18", num_classes=7).build().state_dict()
    torch.save(state, cwd / "tv.pth")
    nameless = run("--checkpoint", "tv.pth")
    assert nameless.exit_code == 1 and "plain state dict" in one_line_error(nameless)
    wrong = run("--checkpoint", "tv.pth", "--depth", "34")
    assert wrong.exit_code == 1 and "does not fit the model" in one_line_error(wrong)
    result = run("--checkpoint", "tv.pth", "--depth", "18", "--input-size", "32", *FAST)
    assert result.exit_code == 0, result.output
    manifest = json.loads((cwd / "artifacts/resnet18-tv-onnx/manifest.json").read_text())
    assert manifest["model"]["num_classes"] == 7 and manifest["model"]["input_size"] == 32
    assert manifest["source"]["kind"] == "state_dict"


def test_verify_passes_then_fails_on_a_tampered_file(cwd):
    assert run("--depth", "20", *FAST).exit_code == 0
    folder = cwd / "artifacts" / "resnet20-onnx"
    ok = run("verify", folder)
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.strip().splitlines()[-1] == f"verified {folder}: PASS"
    path = folder / "resnet20.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    bad = run("verify", folder)
    assert bad.exit_code == 1
    assert "sha256 mismatch" in one_line_error(bad)


def test_verify_of_a_folder_that_is_not_an_artifact(cwd):
    result = run("verify", cwd)
    assert result.exit_code == 1 and "no manifest.json" in one_line_error(result)


def test_out_that_is_not_an_artifact_folder_is_refused(cwd):
    (cwd / "mine").mkdir()
    (cwd / "mine" / "notes.txt").write_text("keep me")
    result = run("--depth", "20", "--out", "mine")
    assert result.exit_code == 1 and "is not an artifact folder" in one_line_error(result)
    assert tree(cwd / "mine") == ["notes.txt"]


def test_help_lists_the_options():
    result = run("--help")
    assert result.exit_code == 0
    for option in ("--checkpoint", "--fmt", "--batch-range", "--min-batch", "--opt-batch",
                   "--max-batch", "--input-size", "--opset", "--out", "--fp16-io",
                   "--trt-precision", "--workspace", "--keep-failed"):
        assert option in result.output


def test_an_out_folder_that_cannot_be_created_is_one_line(cwd):
    (cwd / "a-file").write_text("x")
    result = run("--depth", "20", "--out", "a-file/sub/out", *FAST)
    assert result.exit_code == 1
    assert "cannot write a-file/sub/out: a-file is a file" in one_line_error(result)
    assert not (cwd / "artifacts").exists()


def test_a_full_disk_is_one_line_and_leaves_no_partial_folder(cwd, monkeypatch):
    import errno

    import export.pipeline as pipeline

    def full(proto, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline, "save_onnx", full)
    result = run("--depth", "20", *FAST)
    assert result.exit_code == 1
    assert "cannot write artifacts/resnet20-onnx: No space left on device" in \
        one_line_error_after_progress(result)
    assert list(cwd.iterdir()) == []


def one_line_error_after_progress(result):
    """Progress went to stdout; stderr holds the warning and exactly one error line."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_opset_is_what_the_file_says_or_a_clear_refusal(cwd):
    result = run("--depth", "20", "--opset", "18", *FAST)
    assert result.exit_code == 0, result.output
    manifest = json.loads((cwd / "artifacts/resnet20-onnx/manifest.json").read_text())
    import onnx
    proto = onnx.load(str(cwd / "artifacts/resnet20-onnx/resnet20.onnx"), load_external_data=False)
    assert manifest["opset"] == proto.opset_import[0].version == 18
    # the exporter cannot lower the zero-padding shortcut's Pad to opset 17: say so, write nothing
    old = run("--depth", "20", "--opset", "17", "--out", "o17", *FAST)
    assert old.exit_code == 1
    assert "could not express resnet20 in opset 17" in one_line_error_after_progress(old)
    assert "Traceback" not in old.output
    assert not (cwd / "o17").exists()


def test_default_names_carry_the_run_so_two_models_do_not_clash():
    """The quick-start digits ResNet-20 and another ResNet-20 used to share
    artifacts/resnet20-onnx."""
    from pathlib import Path

    from export.core.models import default_spec
    from export.pipeline import ExportRequest, default_out

    spec, big = default_spec("resnet20"), default_spec("resnet50")

    def out(checkpoint, spec=spec, **kw):
        return default_out(spec, ExportRequest(checkpoint=checkpoint and Path(checkpoint), **kw))

    assert out("artifacts/train/resnet20-digits/best.pt") == Path("artifacts/resnet20-digits-onnx")
    assert out("artifacts/train/resnet20-patterns/last.pt", fmt="onnx-int8") == \
        Path("artifacts/resnet20-patterns-onnx-int8")
    assert out(None) == Path("artifacts/resnet20-onnx")  # fresh weights: the model's name
    assert out("weights/resnet50.pth", big) == Path("artifacts/resnet50-onnx")
    assert out("imagenet.pth", big, out_dir=Path("x")) == Path("x/resnet50-imagenet-onnx")


def test_several_formats_take_one_output_parent(cwd):
    result = run("--depth", "20", "--fmt", "onnx", "--fmt", "onnx-fp16", "--out-dir", "mine",
                 *FAST)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (cwd / "mine").iterdir()) == ["resnet20-onnx",
                                                                "resnet20-onnx-fp16"]
    refused = run("--depth", "20", "--fmt", "onnx", "--fmt", "onnx-fp16", "--out", "one", *FAST)
    assert refused.exit_code == 2 and "give --out-dir" in one_line_error(refused)
