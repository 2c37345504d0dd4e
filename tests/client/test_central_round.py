"""A site's round in privacy-mode "central": plain SGD, the whole model back in the server's key order."""

from __future__ import annotations

from pathlib import Path

import torch

from client.round import SiteRound
from common.config import app_defaults, load_scenario, parse_run_config, resolve_site
from common.factory import build_model, initial_trainable_state
from common.records import NUM_EXAMPLES, SITE_WEIGHT, STATUS_TRAINED

VIRTUAL20 = Path(__file__).resolve().parents[2] / "simulations" / "scenarios" / "hospitals-virtual20.toml"


def test_central_round_trains_plain_and_returns_the_whole_model(tmp_path):
    # Prepare
    cfg = app_defaults() | {"scenario-file": str(VIRTUAL20), "out-dir": str(tmp_path / "out"),
                            "privacy-mode": "central", "fusion": "late", "hidden-dim": 16}
    run = parse_run_config(cfg)
    scenario = load_scenario(VIRTUAL20)
    job = SiteRound(run=run, scenario=scenario, site=resolve_site({"partition-id": 5}, run), server_round=1,
                    federation_id="fed", run_id="1")
    sent = initial_trainable_state(build_model(run.model, scenario=scenario, seed=0))
    sent = dict(reversed(list(sent.items())))  # any order the server uses must come back unchanged
    # Execute
    out = job.train(sent)
    # Assert
    assert list(out.arrays) == list(sent)  # Flower's server-side clipping pairs tensors by position
    assert any(not torch.equal(out.arrays[k], sent[k]) for k in sent)  # it trained
    assert out.metrics[SITE_WEIGHT] == 1.0 and out.metrics[NUM_EXAMPLES] > 0
    assert out.privacy == {"status": STATUS_TRAINED, "site": "virtual-05", "privacy-mode": "central", "dp": False}
    assert not (tmp_path / "out" / "sites" / "virtual-05" / "ledger.sqlite").exists()  # no DP-SGD, no site spend
