"""The benchmark scripts stay runnable: each one at its smallest size prints its table (numbers not judged)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"


def _run(script: str, *args: str, timeout: int = 900) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _floor_server():
    spec = importlib.util.spec_from_file_location("floor_server", BENCH / "floor_app" / "floor_server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_floor_app_shapes_are_parsed_and_refused_clearly():
    parse = _floor_server().parse_shapes
    assert parse("a:64x14,b:64") == {"a": (64, 14), "b": (64,)}
    for bad in ("", "a", "a:", ":3"):
        with pytest.raises(ValueError):
            parse(bad)


@pytest.mark.slow
def test_dp_step_prints_every_mode_for_the_default_model():
    out = _run("dp_step.py", "--steps", "1", "--repeats", "1", "--threads", "1", "--models", "default")
    for mode in ("plain", "hooks", "functorch", "ghost", "ew", "fused", "ghost-opacus"):  # ours and Opacus' own ghost
        assert mode in out
    assert "unsupported" in out  # ExpandedWeights cannot take the model's dict input; said, not hidden


@pytest.mark.slow
def test_aggregation_prints_throughput_and_memory():
    out = _run("aggregation.py", "--replies", "3", "--resnet-replies", "1", "--repeats", "1", "--no-bytes",
               "--memory-counts", "1,2")
    assert "numpy sum (floor)" in out and "ours: read + merge" in out and "Flower FedAvg" in out
    assert "memory the aggregation adds" in out
    assert "packed (sample): ours: read + merge" in out and "per tensor (central): ours: read + merge" in out


def test_reply_steps_prints_each_step_of_reading_packed_replies():
    out = _run("reply_steps.py", "--replies", "3", "--resnet-replies", "1", "--repeats", "1")
    for row in ("numpy sum (floor)", "records read once", "array checks (fast path)", "array checks (exact only)",
                "merge (packed vectors)", "merge (tensor by tensor)"):
        assert row in out


@pytest.mark.slow
def test_aggregate_train_times_the_whole_round_against_the_numpy_floor():
    out = _run("aggregate_train.py", "--replies", "3")
    assert "3 replies: numpy sum" in out and "aggregate_train" in out


@pytest.mark.slow
def test_flower_floor_runs_through_the_simulation_pipeline(tmp_path):
    result = tmp_path / "floor.json"
    out = _run("flower_floor.py", "--shape", "2x2", "--json", str(result))
    assert "floor (Flower, numpy)" in out
    floor = json.loads(result.read_text())["2 nodes x 2 rounds @ 100%"]["floor"]
    assert len(floor["round_s"]) == 2 and floor["per_round"] == 2 and floor["total_s"] > sum(floor["round_s"])


def test_flower_floor_checks_each_later_round_against_floor_plus_the_slowest_sites_compute():
    module = load_script("flower_floor")
    ours = module.Result(50.0, [27.0, 0.555, 0.40, 0.90], 5.0, 4, [1.0, 0.25, 0.20, 0.30])
    floor = module.Result(20.0, [9.0, 0.20, 0.20, 0.10], 2.0, 4)
    line = module._round_goal(ours, floor)  # excess: 0.555-0.475, 0.40-0.42, 0.90-0.43 -> +0.08, -0.02, +0.47
    assert "compute median 0.25 s" in line and "median +0.08 s" in line and "1/3 rounds within" in line
