"""resnet-predict against hostile input: no FIFO read forever, threads bounded by the machine,
names escaped (JSON exact)."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from cli_helpers import error_line

pytestmark = pytest.mark.usefixtures("one_dynamo_export_per_weights")


# ---------------------------------------------------------------------------------------------
# resnet-predict: no FIFO read forever, threads bounded by the machine, names escaped
# ---------------------------------------------------------------------------------------------


def _predict(*args):
    from export.predict.cli import main as predict_cli

    return CliRunner().invoke(predict_cli, [str(a) for a in args])


def test_predict_never_opens_a_fifo_given_as_an_image(tmp_path, art):
    import threading

    from PIL import Image

    Image.new("RGB", (16, 16), (40, 80, 120)).save(tmp_path / "good.png")
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    opened, stop = threading.Event(), threading.Event()

    def writer():  # connects as soon as anyone opens the FIFO for reading: bounded either way
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                stop.wait(0.05)
                continue
            opened.set()
            os.close(fd)
            return

    threading.Thread(target=writer, daemon=True).start()
    try:
        result = _predict(art, fifo, tmp_path / "good.png")
    finally:
        stop.set()
    assert not opened.is_set(), "the FIFO was opened"
    line = error_line(result)
    assert f"{fifo} is not a regular file" in line
    assert "1 image(s) classified" in result.stderr


@pytest.mark.parametrize("threads", ["4000", "100000"])
def test_predict_threads_are_bounded_by_the_machine(art, threads):
    from export.core.hardware import usable_cores

    line = error_line(_predict(art, "x.png", "--threads", threads), code=2)
    assert f"--threads {threads}: this process may run on {usable_cores()} core(s)" in line


def test_predict_escapes_names_in_its_table_and_errors_and_json_keeps_them(tmp_path, art):
    from PIL import Image

    good = tmp_path / "two\x1b[2J\nFAKE 100%.png"
    Image.new("RGB", (16, 16), (40, 80, 120)).save(good)
    bad = tmp_path / "\x1b[31mred\u202e.png"
    bad.write_bytes(b"not an image")
    result = _predict(art, good, bad)
    assert "\x1b" not in result.output and "\u202e" not in result.output
    assert "FAKE 100%" in result.stdout and "\\x1b[2J\\nFAKE" in result.stdout
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("Error")]
    assert "\\x1b[31mred\\u202e.png" in line
    doc = json.loads(_predict(art, good, bad, "--json").stdout)
    assert doc["results"][0]["path"] == str(good)
    assert doc["errors"][0]["path"] == str(bad)
