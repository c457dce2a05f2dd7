"""resnet-batch: every source kind gives resnet-predict's predictions, each image exactly once,
resumed or not; bad input is one line and a non-zero exit; a bad image is a row of errors.parquet.

The default tests run the command in this process with ``--workers 0`` (decoding in the main
process: no fork of the test runner); one runs it as the user does, in a process of its own with
decode workers. The kill -9 test and Ray Data are marked slow.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from export.batch import local
from export.batch.cli import main
from export.predict import Predictor

REPO = Path(__file__).resolve().parents[1]


def write_digits(root: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` small PNGs in class folders 0..9 (grey 8x8, plus some RGB 12x10 ones)."""
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        folder = root / str(i % 10)
        folder.mkdir(parents=True, exist_ok=True)
        shape = (10, 12, 3) if i % 7 == 3 else (8, 8)
        path = folder / f"img{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        files.append(path)
    return files


def run(*args: object, code: int = 0) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def predictions(out: Path) -> pa.Table:
    return pq.read_table(out / "predictions")


def rows(out: Path) -> list[tuple]:
    t = predictions(out).to_pydict()
    return list(zip(t["key"], t["top_classes"], t["top_probabilities"]))


def expected(artifact: Path, files: list[Path]) -> dict[str, tuple[list[str], list[float]]]:
    """resnet-predict's Predictor on the same files: name -> (top classes, probabilities)."""
    with Predictor.load(artifact) as predictor:
        return {r.path.name: ([p.label for p in r.top or []],
                              [p.probability for p in r.top or []])
                for r in predictor.iter_files(files, top=5)}


def assert_same_as_predictor(out: Path, want: dict[str, tuple[list[str], list[float]]],
                             name=lambda key: key.rsplit("/", 1)[-1]) -> None:
    got = {name(k): (c, p) for k, c, p in rows(out)}
    assert set(got) == set(want)
    for key, (classes, probs) in want.items():
        assert got[key][0] == classes, key
        np.testing.assert_allclose(got[key][1], probs, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("digits") / "images"
    return root, write_digits(root, 30)


def test_folder_gives_the_predictors_predictions_and_the_score(onnx_artifact, digits,
                                                               tmp_path):
    root, files = digits
    out = tmp_path / "out"
    text = run(onnx_artifact, root, "--out", out, "--workers", "0", "--shard-size", "7")
    assert_same_as_predictor(out, expected(onnx_artifact, files))
    table = predictions(out)
    assert table.num_rows == 30 and len(set(table["key"].to_pylist())) == 30
    assert table["label"].to_pylist() == [k.split("/")[0] for k in table["key"].to_pylist()]
    assert sorted(p.name for p in (out / "predictions").iterdir()) == \
        [f"part-{i:06d}.parquet" for i in range(5)]
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "complete" and job["counts"]["images"] == 30
    assert job["evaluation"]["images"] == 30
    assert "accuracy against the folder names" in text
    assert pq.read_table(out / "errors.parquet").num_rows == 0


def test_list_tar_and_parquet_sources(onnx_artifact, digits, tmp_path):
    root, files = digits
    want = expected(onnx_artifact, files)
    listing = tmp_path / "paths.txt"
    listing.write_text("# images\n" + "".join(f"{f}\n" for f in files))
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for f in files:
            tar.add(f, arcname=f"{f.stem}.png")
            label = f"{f.parent.name}\n".encode()
            info = tarfile.TarInfo(f"{f.stem}.cls")
            info.size = len(label)
            tar.addfile(info, io.BytesIO(label))
    table = pa.table({"name": [f.name for f in files], "png": [f.read_bytes() for f in files]})
    pq.write_table(table, tmp_path / "images.parquet", row_group_size=8)
    run(onnx_artifact, listing, "--out", tmp_path / "o-list", "--workers", "0")
    assert_same_as_predictor(tmp_path / "o-list", want)
    run(onnx_artifact, shard, "--out", tmp_path / "o-tar", "--workers", "0")
    assert_same_as_predictor(tmp_path / "o-tar", want)
    run(onnx_artifact, tmp_path / "images.parquet", "--column", "png", "--out",
        tmp_path / "o-pq", "--workers", "0", "--shard-size", "5")
    by_row = {f"images.parquet#{i}": want[f.name] for i, f in enumerate(files)}
    assert_same_as_predictor(tmp_path / "o-pq", by_row, name=lambda k: k)


def test_decode_workers_in_a_process_of_its_own(onnx_artifact, digits, tmp_path):
    """As the user runs it: workers forked, the runner in the main process, --logits kept."""
    root, files = digits
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "export.batch.cli", str(onnx_artifact),
                           str(root), "--out", str(out), "--workers", "1", "--threads", "1",
                           "--logits", "--top-k", "3", "--shard-size", "8"],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "1 decode worker process(es), 1 runtime thread(s)" in done.stderr
    want = expected(onnx_artifact, files)
    t = predictions(out).to_pydict()
    for key, classes, logits in zip(t["key"], t["top_classes"], t["logits"]):
        assert classes == want[key.rsplit("/", 1)[-1]][0][:3]
        assert len(logits) == 10 and int(np.argmax(logits)) == int(classes[0])


