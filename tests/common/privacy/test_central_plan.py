"""privacy-mode = "central": settings Flower's accounting cannot honour fail before training; ε is right.

Pinned ε values were computed with Google's dp_accounting 0.6 (``RdpAccountant``, default orders,
add/remove-one) for ``SelfComposedDpEvent(GaussianDpEvent(σ=1.0), k)`` at δ = 1e-3 — the mechanism Flower's
fixed-clipping wrapper runs per round, charged without sampling amplification.
"""

from __future__ import annotations

import math
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant

from common.config import ConfigError, app_defaults, load_scenario, parse_run_config
from common.privacy.central import (ASSUMPTION_KEYS, FEDERATION_SITE, epsilon_after_releases, federation_row,
                                    parse_assumption, plan_central, sampled_sites)
from tests.data.heart_schema import SCENARIO_SCHEMA

VIRTUAL20 = Path(__file__).resolve().parents[3] / "simulations" / "scenarios" / "hospitals-virtual20.toml"
HOSPITALS = VIRTUAL20.with_name("hospitals.toml")

# (k releases, ε) for σ = 1.0, δ = 1e-3: dp_accounting RDP of k Gaussian releases (pinned)
PINNED_RDP = [(1, 3.5365620688888635), (2, 5.420018242131793), (3, 6.999106387048849),
              (4, 8.416496187447095), (5, 9.733484074305997)]


def _run(scenario: Path = VIRTUAL20, **settings):
    cfg = app_defaults() | {"privacy-mode": "central", "scenario-file": str(scenario), "num-server-rounds": 5,
                            "min-available-nodes": 20, "central-noise-multiplier": 1.0}
    cfg.update({k.replace("_", "-"): v for k, v in settings.items()})
    return parse_run_config(cfg)


def _plan(scenario: Path = VIRTUAL20, **settings):
    run = _run(scenario, **settings)
    return plan_central(run, load_scenario(run.paths.scenario_file))


