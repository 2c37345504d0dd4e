"""Noise calibration: hits the target with the enforcing accountant, respects prior spend."""

from __future__ import annotations

import functools

import pytest
from opacus.accountants.utils import get_noise_multiplier

from common.privacy.accountant import (
    MIN_NOISE_MULTIPLIER,
    BudgetExhausted,
    calibrate_noise_multiplier,
    epsilon_from_history,
)

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")  # Opacus RDP at large σ

DELTA = 1e-5


@functools.cache
def calibrated(accountant: str, target: float, q: float, steps: int, prior: tuple = ()) -> float:
    """Each calibration once per test session (PRV evaluations cost 0.1-1 s each)."""
    return calibrate_noise_multiplier(target_epsilon=target, delta=DELTA, sample_rate=q, steps=steps,
                                      accountant=accountant, prior_history=prior)


@pytest.mark.parametrize("accountant, target, q, steps", [
    ("prv", 1.0, 0.01, 300),
    ("prv", 0.5, 0.02, 200),
    ("rdp", 2.0, 0.02, 500),
])
def test_calibration_hits_the_target(accountant: str, target: float, q: float, steps: int) -> None:
    sigma = calibrated(accountant, target, q, steps)
    assert epsilon_from_history([(sigma, q, steps)], delta=DELTA, accountant=accountant) <= target
    assert epsilon_from_history([(0.99 * sigma, q, steps)], delta=DELTA, accountant=accountant) > target


@pytest.mark.parametrize("accountant, target, q, steps", [("rdp", 2.0, 0.02, 500), ("prv", 1.0, 0.01, 300)])
def test_agrees_with_opacus_get_noise_multiplier_on_the_same_accountant(
        accountant: str, target: float, q: float, steps: int) -> None:
    ours = calibrated(accountant, target, q, steps)
    theirs = get_noise_multiplier(target_epsilon=target, target_delta=DELTA, sample_rate=q, steps=steps,
                                  accountant=accountant)
    # Opacus stops within 0.01 in ε (so slightly above the smallest σ); ours is the smallest to 0.5 %
    assert theirs * 0.95 <= ours <= theirs * 1.005


def test_prv_needs_less_noise_than_rdp() -> None:
    assert calibrated("prv", 1.0, 0.01, 300) < calibrated("rdp", 1.0, 0.01, 300)


def test_calibration_with_prior_history_fits_the_rest_of_the_budget() -> None:
    # Prepare: a site already trained 300 steps
    prior = ((3.0, 0.01, 300),)
    spent = epsilon_from_history(prior, delta=DELTA, accountant="prv")
    assert 0.1 < spent < 1.0
    # Execute
    sigma = calibrated("prv", 1.0, 0.01, 300, prior)
    # Assert: prior + new fits, 1 % less noise would not; less budget left -> more noise
    assert epsilon_from_history([*prior, (sigma, 0.01, 300)], delta=DELTA, accountant="prv") <= 1.0
    assert epsilon_from_history([*prior, (0.99 * sigma, 0.01, 300)], delta=DELTA, accountant="prv") > 1.0
    assert sigma > calibrated("prv", 1.0, 0.01, 300)


def test_budget_exhausted_when_prior_history_alone_exceeds_the_target() -> None:
    prior = [(0.8, 0.1, 200)]
    with pytest.raises(BudgetExhausted, match="prior history alone") as info:
        calibrate_noise_multiplier(target_epsilon=1.0, delta=DELTA, sample_rate=0.1, steps=10, accountant="rdp",
                                   prior_history=prior)
    assert info.value.spent_epsilon > info.value.target_epsilon == 1.0


def test_budget_exhausted_when_no_sigma_fits_the_remainder() -> None:
    # PRV reports the upper end of a 0.01-wide band: a target of 0.005 cannot be certified at any σ
    with pytest.raises(BudgetExhausted, match="even σ=10000 gives") as info:
        calibrate_noise_multiplier(target_epsilon=0.005, delta=DELTA, sample_rate=0.01, steps=10, accountant="prv")
    assert info.value.spent_epsilon == 0.0


def test_floor_is_returned_when_tiny_noise_already_fits() -> None:
    sigma = calibrate_noise_multiplier(target_epsilon=500.0, delta=DELTA, sample_rate=0.01, steps=5,
                                       accountant="rdp")
    assert sigma == MIN_NOISE_MULTIPLIER


@pytest.mark.parametrize("kw, match", [
    (dict(target_epsilon=0.0), "target_epsilon must be > 0"),
    (dict(steps=0), "steps must be an integer >= 1"),
    (dict(sample_rate=1.5), r"sample_rate must be in \(0, 1\]"),
    (dict(delta=1.0), "delta"),
    (dict(accountant="gdp"), "refused"),
])
def test_bad_arguments_are_rejected(kw: dict, match: str) -> None:
    args = dict(target_epsilon=1.0, delta=DELTA, sample_rate=0.01, steps=10, accountant="rdp") | kw
    with pytest.raises(ValueError, match=match):
        calibrate_noise_multiplier(**args)