def test_resume_after_a_stop_gives_the_same_rows(onnx_artifact, digits, tmp_path):
    root, _ = digits
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run(onnx_artifact, root, "--out", whole, "--workers", "0", "--shard-size", "4")
    run(onnx_artifact, root, "--out", resumed, "--workers", "0", "--shard-size", "4")
    # as a kill leaves it: shard 2 never committed, shard 5 written but not marked
    for name in ("part-000002", "part-000005"):
        (resumed / "_committed" / f"{name}.json").unlink()
    (resumed / "predictions" / "part-000002.parquet").unlink()
    (resumed / "predictions" / ".part-000006.parquet.123.tmp").write_bytes(b"half")
    job = json.loads((resumed / "job.json").read_text())
    (resumed / "job.json").write_text(json.dumps({**job, "status": "running"}))
    text = run(onnx_artifact, root, "--out", resumed, "--workers", "0", "--shard-size", "4")
    assert "this run: 8 image(s)" in text and "6 shard(s) already committed" in text
    assert rows(resumed) == rows(whole)
    assert not list((resumed / "predictions").glob(".*"))


def test_another_job_in_the_folder_refuses_unless_restart(onnx_artifact, digits, tmp_path):
    root, _ = digits
    out = tmp_path / "out"
    run(onnx_artifact, root, "--out", out, "--workers", "0")
    text = run(onnx_artifact, root, "--out", out, "--workers", "0", "--top-k", "2", code=1)
    assert "another top_k (5 then, 2 now)" in text and "--restart" in text
    assert text.count("\n") == 1
    run(onnx_artifact, root, "--out", out, "--workers", "0", "--top-k", "2", "--restart")
    assert len(predictions(out)["top_classes"][0].as_py()) == 2


def test_a_source_changed_since_a_commit_refuses(onnx_artifact, tmp_path):
    files = write_digits(tmp_path / "images", 12)
    out = tmp_path / "out"
    run(onnx_artifact, tmp_path / "images", "--out", out, "--workers", "0", "--shard-size", "4")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(files[0])
    os.utime(files[0], ns=(0, 10**9))
    text = run(onnx_artifact, tmp_path / "images", "--out", out, "--workers", "0",
               "--shard-size", "4", code=1)
    assert "the source changed since part-000000 was committed" in text


def test_a_source_changed_while_the_job_runs_stops_it(onnx_artifact, tmp_path, monkeypatch):
    write_digits(tmp_path / "images", 40)
    touched = tmp_path / "images/2/img0002.png"  # in shard 2 (folder 0 is shard 0, 1 is 1)
    out = tmp_path / "out"
    real, calls = local.infer, []

    def infer_then_touch(*args):
        calls.append(1)
        if len(calls) == 1:  # shard 0 is being inferred; shard 2 is listed, not yet decoded
            os.utime(touched, ns=(0, 10**9))
        return real(*args)

    monkeypatch.setattr(local, "infer", infer_then_touch)
    text = run(onnx_artifact, tmp_path / "images", "--out", out, "--workers", "0",
               "--shard-size", "4", "--batch-size", "4", code=1)
    last = text.splitlines()[-1]
    assert "img0002.png changed while the job ran" in last and "Traceback" not in text
    assert (out / "_committed/part-000001.json").exists()
    assert not (out / "_committed/part-000002.json").exists()


def test_a_full_disk_stops_in_one_line_and_the_rerun_completes(onnx_artifact, digits,
                                                                tmp_path, monkeypatch):
    import errno

    from export.batch import shards

    root, _ = digits
    run(onnx_artifact, root, "--out", tmp_path / "whole", "--workers", "0", "--shard-size", "8")
    out = tmp_path / "out"
    real, writes = shards.pq.write_table, []

    def fill_up(table, where, *args, **kwargs):
        writes.append(where)
        if len(writes) == 5:  # shard 2's predictions
            Path(where).write_bytes(b"PAR1")  # half a file, as a full disk leaves it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(table, where, *args, **kwargs)

    monkeypatch.setattr(shards.pq, "write_table", fill_up)
    text = run(onnx_artifact, root, "--out", out, "--workers", "0", "--shard-size", "8", code=1)
    assert "cannot write part-000002" in text.splitlines()[-1] and "No space left" in text
    monkeypatch.setattr(shards.pq, "write_table", real)
    run(onnx_artifact, root, "--out", out, "--workers", "0", "--shard-size", "8")
    assert rows(out) == rows(tmp_path / "whole")
    assert not [p for p in out.rglob(".*") if p.name != ".resnet-batch.lock"]


