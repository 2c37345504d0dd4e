"""Issue 15, bytes: the packed downlink changes how the global model travels, not a single number. The same
federation (the real strategy, the real sites' ClientApp handler, in one process; every site's DP noise derived
from the run seed) run with packed train/evaluate messages and with Flower's own one-array-per-tensor messages ends
with a bit-identical global model, the same accuracy and the same ledger rows."""

from __future__ import annotations

import numpy as np
import pytest

import server.strategy
from common.config import app_defaults, parse_run_config, write_with_site_privacy
from tests.benchmarks.scripts import load_script

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def test_packed_and_per_tensor_downlinks_give_the_same_federation(tmp_path, monkeypatch):
    bench = load_script("robust_aggregation")  # its run_once: a whole federation in process, with its ledgers
    scenario = write_with_site_privacy(parse_run_config(app_defaults()).paths.scenario_file,
                                       tmp_path / "run-seed-noise.toml", {"noise-seed": "run-seed"})

    def federation(name: str) -> dict:
        return bench.run_once(aggregator="weighted-mean", attack="none", seed=0, rounds=1, work=tmp_path / name,
                              scenario=scenario, overrides=bench.RUN_SEED_NOISE, with_state=True)

    packed = federation("packed")
    monkeypatch.setattr(server.strategy, "pack_downlink", lambda messages: list(messages))  # Flower's own layout
    per_tensor = federation("per-tensor")

    assert list(packed["arrays"]) == list(per_tensor["arrays"])
    for k, v in packed["arrays"].items():
        np.testing.assert_array_equal(v, per_tensor["arrays"][k], err_msg=k)
    assert packed["accuracy"] == per_tensor["accuracy"]
    assert sorted(r[:3] for r in packed["ledger"]) == sorted(r[:3] for r in per_tensor["ledger"])
    assert {r[2] for r in packed["ledger"]} == {"trained"}  # every site trained: the round trip carried updates
