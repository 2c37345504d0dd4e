"""The empirical (one-run) audit end to end at one real site: honest DP passes, cut noise is caught.

Cleveland, tabular only (no text featurisation: keeps each test well under 30 s on 2 cores), 3 rounds
of 1 epoch: 210 rows, batch 32 -> q = 1/7, 21 DP-SGD steps, m = 1000 Dirac canaries.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from client.canary import quiet_coordinates, train_with_canaries
from client.privacy import SitePrivacy
from client.site_data import load_site
from common.config import app_defaults, load_scenario, parse_run_config, resolve_site
from common.factory import build_model
from common.privacy.accountant import plan_steps
from simulations.cli import main
from simulations.empirical_audit import EmpiricalAuditRequest, _calibrated_sigma, run_empirical_audit
from tests.data.heart_schema import SCENARIO_SCHEMA

torch.set_num_threads(2)

CLEVELAND_TABULAR = """
[[sites]]
name = "cleveland"
source = "mapped"
mapping = "mappings/uci-heart.toml"
select = { hospital = "cleveland" }
modalities = ["tabular"]
privacy = { max-records = 250 }
"""


@pytest.fixture
def scenario(tmp_path):
    path = tmp_path / "cleveland.toml"
    path.write_text(CLEVELAND_TABULAR + SCENARIO_SCHEMA)
    return path


def _request(scenario, tmp_path, **kw) -> EmpiricalAuditRequest:
    return EmpiricalAuditRequest(site="cleveland", canaries=1000, rounds=3, seed=0, scenario=str(scenario),
                                 state_root=tmp_path / "sites", **kw)


def _site_and_model(scenario, tmp_path):
    """Cleveland's data as the site loads it, and the run's initial model (seed 0)."""
    run = parse_run_config(app_defaults() | {"scenario-file": str(scenario), "site-state-root": str(tmp_path)})
    scen = load_scenario(scenario)
    data = load_site(resolve_site({"partition-id": 0}, run), model_modalities=scen.modalities,
                     text_encoder=run.model.text_encoder)
    return data, build_model(run.model, scenario=scen, seed=0)


def test_canaries_are_sampled_like_records_and_scored_by_their_coordinate(scenario, tmp_path):
    data, model = _site_and_model(scenario, tmp_path)
    coords, real_grad = quiet_coordinates(model, data.train, m=300, max_grad_norm=1.0, device=torch.device("cpu"))
    assert len(np.unique(coords)) == 300 and real_grad.max() < 1e-6  # the real data does not move them
    included = np.random.default_rng(3).random(300) < 0.5
    res = train_with_canaries(model, data.train, coordinates=coords, included=included,
                              plan=plan_steps(max_records=210, batch_size=32, epochs=3),
                              lr=0.1, momentum=0.0, noise_multiplier=0.0, max_grad_norm=1.0, secure_mode=False,
                              modality_dropout=0.0, device=torch.device("cpu"), seed=5)
    assert res.steps == 21 and res.history == [(0.0, 1 / 7, 21)]
    assert (res.sampled_counts[~included] == 0).all()  # an OUT canary never joins a batch
    # Poisson at q = 1/7 over 21 steps: mean 3 per IN canary
    assert res.sampled_counts[included].mean() == pytest.approx(3.0, abs=0.4)
    # with σ = 0 the score is exactly C × (times sampled): nothing else moves these coordinates
    np.testing.assert_allclose(res.scores, res.sampled_counts, atol=1e-4)


def test_dp_on_as_configured_stays_below_the_accounted_epsilon(scenario, tmp_path):
    report = run_empirical_audit(_request(scenario, tmp_path))  # target-epsilon from pyproject: 4.0
    # planned from the public bound as a round plans it: k = ceil(250 / 32) = 8 steps per round, 3 rounds
    assert (report["train-rows"], report["max-records"], report["steps"]) == (210, 250, 24)
    assert report["sample-rate"] == 1 / 8
    assert report["audit-delta"] == 1e-5 and report["delta"] == 4e-4  # default_delta(250)
    assert report["noise-multiplier-used"] == report["noise-multiplier-calibrated"]
    assert report["epsilon-accounted-site-delta"] == pytest.approx(4.0, abs=0.03)
    # the statistic on this fixed seed: 1.18 here (σ = 0.908 at q = 1/8, 24 steps), well below the claim
    # (5.65 at δ = 1e-5); the band allows float differences across machines to move a rank or two
    assert 0.0 <= report["epsilon-lower-bound"] <= report["epsilon-accounted"]
    assert report["epsilon-lower-bound"] == pytest.approx(1.18, abs=0.3)
    assert report["verdict"] == "PASS"
    assert report["canaries-in"] == 486  # the coin flips are fixed by the seed


def test_the_audit_calibrates_the_same_sigma_as_the_site(scenario, tmp_path):
    run = parse_run_config(app_defaults() | {"scenario-file": str(scenario), "num-server-rounds": 3,
                                             "site-state-root": str(tmp_path / "sites")})
    site = resolve_site({"partition-id": 0}, run)
    sp = SitePrivacy(site="cleveland", dataset_id="x", settings=site.privacy, num_examples=210,
                     state_dir=site.state_dir)
    # what a round of the real site uses (client/round.py: q = 1/len(loader), planned = steps x rounds)
    expected = sp.noise_multiplier(sample_rate=1 / 7, planned_steps=21)
    assert _calibrated_sigma(site.privacy.target_epsilon, sp.delta, 1 / 7, 21, site.privacy.accountant) == expected


@pytest.mark.parametrize("noise_scale", [0.1, 0.0])
def test_negative_control_claiming_epsilon_1_with_cut_noise_is_caught(scenario, tmp_path, noise_scale):
    report = run_empirical_audit(_request(scenario, tmp_path, target_epsilon=1.0, noise_scale=noise_scale))
    assert report["epsilon-accounted-site-delta"] == pytest.approx(1.0, abs=0.03)
    assert report["noise-multiplier-used"] == pytest.approx(noise_scale * report["noise-multiplier-calibrated"])
    assert report["epsilon-lower-bound"] > 1.0
    assert report["epsilon-lower-bound"] > report["epsilon-accounted"]  # the claim at the audit's δ, too
    assert report["verdict"] == "FAIL"
    # fixed seed: the top 200 scores are all IN canaries (200/200 correct), the best the grid's r = 200 allows
    assert report["best-guesses"] == {"k_plus": 200, "k_minus": 0, "correct": 200}
    assert report["epsilon-lower-bound"] == pytest.approx(3.4614, abs=1e-3)


def test_cli_reports_json_and_exits_non_zero_when_the_claim_is_broken(scenario, tmp_path, capsys):
    code = main(["empirical-audit", "--scenario", str(scenario), "--rounds", "3", "--target-epsilon", "1",
                 "--noise-scale", "0", "--canaries", "400", "--state-root", str(tmp_path / "sites"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["verdict"] == "FAIL"
    assert report["epsilon-of-mechanism-run"] is None  # σ = 0: no finite ε
    assert report["epsilon-lower-bound"] > report["epsilon-accounted"]
    assert len(report["statement"]) >= 4


def test_per_modality_clipping_is_audited_with_canaries_of_each_tensors_share(scenario, tmp_path):
    """clipping = per-modality: Opacus' per-layer optimizer, each canary of its tensor's C_t (< C), scored in it."""
    from common.models.clipping import tensor_budgets

    data, model = _site_and_model(scenario, tmp_path)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    budgets = tensor_budgets(named, 1.0)
    coords, _ = quiet_coordinates(model, data.train, m=200, max_grad_norm=1.0, device=torch.device("cpu"))
    starts = np.cumsum([0] + [p.numel() for _, p in named])[:-1]
    owner = np.searchsorted(starts, coords, side="right") - 1
    assert (np.asarray(budgets)[owner] < 0.9).all()  # the canaries' tensors have a share of C well below C
    before = torch.cat([p.detach().reshape(-1) for _, p in named]).clone()
    included = np.random.default_rng(3).random(200) < 0.5
    plan = plan_steps(max_records=210, batch_size=32, epochs=2)
    res = train_with_canaries(model, data.train, coordinates=coords, included=included, plan=plan, lr=0.1,
                              momentum=0.0, noise_multiplier=0.0, max_grad_norm=1.0, secure_mode=False,
                              modality_dropout=0.0, device=torch.device("cpu"), seed=5, clipping="per-modality")
    after = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters() if p.requires_grad])
    assert res.steps == 14 and res.sampled_counts[included].sum() > 0
    # σ = 0: a canary's coordinate moved by lr x C_t x (times sampled) / B, and its score is that count
    moved = (-(after - before)[coords].double() * res.expected_batch_size / 0.1).numpy()
    np.testing.assert_allclose(moved, np.asarray(budgets)[owner] * res.sampled_counts, atol=1e-4)
    np.testing.assert_allclose(res.scores, res.sampled_counts, atol=1e-4)


def test_the_audit_trains_with_the_configured_clipping(scenario, tmp_path):
    report = run_empirical_audit(EmpiricalAuditRequest(
        site="cleveland", canaries=200, rounds=1, seed=0, scenario=str(scenario), state_root=tmp_path / "sites",
        overrides={"clipping": "per-modality"}))
    assert report["clipping"] == "per-modality"
    assert report["verdict"] == "PASS"