def test_bad_image_goes_to_errors_and_the_job_goes_on(onnx_artifact, tmp_path):
    write_digits(tmp_path / "images", 9)
    (tmp_path / "images" / "3" / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    text = run(onnx_artifact, tmp_path / "images", "--out", out, "--workers", "0")
    assert "9 predicted, 1 unreadable (listed in errors.parquet)" in text
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert [e["key"] for e in errors] == ["3/broken.png"]
    assert "cannot read image 3/broken.png" in errors[0]["error"]
    assert predictions(out).num_rows == 9


@pytest.mark.parametrize("case", ["missing", "not-bytes", "tar-member", "foreign-out"])
def test_bad_input_is_one_line(onnx_artifact, tmp_path, case):
    write_digits(tmp_path / "images", 3)
    out = tmp_path / "out"
    args: list[object] = ["--out", out, "--workers", "0"]
    if case == "missing":
        source, message = tmp_path / "nothing-here", "cannot read source"
    elif case == "not-bytes":
        source, message = tmp_path / "t.parquet", "column 'png' of"
        pq.write_table(pa.table({"png": [1, 2]}), source)
        args += ["--column", "png"]
    elif case == "tar-member":
        source, message = tmp_path / "s.tar", "'a.exe' is not an image"
        with tarfile.open(source, "w") as tar:
            tar.add(tmp_path / "images/0/img0000.png", arcname="a.png")
            tar.add(tmp_path / "images/1/img0001.png", arcname="a.exe")
    else:
        source, message = tmp_path / "images", "holds files that are not a resnet-batch job"
        out.mkdir()
        (out / "report.csv").write_text("mine\n")
    text = run(onnx_artifact, source, *args, code=1)
    assert message in text.splitlines()[-1] and "Traceback" not in text
    if case == "foreign-out":
        assert sorted(p.name for p in out.iterdir()) == ["report.csv"]


def test_a_shards_top_k_is_the_predictors_value_for_value():
    from export.batch.shards import top_arrays
    from export.predict.predictor import top_k

    logits = np.random.default_rng(1).standard_normal((50, 10)).astype(np.float32)
    logits[3, [2, 7]] = logits[3].max() + 1  # a tie: the lower class first, as argmax says
    index, probs = top_arrays(logits, 4)
    want = top_k(logits, [str(i) for i in range(10)], 4)
    assert index.tolist() == [[p.index for p in row] for row in want]
    assert probs.tolist() == [[p.probability for p in row] for row in want]
    assert index[3, :2].tolist() == [2, 7]


def _kill_at(args: list[str], env: dict, seconds: float) -> None:
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    time.sleep(seconds)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_kill_9_at_several_moments_then_rerun(onnx_artifact, tmp_path):
    files = write_digits(tmp_path / "images", 600, seed=3)
    assert len(files) == 600
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = [sys.executable, "-m", "export.batch.cli", str(onnx_artifact),
            str(tmp_path / "images"), "--shard-size", "25", "--workers", "1", "--threads", "1"]
    subprocess.run([*base, "--out", str(tmp_path / "whole")], env=env, check=True,
                   capture_output=True, timeout=600)
    out = tmp_path / "killed"
    for seconds in (3.0, 5.0, 6.5, 8.0, 10.0):
        _kill_at([*base, "--out", str(out)], env, seconds)
    done = subprocess.run([*base, "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert rows(out) == rows(tmp_path / "whole")
    keys = predictions(out)["key"].to_pylist()
    assert len(keys) == len(set(keys)) == 600


@pytest.mark.slow
def test_ray_data_gives_the_local_engines_rows(onnx_artifact, digits, tmp_path):
    """A local Ray (2 CPUs) in a process of its own; the same rows, bit for bit."""
    pytest.importorskip("ray.data", reason="needs Ray Data (the batch extra)")
    root, _ = digits
    run(onnx_artifact, root, "--out", tmp_path / "local", "--workers", "0", "--shard-size", "8")
    done = subprocess.run([sys.executable, "-m", "export.batch.cli", str(onnx_artifact),
                           str(root), "--out", str(tmp_path / "ray"), "--engine", "ray",
                           "--shard-size", "8"],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Ray actor(s) x 1 runtime thread(s)" in done.stderr
    assert rows(tmp_path / "ray") == rows(tmp_path / "local")


def test_a_folder_source_streams_in_name_order_and_ends_a_link_loop(tmp_path):
    """resnet-batch walks a folder with the walker training and prediction use: depth first,
    each folder by name, hidden entries and other file types left out, a link back up read
    once; keys are relative to the folder."""
    from export.batch.sources import check_sources, items

    root = tmp_path / "photos"
    for name in ("b/2.png", "b/1.jpg", "a.png", "c/d/3.PNG", ".hidden/4.png", "b/.5.png",
                 "notes.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    os.symlink(root, root / "c" / "d" / "up")
    keys = [item.key for item in items(check_sources([root], None))]
    assert keys == ["a.png", "b/1.jpg", "b/2.png", "c/d/3.PNG"]
