"""Issue 10 at one site, without Flower: each finding's failure mode, run through the real round code.

* finding 1: the run config cannot switch a site's DP off or send it to central mode; what the site's own file
  allows is recorded (a release without DP is a ledger row with ε = ∞);
* finding 2: nothing computed from the training rows outside DP leaves: no training loss, the weight and every
  quantity that derived from n come from the public ``max-records``, the dataset id is a keyed HMAC;
* finding 8: no reservation that must fail: steps exactly as planned (k, never k - 1), secure-mode's requirement
  and the noise generator's device checked before reserving.

Switzerland holds 86 training rows; its own privacy table (the scenario's, here) declares max-records = 100
(``conftest.py``).
"""

from __future__ import annotations

import math
import stat

import pytest
import torch

from client.dp_random import dp_randomness
from client.privacy import DATASET_KEY_FILE, SitePrivacy
from client.train import TensorDictDataset, noise_generator_problem, poisson_loader
from common.config import PrivacySettings
from common.privacy.accountant import default_delta, plan_steps
from common.privacy.entry import NO_DP_STATEMENT
from common.records import DECLINES, NUM_EXAMPLES, STATUS_DECLINED, STATUS_TRAINED


def _events(job):
    return [(e.event, e.reason) for e in job.privacy(job.data(), job.site.privacy).ledger.entries()]


# ------------------------------------------------------------------------------------------------ finding 1
@pytest.mark.parametrize(("request_", "key"), [({"dp": False}, "dp"), ({"privacy-mode": "central"}, "privacy-mode"),
                                               ({"noise-seed": "run-seed"}, "noise-seed")])
def test_a_run_that_asks_for_less_privacy_gets_a_decline_naming_the_setting(make_job, initial_state, request_, key):
    """Before: dp = false / privacy-mode = central from the run config trained plain SGD and sent the raw update;
    the site's ledger recorded nothing."""
    job = make_job(round_=1, run_id="r1", **request_)
    out = job.train(initial_state(job))
    assert out.arrays is None and out.privacy["status"] == STATUS_DECLINED
    assert out.privacy["code"] == "privacy-request" and f"{key}: the run asks for" in out.privacy["reason"]
    assert out.metrics == {NUM_EXAMPLES: 0.0}
    events = _events(job)
    assert [e for e, _ in events] == ["decline"] and key in events[0][1]  # recorded, nothing reserved


def test_a_release_without_dp_that_the_sites_file_allows_is_recorded_as_infinite_epsilon(make_job, initial_state):
    job = make_job(round_=1, run_id="r1", site_privacy={"dp": False}, dp=False)
    out = job.train(initial_state(job))
    assert out.arrays and out.privacy["status"] == STATUS_TRAINED and out.privacy["mode"] == "none"
    assert out.privacy["epsilon"] == math.inf and out.privacy["reason"] == NO_DP_STATEMENT
    sp = job.privacy(job.data())
    assert [(e.event, e.epsilon) for e in sp.ledger.entries()] == [("reserve", math.inf)]
    assert sp.spent() == math.inf and sp.unbounded()
    # every later DP round is refused: the records were released without protection
    again = make_job(round_=2, run_id="r1")
    out = again.train(initial_state(again))
    assert out.privacy["status"] == STATUS_DECLINED and out.privacy["epsilon"] == math.inf
    assert "already ∞" in out.privacy["reason"]


def test_the_site_applies_a_request_for_more_privacy(make_job, initial_state):
    tight = make_job(round_=1, run_id="r1", **{"target-epsilon": 1.0})  # the file allows 4 (package default)
    out = tight.train(initial_state(tight))
    assert out.privacy["status"] == STATUS_TRAINED and out.privacy["target-epsilon"] == 1.0
    assert 0 < out.privacy["epsilon"] <= 1.0  # σ calibrated for 2 planned rounds at the requested 1.0


# ------------------------------------------------------------------------------------------------ finding 2
def test_the_reply_carries_the_public_bound_not_the_row_count_nor_the_training_loss(make_job, initial_state):
    job = make_job(round_=1, run_id="r1")
    out = job.train(initial_state(job))
    assert out.metrics == {NUM_EXAMPLES: 100.0}  # max-records, not the 86 rows; no train-loss
    p = out.privacy
    assert (p["max-records"], p["sample-rate"], p["steps"], p["delta"]) == (100, 1 / 4, 4, default_delta(100))
    assert "train-loss" not in p and 86 not in p.values()


