"""The comparator's rules, the tolerance table, and the gate failing a damaged artifact for real."""

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import export.pipeline as pipeline
from export.cli import main as export_cli
from export.core.fileio import sha256_file
from export.core.manifest import write_manifest
from export.core.models import ModelSpec
from export.core.shapes import BatchRange
from export.gate.inputs import random_inputs, real_inputs
from export.gate.parity import compare, run_gate
from export.gate.table import format_table
from export.gate.tolerances import TOLERANCES, Tolerance
from export.runtime.torch_runner import TorchRunner

from damage import scaled_weights

FP32, FP16 = TOLERANCES["fp32"], TOLERANCES["fp16"]


def _logits(n=8, classes=10, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal((n, classes)) * scale).astype(np.float32)


def test_tolerance_table_has_every_precision_each_with_a_reason():
    assert set(TOLERANCES) == {"fp32", "fp16", "bf16", "int8"}
    for tol in TOLERANCES.values():
        assert len(tol.reason) > 60
    BF16 = TOLERANCES["bf16"]
    assert FP32.atol < FP16.atol < BF16.atol and FP32.rtol < FP16.rtol < BF16.rtol
    assert FP32.min_cosine > FP16.min_cosine > BF16.min_cosine


def test_identical_logits_pass_with_perfect_figures():
    ref = _logits()
    c = compare(ref, ref.copy(), FP32, "same")
    assert c.passed and c.failures == []
    assert c.max_abs_error == 0 and c.failing_elements == 0
    assert c.min_cosine == pytest.approx(1.0) and c.top1_agreement == 1.0 and c.finite


def test_an_element_fails_only_beyond_both_atol_and_rtol():
    ref = np.array([[100.0, 0.01, -3.0, 0.5]], np.float32)
    ok = ref.copy()
    ok[0, 0] += 0.05  # 5e-2 > atol 1e-4 but only 5e-4 relative: within rtol 1e-3
    ok[0, 1] += 5e-5  # 5e-3 relative > rtol, but 5e-5 < atol
    assert compare(ref, ok, FP32).failing_elements == 0
    bad = ref.copy()
    bad[0, 2] += 0.01  # beyond atol (1e-4) and beyond rtol (3e-3)
    c = compare(ref, bad, FP32)
    assert c.failing_elements == 1 and not c.passed
    assert "1 of 4 logits beyond" in c.failures[0]


def test_atol_scales_with_a_large_logit_spread():
    ref = _logits(scale=10.0)  # std ~10, like a trained model
    cand = ref + 5e-4  # above atol 1e-4, but within atol * std (1e-3)
    cand[np.abs(ref) > 0.5] = ref[np.abs(ref) > 0.5]  # rtol cannot help the small ones
    assert compare(ref, cand, FP32).failing_elements == 0
    small = _logits(scale=0.3)
    assert compare(small, small + 5e-4, FP32).failing_elements > 0  # spread < 1: plain atol


def test_nan_or_inf_fails_and_is_reported():
    ref = _logits()
    cand = ref.copy()
    cand[2, 3] = np.nan
    cand[4, 0] = np.inf
    c = compare(ref, cand, FP16)
    assert not c.passed and not c.finite
    assert any("2 NaN/Inf logits" in f for f in c.failures)
    r = compare(np.full_like(ref, np.nan), ref, FP16)
    assert not r.passed and not r.reference_finite


def test_a_rescaled_noisy_output_fails_the_fp16_gate():
    ref = _logits(scale=100.0)
    cand = ref * 1.01 + 3 * _logits(seed=1)
    c = compare(ref, cand, FP16)
    assert not c.passed and c.failing_elements > 0
    assert any(f.startswith("cosine similarity 0.9987") for f in c.failures)


def test_the_cosine_criterion_works_on_its_own():
    loose = Tolerance(atol=10.0, rtol=10.0, min_cosine=0.999, min_clear_top1=0.0,
                      min_clear_top5=0.0, reason="elements unchecked")
    ref = _logits()
    cand = ref + 0.2 * _logits(seed=1)  # ~20% noise: no element beyond 10, direction off
    c = compare(ref, cand, loose)
    assert c.failing_elements == 0 and c.min_cosine < 0.999
    assert [f.split(" ")[0] for f in c.failures] == ["cosine"]