def _exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact ε of a Gaussian mechanism with sensitivity/σ = mu (Balle & Wang 2018, Thm 8), by bisection."""
    phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    dlt = lambda e: phi(-e / mu + mu / 2) - math.exp(e) * phi(-e / mu - mu / 2)  # noqa: E731
    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if dlt(mid) > delta else (lo, mid)
    return hi


# ----------------------------------------------------------------------------- accounting
def test_epsilon_per_round_equals_dp_accounting_of_the_same_mechanism():
    # Prepare / Execute
    plan = _plan()
    # Assert: Flower's accountant == pinned dp_accounting RDP, round by round
    assert plan.noise_multiplier == 1.0 and plan.sampled_sites == 20 and plan.num_sites == 20
    for (k, pinned), planned in zip(PINNED_RDP, plan.planned_epsilon, strict=True):
        assert planned == pytest.approx(pinned, rel=1e-12), k
        independent = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
        independent.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.0), k))
        assert planned == pytest.approx(independent.get_epsilon(1e-3), rel=1e-12)
        # an upper bound: never below the EXACT ε of k Gaussian releases (μ = √k / σ), nor far above it
        exact = _exact_gaussian_epsilon(math.sqrt(k), 1e-3)
        assert exact <= planned <= 1.2 * exact


def test_a_fixed_sample_smaller_than_the_federation_is_refused():
    """Issue 10, finding 4. Before: N = 20, m = 10, σ = 1, 5 rounds was accepted as ε = 9.73 (sensitivity C), but
    neighbouring federations can swap one sampled site's term for another's (sensitivity 2C): by dp-accounting's
    PLD that is 23.1 without amplification (σ/2), and still 15.6 if amplification by m/N = 0.5 were claimed.
    Every site must now take part in every round."""
    with pytest.raises(ConfigError, match=r"every site must take part in every round .* sample 10 of 20 sites .*"
                                          r"sensitivity 2C"):
        _plan(fraction_train=0.5)
    from common.privacy.reference import epsilon_pld

    assert epsilon_pld([(0.5, 1.0, 5)], delta=1e-3) == pytest.approx(23.06, abs=0.01)  # what 2C costs
    assert epsilon_pld([(0.5, 0.5, 5)], delta=1e-3) == pytest.approx(15.61, abs=0.01)  # even with amplification


def test_calibrated_sigma_is_the_smallest_meeting_the_target():
    plan = _plan(central_noise_multiplier=0.0, central_target_epsilon=8.0)
    assert plan.calibrated and plan.planned_epsilon[-1] <= 8.0
    below = epsilon_after_releases(noise_multiplier=plan.noise_multiplier / 1.01, releases=5, num_sites=20,
                                   sampled=20, delta=1e-3)
    assert below > 8.0


def test_ledger_row_states_mechanism_and_sampling_assumption():
    plan = _plan()
    row = federation_row(plan, server_round=3, released=True, epsilon=plan.planned_epsilon[2],
                         federation_id="f", run_id="1")
    assert (row.site, row.event, row.steps, row.noise_multiplier, row.sample_rate) == (
        FEDERATION_SITE, "trained", 1, 1.0, 1.0)
    assert (row.max_grad_norm, row.delta, row.accountant, row.epsilon) == (1.0, 1e-3, "rdp", PINNED_RDP[2][1])
    stated = parse_assumption(row.reason)
    assert tuple(stated) == ASSUMPTION_KEYS
    assert stated["sampled"] == "20" and stated["available"] == "20" and stated["relation"] == "zero-out-one-site"
    skipped = federation_row(plan, server_round=4, released=False, epsilon=row.epsilon, federation_id="f",
                             run_id="1", note="no release")
    assert skipped.event == "failed" and skipped.steps == 0 and parse_assumption(skipped.reason) == stated


def test_sample_size_follows_flower_fedavg():
    assert sampled_sites(20, fraction_train=1.0, min_train_nodes=2) == 20
    assert sampled_sites(20, fraction_train=0.33, min_train_nodes=2) == 6
    assert sampled_sites(3, fraction_train=0.33, min_train_nodes=2) == 2


# ------------------------------------------------------------------------- refused settings
@pytest.mark.parametrize("settings, match", [
    ({"min_available_nodes": 2}, r"every site must take part .* min-available-nodes = 2"),
    ({"min_available_nodes": 10, "fraction_train": 0.5}, r"every site must take part .* sample 10 of 20 sites"),
    ({"min_train_nodes": 21}, r"has 20 sites but min-train-nodes = 21"),
    ({"min_available_nodes": 25}, r"min-available-nodes = 25; Flower would wait"),
    ({"central_delta": 0.05}, r"central-delta = 0.05 is not below 1/20"),
    ({"central_noise_multiplier": 0.5}, r"central-noise-multiplier = 0.5 over num-server-rounds = 5 releases gives "
                                        r"site-level ε = 25.09 .* above central-target-epsilon = 10"),
])
def test_settings_flower_cannot_honour_fail_before_training(settings, match):
    with pytest.raises(ConfigError, match=match):
        _plan(**settings)


def test_sites_with_different_modalities_are_refused():
    # the 4 real hospitals: VA Long Beach keeps no notes -> modality-aware aggregation would be needed
    with pytest.raises(ConfigError, match=r"hold different modalities .*va_long_beach: tabular\b.*modality-aware"):
        _plan(HOSPITALS, min_available_nodes=4)


def test_sites_whose_own_file_does_not_allow_central_mode_are_refused_before_training(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text("".join(f'[[sites]]\nname = "s{i}"\nsource = "mapped"\nmapping = "mappings/uci-heart.toml"\n'
                         f'select = {{ hospital = "cleveland" }}\nmodalities = ["tabular"]\n'
                         + ('privacy = { privacy-mode = "central" }\n' if i != 1 else "") for i in range(20))
                 + SCENARIO_SCHEMA)
    with pytest.raises(ConfigError, match=r"sites \['s1'\] .* do not allow it in their own privacy table"):
        _plan(f)


@pytest.mark.parametrize("key, value, match", [
    ("privacy-mode", "site", "'privacy-mode' must be one of sample, central"),
    ("central-clipping-norm", 0.0, "'central-clipping-norm' must be > 0"),
    ("central-noise-multiplier", -1.0, "'central-noise-multiplier' must be >= 0"),
    ("central-target-epsilon", 0.0, "'central-target-epsilon' must be > 0"),
    ("central-delta", 0.0, "'central-delta' must be > 0"),
])
def test_bad_central_settings_name_the_key(key, value, match):
    with pytest.raises(ConfigError, match=match):
        parse_run_config(app_defaults() | {key: value})


def test_sample_mode_is_the_default_and_plan_refuses_it():
    run = parse_run_config(app_defaults())
    assert run.privacy_mode == "sample"
    with pytest.raises(ValueError, match="needs privacy-mode"):
        plan_central(run, load_scenario(run.paths.scenario_file))