def test_q_steps_delta_and_sigma_derive_from_max_records_never_from_the_rows_held(tmp_path):
    """Before: q = 1/ceil(n/B), steps and δ < 1/n followed the rows held: a function of the private n."""
    settings = PrivacySettings(enabled=True, target_epsilon=2.0, epsilon_budget=3.0, delta=0.0, max_grad_norm=1.0,
                               accountant="prv", secure_mode=False, max_records=100)
    steps = plan_steps(max_records=100, batch_size=32, epochs=1)
    plans = []
    for n in (50, 86, 99):
        sp = SitePrivacy(site="s", dataset_id="d", settings=settings, num_examples=n, state_dir=tmp_path / str(n))
        plans.append((sp.delta, sp.plan(sample_rate=steps.sample_rate, steps=steps.steps,
                                        planned_steps=2 * steps.steps)))
    assert all(p == plans[0] for p in plans)
    assert plans[0][0] == 1e-3 and plans[0][1].sample_rate == 1 / 4 and plans[0][1].steps == 4


def test_the_dataset_id_is_a_keyed_hmac_kept_at_the_site(make_job, initial_state, tmp_path):
    """Before: dataset-id was a SHA-256 of the exact training rows: anyone who knows all rows but one can test
    which one is in."""
    job = make_job(round_=1, run_id="r1")
    data = job.data()
    out = job.train(initial_state(job))
    sent = out.privacy["dataset-id"]
    assert sent != data.dataset_id and data.dataset_id not in sent  # not the fingerprint, nor a prefix of it
    key = job.site.state_dir / DATASET_KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = make_job(round_=2, run_id="r1")
    assert again.train(initial_state(again)).privacy["dataset-id"] == sent  # stable at the site
    other = SitePrivacy(site="switzerland", dataset_id=data.dataset_id, settings=job.terms().settings,
                        num_examples=86, state_dir=tmp_path / "another-site-state")
    assert other.dataset_id != sent  # another key: nothing to compare across sites or with a guess


def test_a_site_with_more_rows_than_its_bound_declines_without_saying_how_many(make_job, initial_state):
    job = make_job(round_=1, run_id="r1", site_privacy={"max-records": 80})
    out = job.train(initial_state(job))
    assert out.arrays is None and out.privacy["code"] == "max-records"
    assert out.privacy["reason"] == DECLINES["max-records"].text and "86" not in out.privacy["reason"]


# ------------------------------------------------------------------------------------------------ finding 8
@pytest.mark.parametrize("k", [93, 99, 105])
def test_the_loader_runs_exactly_the_planned_k_steps(k):
    """Opacus' own loader runs int(1/(1/k)) steps, which is k - 1 for these k (e.g. n = 2950, B = 32: k = 93)."""
    assert int(1 / (1 / k)) == k - 1  # the floating-point trap itself
    data = TensorDictDataset({"x": torch.arange(200, dtype=torch.float32)})
    loader = poisson_loader(data, sample_rate=1 / k, steps=k, generator=torch.Generator().manual_seed(0))
    assert len(loader) == k and sum(1 for _ in loader) == k
    assert plan_steps(max_records=2950, batch_size=32, epochs=2).steps == 2 * 93


def test_a_round_at_k_93_trains_and_the_accountant_agrees(make_job, initial_state):
    """max-records 2950 at batch 32: k = 93 steps at q = 1/93 (before, such a site reserved and then raised)."""
    job = make_job(round_=1, run_id="r1", site_privacy={"max-records": 2950}, **{"num-server-rounds": 1})
    out = job.train(initial_state(job))
    assert out.privacy["status"] == STATUS_TRAINED and out.privacy["steps"] == 93
    assert out.privacy["sample-rate"] == 1 / 93
    assert [e for e, _ in _events(job)] == ["reserve", "confirm"]


def test_secure_mode_without_its_requirement_declines_before_reserving(make_job, initial_state):
    """Before: the round was reserved, then Opacus raised ImportError (torchcsprng is not installed)."""
    job = make_job(round_=1, run_id="r1", **{"secure-mode": True})
    out = job.train(initial_state(job))
    assert out.privacy["status"] == STATUS_DECLINED and out.privacy["code"] == "secure-mode-unavailable"
    assert [e for e, _ in _events(job)] == ["decline"]  # nothing reserved


def test_a_noise_generator_on_another_device_is_caught_before_reserving():
    rng = dp_randomness("secret", run_seed=0, site="s", server_round=1, device="cpu")
    assert rng.noise.device == torch.device("cpu") and rng.sampling.device == torch.device("cpu")
    assert noise_generator_problem(rng, torch.device("cpu")) == ""
    assert "torch.normal would refuse it" in noise_generator_problem(rng, torch.device("cuda"))
    assert "torch.normal would refuse it" in noise_generator_problem(rng, torch.device("cuda", 1))