def test_top1_judged_only_where_the_margin_is_clear():
    ref = np.array([[1.0, 0.999, 0.0], [2.0, 0.0, -1.0]], np.float32)
    cand = np.array([[0.999, 1.0, 0.0], [1.99, 0.0, -1.0]], np.float32)  # first: a near tie flips
    c = compare(ref, cand, FP16)
    assert c.top1_agreement == 0.5  # reported honestly
    assert c.clear_samples == 1 and c.top1_clear_agreement == 1.0  # the tie is not judged
    assert c.passed
    flipped = np.array([[1.0, 0.999, 0.0], [0.0, 2.0, -1.0]], np.float32)  # clear margin flips
    c2 = compare(ref, flipped, FP16)
    assert c2.top1_clear_agreement == 0.0 and not c2.passed
    assert any("top-1 differs on 1 of 1" in f for f in c2.failures)


def test_top5_overlap_with_fewer_than_five_classes():
    ref = _logits(classes=3)
    c = compare(ref, ref, FP32)
    assert c.top5_overlap == 1.0 and c.top5_clear_agreement == 1.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        compare(_logits(n=2), _logits(n=3), FP32)


def test_inputs_are_seeded_and_cycle_real_images():
    a = random_inputs((1, 8, 8), [1, 4])
    b = random_inputs((1, 8, 8), [1, 4])
    assert [x.batch.shape for x in a] == [(1, 1, 8, 8), (4, 1, 8, 8)]
    np.testing.assert_array_equal(a[1].batch, b[1].batch)
    assert not np.allclose(a[1].batch, 1.0)  # never all-ones
    images = np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 1, 8, 8)
    batches = real_inputs(images, [5])
    np.testing.assert_array_equal(batches[0].batch[3], images[0])


def _model(seed):
    torch.manual_seed(seed)
    return ModelSpec.create("resnet20", num_classes=10, in_chans=1).build().eval()


def test_run_gate_passes_the_same_model_and_fails_another():
    inputs = random_inputs((1, 32, 32), [1, 3])
    same = run_gate(TorchRunner(_model(0)), TorchRunner(_model(0)), inputs, "fp32")
    assert same.passed and len(same.comparisons) == 2
    other = run_gate(TorchRunner(_model(0)), TorchRunner(_model(1)), inputs, "fp32")
    assert not other.passed
    table = format_table(other)
    assert "verdict: FAIL" in table and "random b=3" in table
    assert json.loads(json.dumps(other.to_dict()))["passed"] is False


# ---------------------------------------------------------------------------------------------
# A damaged artifact, end to end through the CLI
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "onnx-fp16"])
def test_damaged_artifact_fails_the_gate_with_exit_1_and_leaves_nothing(tmp_path, monkeypatch,
                                                                          fmt):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pipeline, "save_onnx", scaled_weights(pipeline.save_onnx, "layer2"))
    result = CliRunner().invoke(export_cli, ["--depth", "20", "--fmt", fmt,
                                             "--batch-range", "1:2:4"])
    assert result.exit_code == 1, result.output
    assert "verdict: FAIL" in result.stdout
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: parity gate FAILED for resnet20")
    assert "nothing was written" in last
    assert list(tmp_path.iterdir()) == []  # no artifacts/, no partial folder, nothing


def test_keep_failed_keeps_it_under_a_failed_name_that_loaders_refuse(tmp_path, monkeypatch):
    from export.core.errors import UserError
    from export.runtime import load_artifact

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pipeline, "save_onnx", scaled_weights(pipeline.save_onnx, "layer2"))
    result = CliRunner().invoke(export_cli, ["--depth", "20", "--batch-range", "1:2:4",
                                             "--keep-failed"])
    assert result.exit_code == 1
    assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == ["resnet20-onnx.FAILED"]
    failed = tmp_path / "artifacts" / "resnet20-onnx.FAILED"
    manifest = json.loads((failed / "manifest.json").read_text())
    assert manifest["parity"]["passed"] is False
    with pytest.raises(UserError, match="parity gate failed"):
        load_artifact(failed)


