"""resnet-bench end to end: the four files, the JSON schema, skips with reasons, option errors,
Ctrl-C, exported artifacts through their manifest, and merging runs."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import bench.matrix as matrix
from bench import report
from bench.cli import main

from cli_helpers import command

FAST = ["--depth", "18", "--input-size", "32", "--warmup", "1", "--no-steady-warmup",
        "--min-iters", "3", "--min-time", "0", "--no-progress"]


invoke = command(main)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("run")
    result = invoke([*FAST, "--backends", "torch,onnxruntime,null,onnxruntime-cuda",
                     "--batch-sizes", "1,2", "--threads", "1", "--cache-dir", str(cache_dir),
                     "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result


def test_a_run_writes_json_csv_markdown_and_png(cpu_run):
    out, result = cpu_run
    assert sorted(p.name for p in out.iterdir()) == ["bench.csv", "bench.json", "bench.md",
                                                     "bench.png"]
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "bench.json").read_text())
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert len(rows) == len(doc["results"]) == 6  # 3 backends x 2 batch sizes
    assert rows[0].keys() >= {"backend", "p50_ms", "throughput_ips", "noise_reasons"}
    md = (out / "bench.md").read_text()
    assert "| backend | precision |" in md and "Skipped:" in md
    assert md in result.stdout  # the table is printed, the progress and paths go to stderr
    assert "wrote" in result.stderr and "wrote" not in result.stdout


def test_json_schema(cpu_run):
    doc = json.loads((cpu_run[0] / "bench.json").read_text())
    report.validate(doc)
    assert doc["schema"] == "resnet-bench" and doc["schema_version"] == 1
    assert doc["interrupted"] is False
    env = doc["environment"]
    assert env["cpu"]["usable_cores"] >= 1 and env["versions"]["torch"] == torch.__version__
    assert env["threads"]["requested"] == 1 and env["threads"]["onnxruntime_intra_op"] == 1
    assert "hostname" not in json.dumps(env).lower()
    cfg = doc["config"]
    assert cfg["model"]["name"] == "resnet18" and cfg["input_size"] == 32
    assert cfg["batch_sizes"] == [1, 2] and cfg["threads"] == 1
    assert cfg["timing"] == {"warmup_iters": 1, "warmup_time": 0.0, "min_iters": 3,
                             "min_time": 0.0, "steady_warmup": False, "steady_window": 3,
                             "steady_tol": 0.15, "warmup_max_time": 30.0, "rounds": 10,
                             "round_warmup": 1, "round_warmup_max": 0.1}
    assert cfg["macs_per_image"] > 0
    assert set(env["cpu"]["isa"]) == {"isa", "native_bf16", "features"}
    assert env["cpu"]["load_average_end"] is None or len(env["cpu"]["load_average_end"]) == 3
    for row in doc["results"]:
        assert row["iterations"] >= 3 and row["warmup_iterations"] == 1
        assert row["warmup_steady"] is None  # --no-steady-warmup
        assert row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["throughput_ips"] > 0 and row["device"] == "cpu" and row["timing"] == "e2e"
        assert isinstance(row["noisy"], bool) and isinstance(row["noise_reasons"], list)
        assert row["timer"] == "perf_counter" and row["complete"] is True
        assert row["input_shape"] == [row["batch_size"], 3, 32, 32]
        # interleaved: 10 rounds of 1 timed iteration each (3 iterations / 10, rounded up)
        assert row["rounds"] == 10 and len(row["round_p50_ms"]) == 10 and row["iterations"] == 10
        assert row["round_group"].endswith(f":b{row['batch_size']}")
        assert isinstance(row["busy"], bool) and isinstance(row["rounds_disagree"], bool)
        assert set(row["flags"]) <= {"NOISY", "BUSY", "ROUNDS-DISAGREE"}
        assert ("NOISY" in row["flags"]) == row["noisy"] and ("BUSY" in row["flags"]) == row["busy"]
        assert row["model_label"] == "resnet18 32x32x3, 1000 classes"
    by = {(r["backend"], r["batch_size"]): r for r in doc["results"]}
    ort, eager = by[("onnxruntime", 2)], by[("torch", 2)]
    assert ort["round_group"] == eager["round_group"]  # timed in the same rounds
    ratios = [e / o for e, o in zip(eager["round_p50_ms"], ort["round_p50_ms"])]
    assert ort["speedup_vs_torch_rounds"] == pytest.approx(float(np.median(ratios)))
    assert ort["speedup_vs_torch_rounds_iqr"] == pytest.approx(np.percentile(ratios, (25, 75)))
    assert by[("torch", 1)]["speedup_vs_torch"] == pytest.approx(1.0)
    assert by[("onnxruntime", 2)]["speedup_vs_torch"] == pytest.approx(
        by[("torch", 2)]["p50_ms"] / by[("onnxruntime", 2)]["p50_ms"])
    assert by[("onnxruntime", 1)]["export_s"] >= 0 and "onnx_cached" in by[("onnxruntime", 1)]
    assert by[("null", 1)]["gflops"] is None and by[("torch", 1)]["gflops"] > 0


def test_missing_backend_is_listed_with_its_reason(cpu_run):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build has the CUDA provider")
    doc = json.loads((cpu_run[0] / "bench.json").read_text())
    (skip,) = [s for s in doc["skipped"] if s["backend"] == "onnxruntime-cuda"]
    assert "CUDAExecutionProvider is not in this onnxruntime build" in skip["reason"]
    assert "onnxruntime-cuda" in (cpu_run[0] / "bench.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_request_without_a_gpu_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    result = invoke([*FAST, "--device", "cuda", "--backends", "torch", "--out", str(out)])
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: --device cuda: no CUDA GPU is visible to PyTorch")
    assert not out.exists()


def test_default_backends_on_cpu_list_the_rest_as_skipped(monkeypatch):
    calls = []
    monkeypatch.setattr(matrix.MatrixBuilder, "_model_backend",
                        lambda self, b, spec: calls.append(b))
    cases = matrix.build(matrix.Request(
        matrix.ModelSpec.create("resnet18"), "cpu"))
    skipped = cases.skipped
    assert calls == ["torch", "onnxruntime", "openvino"]
    reasons = {s.backend: s.reason for s in skipped}
    assert set(reasons) == {"torch-compile", "onnxruntime-cuda", "onnxruntime-trt", "tensorrt"}
    assert "--backends torch-compile" in reasons["torch-compile"]


@pytest.mark.parametrize("args,message", [
    (["--batch-sizes", "0,x"], "Invalid value for '--batch-sizes'"),
    (["--batch-sizes", ""], "Invalid value for '--batch-sizes'"),
    (["--backends", "torch,tpu"], "unknown backend 'tpu'"),
    (["--precision", "fp8"], "unknown precision 'fp8'"),
    (["--warmup", "lots"], "Invalid value for '--warmup'"),
    (["--device", "tpu"], "Invalid value for '--device'"),
    (["--min-iters", "0"], "Invalid value for '--min-iters'"),
    (["--depth", "51"], "unknown model"),
    (["--depth", "18", "--model", "resnet50"], "not both"),
    (["--no-such-option"], "No such option"),
])
def test_bad_options_are_one_line_and_exit_2(args, message):
    result = invoke(args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]


def test_warmup_and_cuda_graph_option_forms(tmp_path, monkeypatch):
    import bench.cli as cli_module

    seen = {}
    real_timing_config = cli_module.TimingConfig

    def recording_timing_config(*args, **kwargs):
        seen["timing"] = real_timing_config(*args, **kwargs)
        return seen["timing"]

    def fake_build(request):
        seen["graphs"] = request.cuda_graphs
        return matrix.Cases([], [matrix.Skip("torch", "stubbed out")], matrix.Models(0),
                              [request.spec])

    monkeypatch.setattr("bench.cli.TimingConfig", recording_timing_config)
    monkeypatch.setattr("bench.matrix.build", fake_build)
    for flag, graphs in ((["--cuda-graphs"], (True,)), (["--cuda-graphs", "both"], (False, True)),
                         ([], (False,))):
        args = [a for a in FAST if a != "--no-steady-warmup"]  # the default: steady warm-up
        result = invoke([*args, "--warmup", "4,0.25s", "--warmup-max-time", "7", *flag,
                         "--out", str(tmp_path / "out")])
        assert result.exit_code == 1 and seen["graphs"] == graphs  # nothing to measure: exit 1
        assert "nothing to measure: stubbed out" in result.stderr
        timing = seen["timing"]
        assert (timing.warmup_iters, timing.warmup_time) == (4, 0.25)
        assert timing.steady is True and timing.warmup_max_time == 7.0


def test_ctrl_c_keeps_what_was_measured_and_exits_130(tmp_path, monkeypatch):
    calls = []

    def infer(self, batch):
        calls.append(1)
        if len(calls) == 30:  # first inference, 1 warm-up, 1 untimed, 26 timed, then Ctrl-C
            raise KeyboardInterrupt
        return np.zeros((batch.shape[0], 10), np.float32)

    monkeypatch.setattr(matrix.NullRunner, "_infer", infer)
    result = invoke([*FAST, "--backends", "null,torch", "--batch-sizes", "1,2",
                     "--min-iters", "1000", "--out", str(tmp_path)])
    assert result.exit_code == 130
    assert "interrupted" in result.stderr
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert doc["interrupted"] is True
    # first inference and 1 warm-up each (null, then torch), then round 1: null's untimed
    # iteration and 26 timed ones; torch has no timed sample yet, so no row
    (row,) = doc["results"]
    assert row["backend"] == "null" and row["complete"] is False and row["iterations"] == 26
    assert "Interrupted" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench.png").exists() and (tmp_path / "bench.csv").exists()


def test_a_backend_failing_at_one_batch_size_is_skipped_and_the_run_goes_on(tmp_path,
                                                                            monkeypatch):
    def infer(self, batch):
        if batch.shape[0] == 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 9 GiB\nmore detail")
        return np.zeros((batch.shape[0], 10), np.float32)

    monkeypatch.setattr(matrix.NullRunner, "_infer", infer)
    result = invoke([*FAST, "--backends", "null", "--batch-sizes", "1,2,4", "--out",
                     str(tmp_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert [r["batch_size"] for r in doc["results"]] == [1, 4]
    (skip,) = doc["skipped"]
    assert skip["batch_size"] == 2
    assert skip["reason"] == "e2e failed: RuntimeError: CUDA out of memory. Tried to allocate 9 GiB"


def _write_artifact(folder, onnx_path, batch_range, passed=True):
    """A real artifact folder (the manifest schema) around an ONNX file from the cache."""
    from export.core.manifest import (
        ManifestParts,
        build_manifest,
        file_entry,
        write_manifest,
    )

    folder.mkdir()
    shutil.copy(onnx_path, folder / "model.onnx")
    spec = matrix.ModelSpec.create("resnet18", input_size=32)
    write_manifest(folder, build_manifest(ManifestParts(
        fmt="onnx", precision="fp32", artifact="model.onnx",
        files=[file_entry(folder, "model.onnx", "model")], model=spec.to_dict(), class_names=None,
        normalization={"mean": list(spec.mean), "std": list(spec.std)},
        source={"kind": "seed", "seed": 0},
        inputs=[{"name": "images", "shape": ["batch", 3, 32, 32], "dtype": "float32"}],
        outputs=[{"name": "logits", "shape": ["batch", 1000], "dtype": "float32"}],
        batch_range=batch_range, opset=20, fp16=None, tensorrt=None, gpu=None, versions={},
        parity={"passed": passed, "runs": []})))


def test_artifacts_are_measured_through_their_manifest_within_the_batch_range(
        tmp_path, cpu_run, cache_dir, monkeypatch):
    (onnx_path,) = cache_dir.glob("resnet18-*.onnx")
    _write_artifact(tmp_path / "good", onnx_path, {"min": 1, "opt": 2, "max": 2})
    _write_artifact(tmp_path / "failed", onnx_path, {"min": 1, "opt": 2, "max": 2}, passed=False)
    real_loader = matrix.load_artifact  # export.runtime.load_artifact
    calls = []

    def spy(folder, **kwargs):
        calls.append((folder.name, kwargs))
        return real_loader(folder, **kwargs)

    monkeypatch.setattr(matrix, "load_artifact", spy)
    out = tmp_path / "out"
    result = invoke([*FAST, "--artifacts", str(tmp_path), "--batch-sizes", "1,4",
                     "--threads", "1", "--backends", "onnxruntime,tensorrt", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(calls) == [(name, {"runtime": "onnxruntime", "threads": 1,
                                     "optimization_level": "all"}) for name in ("failed", "good")]
    doc = json.loads((out / "bench.json").read_text())
    (row,) = doc["results"]
    assert (row["backend"], row["batch_size"], row["format"]) == ("onnxruntime", 1, "onnx")
    assert row["artifact"] == str(tmp_path / "good" / "model.onnx")
    reasons = {f"{Path(s['artifact']).parent.name}:{s['batch_size']}": s["reason"]
               for s in doc["skipped"] if s["artifact"]}
    assert "outside the artifact's batch range 1..2" in reasons["good:4"]
    assert "parity gate failed" in reasons["failed:None"]
    assert any(s["backend"] == "tensorrt" and "no artifact it runs (format trt)" in s["reason"]
               for s in doc["skipped"])


def test_artifacts_folder_without_manifest_is_a_one_line_error(tmp_path):
    result = invoke([*FAST, "--artifacts", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: no manifest.json in {tmp_path} or its sub-folders"


def test_report_merges_runs_and_rebuilds_the_files(cpu_run, tmp_path):
    run_dir = cpu_run[0]
    result = invoke(["report", str(run_dir), str(run_dir / "bench.json"), "--out",
                     str(tmp_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "bench.json").read_text())
    single = json.loads((run_dir / "bench.json").read_text())
    assert len(doc["results"]) == 2 * len(single["results"])
    assert len(doc["config"]["runs"]) == 2
    assert (tmp_path / "bench.png").exists()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "other"}))
    result = invoke(["report", str(bad), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1


def test_validate_rejects_broken_documents(cpu_run):
    doc = json.loads((cpu_run[0] / "bench.json").read_text())
    broken = json.loads(json.dumps(doc))
    broken["results"][0]["p50_ms"] = "fast"
    with pytest.raises(ValueError, match="p50_ms"):
        report.validate(broken)
    broken = {**doc, "schema_version": 2}
    with pytest.raises(ValueError, match="v1"):
        report.validate(broken)


def test_inputs_are_seeded_normalised_and_never_constant():
    spec = matrix.ModelSpec.create("resnet18", input_size=32)
    a, b = matrix.make_input(4, spec, 0), matrix.make_input(4, spec, 0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, matrix.make_input(4, spec, 1))
    assert a.dtype == np.float32 and a.shape == (4, 3, 32, 32) and a.std() > 0.5
    pixels = a * np.reshape(spec.std, (1, 3, 1, 1)) + np.reshape(spec.mean, (1, 3, 1, 1))
    assert pixels.min() >= -1e-5 and pixels.max() < 1 + 1e-5


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_real_ctrl_c_or_sigterm_writes_the_files_and_exits_130(tmp_path, signame):
    """In a real process: Ctrl-C (SIGINT) or `timeout`'s SIGTERM mid-loop keeps the results."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", "--depth", "18", "--input-size", "32",
         "--backends", "null", "--batch-sizes", "1", "--min-time", "120", "--progress",
         "--out", str(tmp_path)],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": root})
    seen = bytearray()
    timed = threading.Event()

    def read():
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):
            seen.extend(chunk)
            if b"timed" in seen:
                timed.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert timed.wait(60), seen.decode(errors="replace")  # the timed loop has started
        proc.send_signal(getattr(signal, signame))
        proc.wait(timeout=60)
        stdout = proc.stdout.read()  # small: the Markdown table
    finally:
        proc.kill()
    reader.join(10)  # stderr is read by the reader thread only
    assert proc.returncode == 130, seen.decode(errors="replace")
    assert b"interrupted" in seen and b"| null" in stdout
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert doc["interrupted"] is True
    (row,) = doc["results"]
    assert row["complete"] is False and row["iterations"] > 0


