"""End to end: privacy-mode "central" on the 20 VIRTUAL sites, on Flower's real simulation runtime.

Two rounds, σ = 1: Flower's accountant must log exactly the ε of two Gaussian releases (pinned, dp_accounting
RDP at δ = 1e-3), one server-ledger row per round, and `fedfusion audit` must pass. A refused setting must fail
before any process starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.config import ConfigError
from common.privacy.central import FEDERATION_SITE, parse_assumption
from common.privacy.ledger import Ledger
from simulations.driver import SimulationRequest, simulate

ROOT = Path(__file__).resolve().parents[2]
EPS = [3.5365620688888635, 5.420018242131793]  # dp_accounting RDP, σ = 1, k = 1, 2 releases, δ = 1e-3
SETTINGS = ['privacy-mode="central"', "min-available-nodes=20", "central-noise-multiplier=1.0",
            'fusion="late"', "hidden-dim=16", "local-epochs=2", "batch-size=8", "learning-rate=0.3"]


def test_refused_settings_fail_before_any_process(tmp_path):
    started = time.monotonic()
    with pytest.raises(ConfigError, match="hold different modalities"):
        simulate(SimulationRequest(scenario="hospitals", out=tmp_path / "run", rounds=2, progress=False,
                                   overrides={"privacy-mode": "central", "min-available-nodes": 4}))
    assert not (tmp_path / "run" / "logs" / "superlink.log").exists()
    assert time.monotonic() - started < 60


@pytest.mark.slow
def test_central_run_on_20_virtual_sites_is_accounted_recorded_and_audited(tmp_path):
    # Execute
    out = tmp_path / "central"
    cmd = [sys.executable, "-m", "simulations.cli", "simulate", "--scenario", "hospitals-virtual20", "--rounds", "2",
           "--out", str(out), "--quiet", *[a for s in SETTINGS for a in ("--set", s)]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Assert: the run finished and every virtual site trained and evaluated in both rounds
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] is True and summary["privacy_mode"] == "central"
    assert len(summary["sites"]) == 20 and all(s["rounds_trained"] == 2 for s in summary["sites"].values())
    assert summary["rounds"]["2"]["sites_evaluated"] == 20
    assert (out / "model.safetensors").stat().st_size > 0
    # one federation row per round, with the mechanism, the assumption, and Flower's ε = dp_accounting's
    ledger = Ledger(out / "ledger.sqlite")
    assert ledger.verify() == []
    rows = ledger.entries(site=FEDERATION_SITE)
    assert [(r.site, r.round, r.event) for r in rows] == [(FEDERATION_SITE, 1, "trained"), (FEDERATION_SITE, 2, "trained")]
    for row, eps in zip(rows, EPS, strict=True):
        assert (row.noise_multiplier, row.sample_rate, row.steps, row.max_grad_norm, row.delta) == (1.0, 1.0, 1, 1.0,
                                                                                                   1e-3)
        assert row.epsilon == pytest.approx(eps, rel=1e-12)
        assert parse_assumption(row.reason)["sampling"] == "no-amplification"
        assert parse_assumption(row.reason)["relation"] == "zero-out-one-site"
    assert summary["central_dp"]["epsilon"] == pytest.approx(EPS[1], rel=1e-12)
    # every site recorded its participation in its OWN ledger first: record-level, the server's σ/2, q = 1
    site_ledgers = sorted((out / "sites").glob("*/ledger.sqlite"))
    assert len(site_ledgers) == 20
    for path in site_ledgers:
        reserves = [r for r in Ledger(path).entries() if r.event == "reserve"]
        assert [(r.round, r.noise_multiplier, r.sample_rate, r.steps) for r in reserves] == [(1, 0.5, 1.0, 1),
                                                                                             (2, 0.5, 1.0, 1)]
    # and the server recorded each site's reply, as in sample mode
    assert len([r for r in ledger.entries() if r.site != FEDERATION_SITE and r.event == "trained"]) == 40
    # the audit recomputes the site-level ε from the ledger fields and passes
    audit = subprocess.run([sys.executable, "-m", "simulations.cli", "audit", str(out)], capture_output=True,
                           text=True, timeout=300, cwd=ROOT)
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr[-3000:]
    assert "audit PASSED" in audit.stdout
