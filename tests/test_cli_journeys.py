"""What a user meets on the way: the tools' --help, defaults that say where files go, a run folder
given as a checkpoint, and an artifact whose project folder moved."""

import json
import re
import shutil
from pathlib import Path

import pytest

from bench.cli import main as bench_cli
from bench.onnx_cache import default_cache_dir
from export.cli import main as export_cli
from export.core.manifest import write_manifest

from built_artifacts import copy_project
from cli_helpers import invoke as run_cli


def invoke(cli, args, name):
    return run_cli(cli, args, catch_exceptions=True, prog_name=name, terminal_width=200)


def test_export_help_is_the_tools_help_and_lists_verify():
    result = invoke(export_cli, ["--help"], "resnet-export")
    assert result.exit_code == 0
    assert result.output.startswith("Usage: resnet-export [OPTIONS]\n")
    assert not re.search(r"\bbuild\b", result.output)  # the default command shows no name
    assert "--checkpoint" in result.output and "--fmt" in result.output
    commands = result.output.split("Commands:")[1]
    assert "verify FOLDER" in commands and "Re-run the parity gate" in commands


def test_bench_help_lists_report_and_where_the_cache_is(monkeypatch, tmp_path):
    result = invoke(bench_cli, ["--help"], "resnet-bench")
    assert result.exit_code == 0
    assert result.output.startswith("Usage: resnet-bench [OPTIONS]\n")
    assert "report RUNS..." in result.output.split("Commands:")[1]
    help_text = " ".join(result.output.split())
    assert "$XDG_CACHE_HOME/resnet-deploy/bench-onnx, or ~/.cache/resnet-deploy/bench-onnx " \
           "without XDG_CACHE_HOME" in help_text
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == Path.home() / ".cache/resnet-deploy/bench-onnx"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "resnet-deploy/bench-onnx"


def test_report_without_out_writes_a_new_report_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    result = invoke(bench_cli, ["--depth", "18", "--input-size", "32", "--backends", "null",
                                "--batch-sizes", "1", "--warmup", "0", "--no-steady-warmup",
                                "--min-iters", "1", "--min-time", "0", "--no-progress",
                                "--threads", "1", "--out", run], "resnet-bench")
    assert result.exit_code == 0, result.output
    result = invoke(bench_cli, ["report", run], "resnet-bench")
    assert result.exit_code == 0, result.output
    (out,) = (tmp_path / "artifacts/bench").iterdir()
    assert out.name.startswith("report-")
    assert sorted(p.name for p in out.iterdir()) == ["bench.csv", "bench.json", "bench.md",
                                                     "bench.png"]
    assert f"wrote {out.relative_to(tmp_path)}/bench.json" in result.stderr


def test_a_run_folder_as_checkpoint_suggests_its_best_pt(tmp_path):
    run = tmp_path / "artifacts/train/resnet20-digits"
    run.mkdir(parents=True)
    (run / "best.pt").write_bytes(b"")
    result = invoke(export_cli, ["--checkpoint", run], "resnet-export")
    assert result.exit_code == 1
    assert result.stderr.strip() == \
        f"Error: {run} is a training run folder; did you mean {run / 'best.pt'}?"


def test_a_project_copied_elsewhere_still_verifies(tmp_path, trained_project):
    project = copy_project(trained_project, tmp_path / "copy")
    artifact = project / "artifacts/resnet20-digits-onnx"
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["source"]["relative_path"] == "../train/resnet20-digits/best.pt"
    assert Path(manifest["source"]["path"]).is_absolute()
    # as if the project had been made at another place that no longer exists
    manifest["source"]["path"] = str(tmp_path / "gone/artifacts/train/resnet20-digits/best.pt")
    write_manifest(artifact, manifest)  # sealed anew, as an export there would have written it
    result = invoke(export_cli, ["verify", artifact], "resnet-export")
    assert result.exit_code == 0, result.output
    assert f"verified {artifact}: PASS" in result.output

    for bad in ("/etc/passwd", "", 7):  # the schema check refuses what is not a relative path
        (artifact / "manifest.json").write_text(json.dumps(
            {**manifest, "source": {**manifest["source"], "relative_path": bad}}))
        result = invoke(export_cli, ["verify", artifact], "resnet-export")
        assert result.exit_code == 1 and "source.relative_path must be a relative path" in \
            result.stderr
    write_manifest(artifact, manifest)

    shutil.rmtree(project / "artifacts/train")
    result = invoke(export_cli, ["verify", artifact], "resnet-export")
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: the source weights {manifest['source']['path']} are gone "
                           f"(nor at {artifact / '../train/resnet20-digits/best.pt'})")


@pytest.mark.parametrize("args", [["--depth", "20", "--help"], ["build", "--help"]])
def test_the_default_command_still_answers_by_name_and_without(args):
    result = invoke(export_cli, args, "resnet-export")
    assert result.exit_code == 0 and "--batch-range" in result.output
