"""bench.json read back (bench.schema, bench.report): the schema is checked in one place, before
anything reads the document; damaged shapes, NaN/Infinity, deep nesting, /dev/zero and FIFOs
are one line."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from bench import report
from bench.cli import main

from bench_fixtures import NULL, invoke
from cli_helpers import error_line

# ---------------------------------------------------------------------------------------------
# Damaged bench.json: the schema is checked in one place, before anything reads the document
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_doc(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good") / "run"
    result = invoke([*NULL, "--batch-sizes", "1", "--out", folder])
    assert result.exit_code == 0, result.output
    return json.loads((folder / "bench.json").read_text())


def _row(doc, **changes):
    doc = json.loads(json.dumps(doc))
    doc["results"][0].update(changes)
    return doc


DAMAGED = {
    "top-level array": lambda d: [d],
    "top-level string": lambda d: "bench",
    "results an object": lambda d: {**d, "results": {"0": d["results"][0]}},
    "a row a string": lambda d: {**d, "results": ["torch"]},
    "skipped a string": lambda d: {**d, "skipped": "none"},
    "a skip without a reason": lambda d: {**d, "skipped": [{"backend": "openvino"}]},
    "a skip with an empty reason": lambda d: {**d, "skipped": [{"backend": "x", "reason": ""}]},
    "p50 zero": lambda d: _row(d, p50_ms=0),
    "p50 negative": lambda d: _row(d, p50_ms=-1.5),
    "p50 a string": lambda d: _row(d, p50_ms="1.2"),
    "batch size a float": lambda d: _row(d, batch_size=1.5),
    "throughput a list": lambda d: _row(d, throughput_ips=[1]),
    "truncated input shape": lambda d: _row(d, input_shape=[1, 3]),
    "round medians strings": lambda d: _row(d, round_p50_ms=["a", "b"]),
    "flags a number": lambda d: _row(d, flags=3),
    "environment a list": lambda d: {**d, "environment": []},
    "timing without noise rule": lambda d: {**d, "config": {"timing": d["config"]["timing"]}},
    "another schema version": lambda d: {**d, "schema_version": 99},
}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_a_damaged_bench_json_is_one_line(tmp_path, good_doc, name):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(DAMAGED[name](good_doc)))
    line = error_line(CliRunner().invoke(main, ["report", str(path), "--out",
                                                str(tmp_path / "out")]))
    assert str(path) in line
    assert not (tmp_path / "out").exists()  # nothing written for a document not read


@pytest.mark.parametrize("text", ["Infinity", "NaN", "-Infinity"])
def test_non_finite_numbers_are_refused_while_parsing(tmp_path, good_doc, text):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(good_doc).replace('"p50_ms": ', f'"p50_ms": {text}, "was": ', 1))
    line = error_line(CliRunner().invoke(main, ["report", str(path), "--out",
                                                str(tmp_path / "out")]))
    assert "is not a number JSON allows" in line


def test_deeply_nested_json_is_one_line(tmp_path, good_doc):
    path = tmp_path / "bench.json"
    text = json.dumps(good_doc)
    path.write_text(text[:-1] + ', "deep": ' + "[" * 200_000 + "]" * 200_000 + "}")
    line = error_line(CliRunner().invoke(main, ["report", str(path), "--out",
                                                str(tmp_path / "out")]))
    assert "nested too deeply" in line


def test_a_device_is_never_read(tmp_path):
    line = error_line(CliRunner().invoke(main, ["report", "/dev/zero", "--out",
                                                str(tmp_path / "out")]))
    assert "/dev/zero is not a regular file" in line


def _fifo_writer(fifo):
    """Connects to ``fifo`` as a writer as soon as someone opens it for reading (bounded: the
    test ends either way); returns a flag that says whether anyone did."""
    import threading

    opened, stop = threading.Event(), threading.Event()

    def poll():
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader yet
                stop.wait(0.05)
                continue
            opened.set()
            os.close(fd)  # the reader sees end of file and goes on
            return

    threading.Thread(target=poll, daemon=True).start()
    return opened, stop


def test_a_fifo_is_never_opened(tmp_path):
    fifo = tmp_path / "bench.json"
    os.mkfifo(fifo)
    opened, stop = _fifo_writer(fifo)
    try:
        line = error_line(CliRunner().invoke(main, ["report", str(fifo), "--out",
                                                    str(tmp_path / "out")]))
    finally:
        stop.set()
    assert not opened.is_set(), "the FIFO was opened"
    assert "is not a regular file" in line


def test_the_schema_takes_every_document_a_run_writes(good_doc):
    report.validate(good_doc)
    report.validate(report.merge([good_doc, good_doc], ["a", "b"]))
