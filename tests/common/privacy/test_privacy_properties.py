"""Hypothesis properties of the accounting and the ledger (few examples each: PRV costs 0.1-1 s)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.privacy.accountant import PRV_EPS_ERROR, epsilon_from_history, make_accountant, normalize_history
from common.privacy.entry import LedgerEntry
from common.privacy.ledger import Ledger
from common.privacy.reference import epsilon_pld

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")  # Opacus RDP at large σ

DELTA = 1e-5
FAST = dict(deadline=None, derandomize=True)  # reproducible in CI; PRV calls are slow, so no deadline

sigmas = st.floats(min_value=0.8, max_value=4.0)
rates = st.sampled_from([0.005, 0.01, 0.02, 0.05])  # small q keeps Opacus' fractional-order RDP fast
mechanisms = st.tuples(sigmas, rates, st.integers(min_value=1, max_value=200))
histories = st.lists(mechanisms, min_size=0, max_size=3)


@settings(max_examples=12, **FAST)
@given(history=histories, more=mechanisms)
def test_rdp_epsilon_never_decreases_when_steps_are_appended(history: list, more: tuple) -> None:
    before = epsilon_from_history(history, delta=DELTA, accountant="rdp")
    after = epsilon_from_history([*history, more], delta=DELTA, accountant="rdp")
    assert after >= before  # exact: RDP adds non-negative terms


@settings(max_examples=3, **FAST)
@given(history=st.lists(mechanisms, min_size=1, max_size=2), more=mechanisms)
def test_prv_epsilon_never_decreases_beyond_numerical_noise(history: list, more: tuple) -> None:
    # PRV is a numerical upper bound: appending a negligible mechanism can move it down by ~1e-6
    # (seen: -1.3e-6 for one step at σ=1000), far inside its 0.01 error band.
    before = epsilon_from_history(history, delta=DELTA, accountant="prv")
    after = epsilon_from_history([*history, more], delta=DELTA, accountant="prv")
    assert after >= before - 1e-3


@settings(max_examples=4, **FAST)
@given(history=st.lists(st.tuples(st.floats(0.8, 2.0), rates, st.integers(20, 300)), min_size=1, max_size=2))
def test_prv_agrees_with_dp_accounting_pld(history: list) -> None:
    # PLD (add AND remove directions, max) vs PRV (remove direction, upper end of a 0.01 band)
    prv = epsilon_from_history(history, delta=DELTA, accountant="prv")
    pld = epsilon_pld(history, delta=DELTA)
    assert pld * 0.99 <= prv <= pld * 1.01 + 2 * PRV_EPS_ERROR


@settings(max_examples=8, **FAST)
@given(rounds=st.lists(st.tuples(st.sampled_from([1.0, 1.5]), st.sampled_from([0.01, 0.02]),
                                 st.integers(1, 5)), min_size=1, max_size=6))
def test_restore_each_round_equals_one_continuous_accountant(rounds: list) -> None:
    continuous = make_accountant("rdp")
    rows: list[tuple[float, float, int]] = []
    for sigma, q, steps in rounds:
        restored = make_accountant("rdp", history=rows)
        for _ in range(steps):
            continuous.step(noise_multiplier=sigma, sample_rate=q)
            restored.step(noise_multiplier=sigma, sample_rate=q)
        rows.append((sigma, q, steps))
        assert restored.history == continuous.history
    assert epsilon_from_history(rows, delta=DELTA, accountant="rdp") == continuous.get_epsilon(DELTA)


@settings(max_examples=200, **FAST)
@given(history=st.lists(st.tuples(st.sampled_from([1.0, 2.0]), st.sampled_from([0.1, 0.2]), st.integers(0, 3)),
                        max_size=8))
def test_normalize_history_is_idempotent_and_keeps_the_steps(history: list) -> None:
    out = normalize_history(history)
    assert normalize_history(out) == out
    assert sum(n for _, _, n in out) == sum(n for _, _, n in history)
    assert all(n > 0 for _, _, n in out)
    assert all(a[:2] != b[:2] for a, b in zip(out, out[1:]))  # no adjacent duplicates left


finite = st.floats(min_value=1e-300, max_value=1e300, allow_nan=False, allow_infinity=False)


@settings(max_examples=20, **FAST)
@given(sigma=finite, q=st.floats(min_value=1e-12, max_value=1.0), eps=st.floats(min_value=0.0, max_value=1e300),
       site=st.text(min_size=1, max_size=12), reason=st.text(max_size=20), rnd=st.integers(0, 2**62))
def test_any_entry_round_trips_bit_exactly_and_verifies(sigma: float, q: float, eps: float, site: str, reason: str,
                                                        rnd: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        ledger = Ledger(Path(d) / "l.sqlite")
        written = [ledger.append(LedgerEntry(site=site, round=rnd, event="reserve", noise_multiplier=sigma,
                                             sample_rate=q, steps=1, delta=1e-5, accountant="prv", epsilon=eps)),
                   ledger.append(LedgerEntry(site=site, round=rnd, event="decline", reason=reason, epsilon=eps))]
        assert ledger.entries() == written
        assert ledger.verify() == []
        assert ledger.mechanism_history(site=site) == [(sigma, q, 1)]
