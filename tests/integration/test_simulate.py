"""End to end: `fedfusion simulate` on Flower's real simulation runtime (SuperLink + Ray).

Two hospitals, two rounds; then a second run on the same site state that must continue from
the spent budget and decline once it is exhausted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.privacy.accountant import epsilon_from_history
from common.privacy.ledger import Ledger
from tests.data.heart_schema import SCENARIO_SCHEMA

pytestmark = pytest.mark.slow

SCENARIO = """
[scenario]
name = "two-hospitals"
description = "test: Cleveland with notes, VA without"

[[sites]]
name = "cleveland"
source = "mapped"
mapping = "mappings/uci-heart.toml"
select = { hospital = "cleveland" }
modalities = ["tabular", "text"]
privacy = { max-records = 250 }

[[sites]]
name = "va_long_beach"
source = "mapped"
mapping = "mappings/uci-heart.toml"
select = { hospital = "va_long_beach" }
modalities = ["tabular"]
privacy = { max-records = 160 }
"""


def _simulate(tmp: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    scenario = tmp / "two.toml"
    scenario.write_text(SCENARIO.replace("[scenario]\n", SCENARIO_SCHEMA.lstrip(), 1))
    cmd = [sys.executable, "-m", "simulations.cli", "simulate", "--scenario", str(scenario), "--out", str(out),
           "--quiet", "--set", "batch-size=64", "--set", "target-epsilon=2.0", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[2])


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sim")
    out = tmp / "run1"
    proc = _simulate(tmp, out, "--rounds", "2", "--set", "epsilon-budget=2.6")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, out, proc


def test_run_completes_and_writes_its_outputs(first_run):
    _, out, proc = first_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] is True
    for f in ("metrics.csv", "ledger.sqlite", "model.safetensors", "rounds.png"):
        assert (out / f).stat().st_size > 0, f
    assert set(summary["sites"]) == {"cleveland", "va_long_beach"}
    for s in summary["sites"].values():
        assert s["rounds_trained"] == 2 and s["rounds_declined"] == 0
        for key in ("epsilon", "epsilon_rdp", "target_epsilon", "delta", "noise_multiplier", "sample_rate",
                    "steps", "max_grad_norm"):
            assert s[key] is not None, key
        assert s["epsilon_rdp"] >= s["epsilon"]
    assert "cleveland" in proc.stdout and "ε (PRV)" in proc.stdout  # the table was printed


def test_ledgers_have_their_rows_and_epsilon_matches_the_logged_history(first_run):
    _, out, _ = first_run
    server = Ledger(out / "ledger.sqlite")
    assert server.verify() == []
    rows = server.entries()
    assert sorted((e.site, e.round, e.event) for e in rows) == [
        ("cleveland", 1, "trained"), ("cleveland", 2, "trained"),
        ("va_long_beach", 1, "trained"), ("va_long_beach", 2, "trained")]
    for site in ("cleveland", "va_long_beach"):
        ledger = Ledger(out / "sites" / site / "ledger.sqlite")
        assert ledger.verify() == []
        events = [(e.round, e.event) for e in ledger.entries(site=site)]
        assert events == [(1, "reserve"), (1, "confirm"), (2, "reserve"), (2, "confirm")]
        reserves = [e for e in ledger.entries(site=site) if e.event == "reserve"]
        eps1, eps2 = reserves[0].epsilon, reserves[1].epsilon
        assert eps2 > eps1 > 0
        history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in reserves]
        delta = reserves[0].delta
        assert eps1 == pytest.approx(epsilon_from_history(history[:1], delta=delta, accountant="prv"), rel=1e-6)
        assert eps2 == pytest.approx(epsilon_from_history(history, delta=delta, accountant="prv"), rel=1e-6)
        # the server's rows carry what the site reported, round by round
        srv = {e.round: e for e in rows if e.site == site}
        assert srv[1].epsilon == pytest.approx(eps1) and srv[2].epsilon == pytest.approx(eps2)
        # planned training (2 rounds) meets the target: ε after the last planned round <= target
        assert eps2 <= 2.0 + 1e-6


def test_second_run_on_same_site_state_continues_and_declines(first_run):
    tmp, out, _ = first_run
    before = json.loads((out / "summary.json").read_text())["sites"]
    out2 = tmp / "run2"
    # same calibration (2 planned rounds reach ε=2.0): run 2 round 1 -> ~2.43 fits the lifetime budget 2.6, round 2 (~2.8) does not
    proc = _simulate(tmp, out2, "--rounds", "2", "--set", "epsilon-budget=2.6", "--site-state", str(out / "sites"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = json.loads((out2 / "summary.json").read_text())["sites"]
    for site in ("cleveland", "va_long_beach"):
        # continues from the spent budget: never below what run 1 ended with, never above the budget
        assert after[site]["epsilon"] >= before[site]["epsilon"]
        assert after[site]["epsilon"] <= 2.6
        assert after[site]["rounds_declined"] >= 1  # the budget runs out within run 2
        ledger = Ledger(out / "sites" / site / "ledger.sqlite")
        assert ledger.verify() == []
        declines = [e for e in ledger.entries(site=site) if e.event == "decline"]
        assert declines and "lifetime budget" in declines[0].reason
    assert "declined to train" in proc.stdout
    # run 2's server ledger records the declined rounds
    server2 = Ledger(out2 / "ledger.sqlite")
    assert server2.verify() == []
    assert sum(e.event == "declined" for e in server2.entries()) >= 2
