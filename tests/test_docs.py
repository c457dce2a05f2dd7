"""The documentation runs: every ```python block in README.md and docs/*.md is executed, and the
folders that examples and help texts name are folders the tools really create.

A block runs in a fresh, empty current folder with this checkout's packages. A block that needs
files declares it in an HTML comment on the line before its fence (invisible when rendered)::

    <!-- setup: trained-artifact, digit-pngs -->
    ```python
    ...

A block checks what it prints: the ```text block that follows it behind ``<!-- output -->`` is
what it must print (``...`` stands for any text, as in doctest's ELLIPSIS; runs of blank space
compare equal). A block that prints nothing checked must assert what it shows.

Setups: ``trained-artifact`` (``artifacts/train/resnet20-digits/`` from ``resnet-train`` and
``artifacts/resnet20-digits-onnx/`` exported from its best.pt, as in the quick start, but trained
for a few steps only) and ``digit-pngs`` (``digits/0.png`` ... ``digits/9.png``, one test-split
image of each class, 8x8 grayscale).
"""

import ast
import doctest
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from export.core.manifest import FORMATS
from export.core.models import model_names

from built_artifacts import copy_project

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!--\s*setup:(?P<setup>[^>]*?)-->\n)?```python\n(?P<code>.*?)^```\n"
                   r"(?:<!--\s*output\s*-->\n```text\n(?P<output>.*?)^```)?", re.S | re.M)


def write_digit_pngs(cwd: Path, _request: object) -> None:
    from export.data import describe_source, scan, split_indices

    dataset = describe_source(None)
    scanned = scan(dataset)
    test = split_indices(scanned.labels, 0, 0.1, 0.2).test
    (cwd / "digits").mkdir()
    for digit in range(10):
        first = test[scanned.labels[test] == digit][0]
        Image.fromarray(scanned.decode(np.array([first]), 8)[0, 0]).save(
            cwd / "digits" / f"{digit}.png")


SETUPS = {"trained-artifact": lambda cwd, request: copy_project(
              request.getfixturevalue("trained_project"), cwd),
          "digit-pngs": write_digit_pngs}


def blocks():
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for match in BLOCK.finditer(text):
            line = text[:match.start("code")].count("\n")
            setups = [s.strip() for s in (match["setup"] or "").split(",") if s.strip()]
            found.append(pytest.param(match["code"], setups, match["output"],
                                      id=f"{doc.relative_to(REPO)}:{line}"))
    return found


BLOCKS = blocks()


def test_the_blocks_are_found():
    ids = {p.id.split(":")[0] for p in BLOCKS}
    assert {"README.md", "docs/export.md", "docs/predict.md", "docs/training.md"} <= ids


@pytest.mark.parametrize("code,setups,output", BLOCKS)
def test_python_block_prints_what_the_doc_shows(code, setups, output, tmp_path, request):
    asserts = any(isinstance(node, ast.Assert) for node in ast.walk(ast.parse(code)))
    assert output is not None or asserts, "the block checks nothing: show its output or assert"
    unknown = [s for s in setups if s not in SETUPS]
    assert not unknown, f"unknown setup {unknown}; known: {sorted(SETUPS)}"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for name in setups:
        SETUPS[name](cwd, request)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"the block failed:\n{code}\n{done.stdout}\n{done.stderr}"
    if output is not None:
        flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        assert doctest.OutputChecker().check_output(output, done.stdout, flags), (
            f"the block printed\n{done.stdout}\nwhere the doc shows\n{output}")


def test_output_checks_fail_on_other_output():
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    check = doctest.OutputChecker().check_output
    assert check("1 10 269434\n", "1  10 269434\n", flags)
    assert not check("1 10 269434\n", "1 10 269435\n", flags)
    assert not check("... ...%\n", "3\n", flags)


# --- folders named in examples and help texts -------------------------------------------------

MODEL = "(" + "|".join(re.escape(m) for m in model_names()) + ")"
FMT = "(" + "|".join(re.escape(f) for f in FORMATS) + r")(-[a-z0-9]+)?"  # trt-fp32, ...
#: what the tools create under artifacts/ (resnet-export, resnet-train, resnet-bench)
CREATED = [re.compile(p) for p in (
    r"artifacts/?$",
    rf"artifacts/(<model>|{MODEL})(-[\w.]+)?-(<fmt>|{FMT})(/.*)?$",
    rf"artifacts/train/(<model>|\*|{MODEL})-(<data>|[\w.]+)(-\d+)?(/.*)?$",
    r"artifacts/bench(/.*)?$",
    rf"artifacts/plan(/(<model>|{MODEL})-(<device>|cpu|cuda)(/.*)?)?$",
)]
PATH = re.compile(r"artifacts/[\w./<>*-]*")


def help_texts():
    from bench.cli import main as bench
    from export.cli import main as export
    from export.plan.cli import main as plan
    from export.predict.cli import main as predict
    from export.train.cli import main as train

    for name, cli, args in (("resnet-export", export, ["--help"]),
                            ("resnet-export", export, ["verify", "--help"]),
                            ("resnet-bench", bench, ["--help"]),
                            ("resnet-bench", bench, ["report", "--help"]),
                            ("resnet-train", train, ["--help"]),
                            ("resnet-predict", predict, ["--help"]),
                            ("resnet-plan", plan, ["--help"]),
                            ("resnet-plan", plan, ["verify", "--help"])):
        result = CliRunner().invoke(cli, args, prog_name=name, terminal_width=200)
        assert result.exit_code == 0, result.output
        yield " ".join([name, *args]), result.output


def named_paths():
    for name, text in help_texts():
        yield from ((f"{name}: {p}", p) for p in PATH.findall(text))
    for doc in DOCS:
        for block in re.findall(r"```(?:bash|text|python)?\n(.*?)```", doc.read_text(), re.S):
            yield from ((f"{doc.name}: {p}", p) for p in PATH.findall(block))


def test_examples_name_folders_the_tools_create():
    named = list(named_paths())
    assert len(named) > 10
    wrong = [where for where, path in named
             if not any(p.match(path.rstrip(".,;:)")) for p in CREATED)]
    assert not wrong, "folders no tool creates:\n" + "\n".join(wrong)
