"""A site's round in privacy-mode "central": plain SGD, the whole model back in the server's key order, and the
release recorded in the site's OWN ledger first (issue 10, finding 4: before, a site recorded nothing of its
central participation, so a new federation id restarted its ε at 0)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from client.round import MessageError, SiteRound
from common.config import app_defaults, load_scenario, parse_run_config, resolve_site
from common.factory import build_model, initial_trainable_state
from common.privacy.accountant import epsilon_from_history
from common.privacy.central import parse_assumption
from common.privacy.ledger import Ledger
from common.records import CENTRAL_NOISE_MULTIPLIER, SITE_WEIGHT, STATUS_DECLINED, STATUS_TRAINED

VIRTUAL20 = Path(__file__).resolve().parents[2] / "simulations" / "scenarios" / "hospitals-virtual20.toml"


def _job(tmp_path, *, federation: str = "fed", server_round: int = 1, scenario: Path = VIRTUAL20,
         sigma: float | None = 1.0) -> SiteRound:
    cfg = app_defaults() | {"scenario-file": str(scenario), "out-dir": str(tmp_path / "out"),
                            "privacy-mode": "central", "fusion": "late", "hidden-dim": 16}
    run = parse_run_config(cfg)
    return SiteRound(run=run, scenario=load_scenario(scenario), site=resolve_site({"partition-id": 5}, run),
                     server_round=server_round, federation_id=federation, run_id="1",
                     message_config={} if sigma is None else {CENTRAL_NOISE_MULTIPLIER: sigma})


def test_central_round_trains_plain_records_its_release_and_returns_the_whole_model(tmp_path):
    # Prepare
    job = _job(tmp_path)
    sent = initial_trainable_state(build_model(job.run.model, scenario=job.scenario, seed=0))
    sent = dict(reversed(list(sent.items())))  # any order the server uses must come back unchanged
    # Execute
    out = job.train(sent)
    # Assert: the model
    assert list(out.arrays) == list(sent)  # Flower's server-side clipping pairs tensors by position
    assert any(not torch.equal(out.arrays[k], sent[k]) for k in sent)  # it trained
    assert out.metrics == {SITE_WEIGHT: 1.0}  # nothing computed from the rows: no count, no loss
    # Assert: the site's own record, before the update left: one Gaussian release of σ/2 (sensitivity 2C)
    assert out.privacy["status"] == STATUS_TRAINED and out.privacy["mode"] == "central"
    ledger = Ledger(tmp_path / "out" / "sites" / "virtual-05" / "ledger.sqlite")
    rows = ledger.entries()
    assert [(r.event, r.noise_multiplier, r.sample_rate, r.steps) for r in rows] == [
        ("reserve", 0.5, 1.0, 1), ("confirm", 0.5, 1.0, 1)]
    stated = parse_assumption(rows[0].reason)
    assert (stated["mode"], stated["unit"]) == ("central", "record") and "trusted-curator" in stated
    assert out.privacy["epsilon"] == pytest.approx(
        epsilon_from_history([(0.5, 1.0, 1)], delta=rows[0].delta, accountant="prv"), rel=1e-9)


def test_central_participation_composes_across_federations(tmp_path):
    state = None
    eps = []
    for federation in ("fed-a", "fed-b"):  # a new federation id no longer starts the site at ε = 0
        job = _job(tmp_path, federation=federation)
        state = state or initial_trainable_state(build_model(job.run.model, scenario=job.scenario, seed=0))
        eps.append(job.train(state).privacy["epsilon"])
    delta = Ledger(tmp_path / "out" / "sites" / "virtual-05" / "ledger.sqlite").entries()[0].delta
    assert eps[1] > eps[0]
    assert eps[1] == pytest.approx(epsilon_from_history([(0.5, 1.0, 2)], delta=delta, accountant="prv"), rel=1e-9)


def test_a_site_whose_file_does_not_allow_central_mode_declines(tmp_path):
    scenario = tmp_path / "s.toml"
    data = str(VIRTUAL20.parents[2] / "data")  # the copy lives elsewhere: its relative paths become absolute
    scenario.write_text(VIRTUAL20.read_text().replace('privacy-mode = "central", ', "").replace('"../../data', f'"{data}'))
    job = _job(tmp_path, scenario=scenario)
    out = job.train(initial_trainable_state(build_model(job.run.model, scenario=job.scenario, seed=0)))
    assert out.arrays is None and out.privacy["status"] == STATUS_DECLINED
    assert out.privacy["code"] == "privacy-request" and "privacy-mode" in out.privacy["reason"]


def test_a_central_message_without_the_servers_sigma_fails_before_anything_is_recorded(tmp_path):
    job = _job(tmp_path, sigma=None)
    with pytest.raises(MessageError, match=CENTRAL_NOISE_MULTIPLIER):
        job.train(initial_trainable_state(build_model(job.run.model, scenario=job.scenario, seed=0)))
    assert Ledger(tmp_path / "out" / "sites" / "virtual-05" / "ledger.sqlite").entries() == []
