"""The Ray engine on a cluster: ``--autoscale MIN:MAX`` becomes Ray Serve's autoscaling config
(checked without Ray running), and (slow) a real two-node Ray cluster started with ``ray start``
on this machine by scripts/ray_two_nodes.py: replicas on both nodes, the same answers as
in-process, a node killed under load without a wrong answer, everything stopped at the end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from export.serve.cli import main
from export.serve.server import ServeConfig, plan_threads

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ray_two_nodes.py"


@pytest.mark.parametrize("value", ["2:1", "0:3", "3", "a:b", "1:257"])
def test_autoscale_bounds_are_checked_in_one_line(value, tmp_path):
    result = CliRunner().invoke(main, [str(tmp_path), "--autoscale", value])
    assert result.exit_code == 2
    assert "MIN:MAX" in result.output and "Traceback" not in result.output


def test_autoscale_and_replicas_together_are_refused(tmp_path):
    result = CliRunner().invoke(main, [str(tmp_path), "--autoscale", "2:4", "--replicas", "3"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: --replicas and --autoscale both given: give one (--autoscale MIN:MAX sets the "
        "replica count)"]


def test_threads_are_shared_among_the_minimum_replicas():
    cfg = ServeConfig([], autoscale=(2, 6))
    assert plan_threads(cfg, models=1, cpus=8)[:2] == (4, 4.0)
    assert plan_threads(ServeConfig([], replicas=4), models=1, cpus=8)[:2] == (2, 2.0)


def test_autoscale_becomes_ray_serves_autoscaling_config():
    pytest.importorskip("ray.serve", reason="the serve extra (Ray Serve) is not installed")
    from export.serve.deployment import ModelOptions, model_app

    opts = ModelOptions("/nowhere", "m", "auto", 1, 8, 0.002, {})
    fixed = model_app(opts, 3, 1.0)._bound_deployment
    assert fixed.num_replicas == 3 and fixed._deployment_config.autoscaling_config is None
    scaled = model_app(opts, 1, 1.0, (2, 5))._bound_deployment._deployment_config
    auto = scaled.autoscaling_config
    assert (auto.min_replicas, auto.initial_replicas, auto.max_replicas) == (2, 2, 5)
    assert auto.target_ongoing_requests == 8  # a full batch each before another replica
    assert scaled.max_ongoing_requests == 16


@pytest.mark.slow
def test_two_node_cluster_same_answers_and_a_node_killed_under_load(onnx_artifact, tmp_path):
    pytest.importorskip("ray.serve", reason="the serve extra (Ray Serve) is not installed")
    out = tmp_path / "cluster.json"
    result = subprocess.run([sys.executable, str(SCRIPT), str(onnx_artifact), "--json", str(out),
                             "--seconds", "40", "--kill-at", "12"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(out.read_text())
    print("\n" + json.dumps(doc, indent=1))
    assert sorted(doc["replicas"].values()) == ["head", "worker"]  # spread over both nodes
    same = doc["same_answers"]
    assert same["max_abs_diff"] <= 1e-5 and same["top1_equal"] == same["images"] == 128
    kill = doc["kill"]
    assert kill["wrong"] == 0 and kill["killed_processes"] > 0
    assert kill["errors"] <= 16  # about the requests in flight on the killed node
    assert kill["errors_between_s"][0] >= kill["kill_at_s"] or kill["errors"] == 0
    assert kill["ok_in_last_5s"] > 20  # the head node still answers
    assert set(doc["replicas_after"].values()) == {"head"}  # the lost replica re-placed there
    assert doc["auth"]["with_token_rc"] == 0 and doc["auth"]["without_token_rc"] != 0
    assert doc["left_running"] == 0
    http = [line for line in doc["listening"] if line.endswith(f":{doc['http_port']}")]
    assert http and all(" 127.0.0.1:" in line for line in http)  # the proxies bind --host