def test_verify_fails_an_artifact_whose_weights_were_changed_consistently(tmp_path, monkeypatch):
    """Tampering that also rewrites the manifest's sha256 still fails: on parity."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(export_cli, ["--depth", "20", "--batch-range", "1:2:4"]).exit_code == 0
    folder = tmp_path / "artifacts" / "resnet20-onnx"
    path = folder / "resnet20.onnx"
    proto = onnx.load(str(path))
    scaled_weights(lambda p, target: onnx.save(p, str(target)), "layer2")(proto, path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][0]["sha256"] = sha256_file(path)
    write_manifest(folder, manifest)  # and its digest: a thorough tamperer
    result = runner.invoke(export_cli, ["verify", str(folder)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: parity gate FAILED on")


def test_an_artifact_its_runtime_cannot_run_fails_the_gate(tmp_path, monkeypatch):
    from export.runtime.ort_runner import OnnxRuntimeRunner

    def crash(self, batch):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : boom\nmore detail")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(OnnxRuntimeRunner, "_infer", crash)
    result = CliRunner().invoke(export_cli, ["--depth", "20", "--batch-range", "1:2:4"])
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last == ("Error: onnxruntime[CPU,fp32] could not run the artifact: "
                    "RuntimeError: [ONNXRuntimeError] : 1 : FAIL : boom")
    assert list(tmp_path.iterdir()) == []


def test_the_gate_prints_each_row_as_it_is_judged(tmp_path, monkeypatch):
    """Progress: the header (with the effective tolerance) comes before the first row is judged,
    and every row is printed as soon as its comparison is done, not all at the end."""
    import export.gate.parity as parity

    lines, judged = [], []
    real_compare = parity.compare

    def spy(*args, **kwargs):
        judged.append(len(lines))  # how much had been printed when this row was judged
        return real_compare(*args, **kwargs)

    monkeypatch.setattr(parity, "compare", spy)
    req = pipeline.ExportRequest(fmt="onnx", model="resnet20", batch=BatchRange(1, 2, 4),
                                 out=tmp_path / "a")
    pipeline.export_artifact(req, echo=lines.append, warn=lambda _: None)
    text = "\n".join(lines)
    assert "atol 0.0001 x max(1, logit std)" in text
    # real and random inputs at batch 1, 2 and 4, for each candidate runtime
    assert len(judged) % 6 == 0 and len(judged) >= 6
    assert judged == sorted(judged) and len(set(judged)) == len(judged)  # a line between each


def test_figures_that_are_not_judged_are_bracketed_and_absent_runtimes_named():
    """INT8 rows used to read `fail 8 ... pass` and `top1 88% ... pass`."""
    from export.gate.judge import not_judged
    from export.gate.table import table_row
    from export.runtime.registry import get_runtime

    ref = _logits()
    noisy = ref + np.random.default_rng(0).normal(0, 0.3, ref.shape).astype(np.float32)
    cells = table_row(compare(ref, noisy, TOLERANCES["int8"], "real")).split()
    # name, max abs, max rel, fail, min cos, top1, top1*, top5: fail, top1, top5 not judged
    assert [cells[i][0] for i in (3, 5, 7)] == ["("] * 3 and cells[6][0] != "("
    strict = table_row(compare(ref, ref.copy(), TOLERANCES["fp32"], "real")).split()
    assert strict[3] == "0" and strict[5] == "(100%)"
    absent = not_judged({"format": "onnx", "precision": "fp32", "int8": None})
    cuda = get_runtime("onnxruntime-cuda").unavailable()
    assert (f"onnxruntime-cuda ({cuda})" in absent) == (cuda is not None)
    assert not any(a.startswith("onnxruntime (") for a in absent)