@pytest.mark.cuda
def test_cuda_run_times_end_to_end_and_compute_only_with_and_without_graphs(tmp_path):
    result = invoke(["--depth", "18", "--input-size", "64", "--warmup", "3", "--min-iters", "5",
                     "--min-time", "0", "--no-progress", "--device", "cuda", "--backends",
                     "torch", "--precision", "fp32,fp16", "--channels-last", "--cuda-graphs",
                     "both", "--batch-sizes", "1,4", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert doc["environment"]["gpu"]["name"]
    assert doc["config"]["cudnn_benchmark"] is True
    got = {(r["precision"], r["cuda_graphs"], r["batch_size"], r["timing"])
           for r in doc["results"]}
    assert got == {(p, g, b, t) for p in ("fp32", "fp16") for g in (False, True)
                   for b in (1, 4) for t in ("e2e", "compute")}
    for row in doc["results"]:
        assert row["device"] == "cuda" and row["timer"] == "cuda_event"
        assert row["channels_last"] is True and row["iterations"] >= 5
        assert 0 < row["min_ms"] <= row["p50_ms"]


def test_markdown_shows_the_flags_and_what_to_do_about_a_busy_machine(cpu_run):
    doc = json.loads((cpu_run[0] / "bench.json").read_text())
    for row in doc["results"]:
        row.update(flags=[], flag_reasons=[], noisy=False)
    assert "--rounds 40" not in report.markdown(doc)
    row = doc["results"][0]
    row.update(flags=["BUSY"], flag_reasons=["load average 9.00 > 2 usable cores"])
    md = report.markdown(doc)
    assert "| BUSY: load average 9.00 > 2 usable cores |" in md
    assert "**BUSY rows:**" in md and "--rounds 40 --min-iters 40" in md


def _torch_rows(doc):
    return sorted((r for r in doc["results"] if r["backend"] == "torch"),
                  key=lambda r: r["batch_size"])


def test_eager_torch_collapse_is_flagged_and_explained(cpu_run):
    """The issue's busy 2-core figures: 6.72 ms at batch 1, 674.69 ms at batch 2..8."""
    from bench.stats import thread_collapse

    doc = json.loads((cpu_run[0] / "bench.json").read_text())
    assert not thread_collapse(doc["results"])  # this run (1 thread) did not collapse
    one, two = _torch_rows(doc)
    one["p50_ms"], two["p50_ms"] = 6.72, 674.69
    assert thread_collapse(doc["results"]) == [two]
    assert "THREADS-COLLAPSE" in two["flags"] and "outnumber the free cores" in \
        two["flag_reasons"][-1]
    assert "**THREADS-COLLAPSE rows:**" in report.markdown(doc)


def test_wide_round_ratios_are_not_quotable(cpu_run):
    doc = json.loads((cpu_run[0] / "bench.json").read_text())
    row = next(r for r in doc["results"] if r["backend"] == "onnxruntime" and r["batch_size"] == 2)
    row.update(speedup_vs_torch_rounds=289.84, speedup_vs_torch_rounds_iqr=[3.03, 406.73])
    md = report.markdown(doc)
    assert "not quotable (3.03-406.73x)" in md and "289.84x" not in md
    assert "not quotable, 3.03-406.73x" in report.summary_table(doc["results"])
    assert "**Not quotable (" in md
    row.update(speedup_vs_torch_rounds_iqr=[2.40, 2.52])
    assert "| 289.84x (2.40-2.52) |" in report.markdown(doc)
    assert "| rounds (max/min round p50) |" in report.markdown_table(doc["results"])


def test_lower_precisions_are_compared_with_fp32_of_the_same_runtime(cpu_run):
    doc = json.loads((cpu_run[0] / "bench.json").read_text())
    fp32 = next(r for r in doc["results"] if r["backend"] == "onnxruntime" and r["batch_size"] == 1)
    int8 = {**fp32, "precision": "int8", "label": "onnxruntime int8",
            "p50_ms": fp32["p50_ms"] / 2, "round_p50_ms":
            [v / 2 for v in fp32.get("round_p50_ms") or []]}
    other = {**int8, "backend": "openvino"}  # no FP32 openvino row: nothing to compare with
    rows = [*doc["results"], int8, other]
    report.add_speedups(rows)
    assert int8["speedup_vs_fp32"] == pytest.approx(2.0) and fp32["speedup_vs_fp32"] is None
    assert other["speedup_vs_fp32"] is None
    assert "; 2.00x fp32" in report.summary_table(rows)
    assert "| 2.00x |" in report.markdown_table([int8])


def test_busy_machine_gets_the_threads_it_can_give(monkeypatch):
    import bench.load as load
    from export.core.hardware import usable_cores

    monkeypatch.setattr(load, "others_cores", lambda before, after: float(usable_cores()))
    threads, note = load.free_threads(0.01)
    assert threads == 1
    if usable_cores() > 1:
        assert "the machine is busy" in note and "1 thread(s)" in note
    monkeypatch.setattr(load, "others_cores", lambda before, after: 0.0)
    assert load.free_threads(0.01) == (usable_cores(), None)


def test_no_progress_bar_off_a_terminal(tmp_path, cache_dir):
    args = [a for a in FAST if a != "--no-progress"]
    result = invoke([*args, "--backends", "null", "--batch-sizes", "1", "--threads", "1",
                     "--cache-dir", str(cache_dir), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "it/s" not in result.stderr and "%|" not in result.stderr
