"""One site's rounds without Flower: reserve -> train -> confirm, budget across runs, declines."""

from __future__ import annotations

import pytest

from common.privacy.accountant import epsilon_from_history
from common.privacy.reference import epsilon_pld
from common.records import STATUS_DECLINED, STATUS_TRAINED


def test_round_reserves_before_training_and_reports_what_the_ledger_says(make_job, initial_state):
    job = make_job(round_=1, run_id="r1")
    out = job.train(initial_state(job))
    assert out.privacy["status"] == STATUS_TRAINED
    entries = job.privacy(job.data()).ledger.entries(site="switzerland")
    assert [e.event for e in entries] == ["reserve", "confirm"]
    r = entries[0]
    # from the public bound, not the 82 rows held: max-records 100, batch 32 -> k = 4 batches -> q = 1/4, 4 steps
    assert r.sample_rate == 1 / 4 and r.steps == 4
    assert out.privacy["epsilon"] == pytest.approx(r.epsilon)
    assert out.privacy["sample-rate"] == 1 / 4
    assert out.privacy["delta"] == 1e-3  # default_delta(100): strictly below 1/max-records
    # the reported ε is an independent PLD computation's value, within 1%
    ref = epsilon_pld([(r.noise_multiplier, r.sample_rate, r.steps)], delta=r.delta)
    assert out.privacy["epsilon"] == pytest.approx(ref, rel=0.01)
    # only this site's branches and the head travel: frozen/absent branches never do
    assert out.arrays and all(k.split(".")[1] in ("tabular", "text") or "head" in k or not k.startswith(
        ("encoders.", "projections.", "late_heads.")) for k in out.arrays)


def test_second_run_continues_from_the_ledger_and_declines_when_exhausted(make_job, initial_state):
    eps = []
    for rnd in (1, 2):  # run 1 plans 2 rounds: ε reaches the target 2.0
        out = make_job(round_=rnd, run_id="r1").train(initial_state(make_job(round_=rnd, run_id="r1")))
        assert out.privacy["status"] == STATUS_TRAINED
        eps.append(out.privacy["epsilon"])
    assert eps[1] > eps[0] and eps[1] <= 2.0 + 1e-6
    # run 2, same state: it starts from the spent ε, not from zero
    out = make_job(round_=1, run_id="r2").train(initial_state(make_job(round_=1, run_id="r2")))
    assert out.privacy["status"] == STATUS_TRAINED and out.privacy["epsilon"] > eps[1]
    assert out.privacy["rounds-trained"] == 3
    last_eps = out.privacy["epsilon"]
    assert last_eps <= 3.0
    # ... and declines once the next round would exceed the lifetime budget of 3.0
    statuses = []
    for rnd in (2, 3):
        job = make_job(round_=rnd, run_id="r2")
        o = job.train(initial_state(job))
        statuses.append(o.privacy["status"])
        if o.privacy["status"] == STATUS_DECLINED:
            assert o.arrays is None and "lifetime budget" in o.privacy["reason"]
            assert o.privacy["epsilon"] == pytest.approx(last_eps)  # nothing more was spent
        else:
            assert last_eps < o.privacy["epsilon"] <= 3.0
            last_eps = o.privacy["epsilon"]
    assert statuses[-1] == STATUS_DECLINED  # once declined, it stays declined
    ledger = job.privacy(job.data()).ledger
    assert ledger.verify() == []
    reserves = [e for e in ledger.entries(site="switzerland") if e.event == "reserve"]
    hist = [(e.noise_multiplier, e.sample_rate, e.steps) for e in reserves]
    # one accountant over the whole logged history gives the last reported ε: no reset across runs
    assert epsilon_from_history(hist, delta=reserves[0].delta, accountant="prv") == pytest.approx(
        reserves[-1].epsilon, rel=1e-9)


def test_evaluate_reports_the_site_metrics(make_job, initial_state):
    job = make_job(round_=1, run_id="r1")
    m = job.evaluate(initial_state(job))
    assert m["num-examples"] == 41 and m["positives"] == 39  # Switzerland's test split: 2 negatives
    for k in ("accuracy", "balanced-accuracy", "auc", "loss"):
        assert k in m
