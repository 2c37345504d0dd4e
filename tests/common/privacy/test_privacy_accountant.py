"""Accountant factory, history normalisation, save/restore, default δ."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from common.privacy.accountant import (
    ACCOUNTANTS,
    PRV_EPS_ERROR,
    default_delta,
    epsilon_from_history,
    make_accountant,
    normalize_history,
)

DELTA = 1e-5


# ---------------------------------------------------------------- factory
@pytest.mark.parametrize("name, cls", [("prv", PRVAccountant), ("rdp", RDPAccountant)])
def test_factory_builds_the_opacus_accountant_with_its_history(name: str, cls: type) -> None:
    acc = make_accountant(name, history=[(1.0, 0.1, 3), (1.0, 0.1, 2), (2.0, 0.1, 1)])
    assert type(acc) is cls and acc.mechanism() == name
    assert acc.history == [(1.0, 0.1, 5), (2.0, 0.1, 1)]
    acc.step(noise_multiplier=2.0, sample_rate=0.1)  # Opacus continues the restored history
    assert acc.history == [(1.0, 0.1, 5), (2.0, 0.1, 2)]
    assert ACCOUNTANTS == ("prv", "rdp")


def test_gdp_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="approximation.*BELOW"):
        make_accountant("gdp")
    with pytest.raises(ValueError, match="BELOW"):
        epsilon_from_history([(1.0, 0.1, 1)], delta=DELTA, accountant="gdp")


def test_unknown_accountant() -> None:
    with pytest.raises(ValueError, match="unknown accountant 'pld'"):
        make_accountant("pld")


def test_opacus_state_dict_refuses_a_mismatched_mechanism() -> None:
    state = make_accountant("prv", history=[(1.0, 0.1, 3)]).state_dict()
    with pytest.raises(ValueError, match="cannot be loaded"):
        make_accountant("rdp").load_state_dict(state)


# ---------------------------------------------------------------- history
def test_normalize_merges_adjacent_equal_mechanisms_only() -> None:
    h = [(1.0, 0.1, 2), (1, 0.1, 3), (1.5, 0.1, 1), (1.0, 0.1, 4), (1.0, 0.2, 0), (np.float64(1.0), 0.1, np.int64(1))]
    assert normalize_history(h) == [(1.0, 0.1, 5), (1.5, 0.1, 1), (1.0, 0.1, 5)]
    out = normalize_history(h)
    assert all(type(s) is float and type(q) is float and type(n) is int for s, q, n in out)


@pytest.mark.parametrize("entry, why", [
    ((0.0, 0.1, 1), "noise_multiplier must be > 0"),
    ((-1.0, 0.1, 1), "noise_multiplier must be > 0"),
    ((math.nan, 0.1, 1), "finite"),
    ((math.inf, 0.1, 1), "finite"),
    ((1.0, 0.0, 1), r"sample_rate must be in \(0, 1\]"),
    ((1.0, 1.5, 1), r"sample_rate must be in \(0, 1\]"),
    ((1.0, 0.1, -1), "integer >= 0"),
    ((1.0, 0.1, 1.5), "integer >= 0"),
    ((1.0, 0.1, True), "integer >= 0"),
    ((True, 0.1, 1), "finite number"),
    ((1.0, 0.1), "expected"),
    ("abc", "expected"),
])
def test_bad_history_entries_are_rejected_by_index(entry: tuple, why: str) -> None:
    with pytest.raises(ValueError, match=r"history\[1\].*" + why):
        normalize_history([(1.0, 0.1, 1), entry])


def test_empty_history_spends_nothing() -> None:
    for name in ACCOUNTANTS:
        assert epsilon_from_history([], delta=DELTA, accountant=name) == 0.0
        assert epsilon_from_history([(1.0, 0.1, 0)], delta=DELTA, accountant=name) == 0.0


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, math.nan, True])
def test_bad_delta(delta: float) -> None:
    with pytest.raises(ValueError, match="delta"):
        epsilon_from_history([(1.0, 0.1, 1)], delta=delta, accountant="rdp")


def test_rdp_is_looser_than_prv() -> None:
    h = [(1.1, 0.02, 100), (0.9, 0.02, 20)]
    prv = epsilon_from_history(h, delta=DELTA, accountant="prv")
    rdp = epsilon_from_history(h, delta=DELTA, accountant="rdp")
    assert rdp >= prv > 0


# ---------------------------------------------------------- save / restore
ROUNDS = [(1.0, 0.02, 5), (1.0, 0.02, 5), (1.3, 0.02, 4), (1.0, 0.02, 5), (1.0, 0.01, 3)]  # (σ, q, steps) per round


@pytest.mark.parametrize("name", ACCOUNTANTS)
def test_save_restore_step_equals_one_accountant_over_the_whole_history(name: str) -> None:
    # Prepare: one accountant steps through every round; a site restores from its ledger each round
    continuous = make_accountant(name)
    ledger_rows: list[tuple[float, float, int]] = []  # what a ledger's reserve rows hold: one per round
    for sigma, q, steps in ROUNDS:
        # Execute: restore from the ledger (like a fresh process), step this round, save as a row
        restored = make_accountant(name, history=ledger_rows)
        for _ in range(steps):
            continuous.step(noise_multiplier=sigma, sample_rate=q)
            restored.step(noise_multiplier=sigma, sample_rate=q)
        ledger_rows.append((sigma, q, steps))
        # and via Opacus' own state_dict
        reloaded = make_accountant(name)
        reloaded.load_state_dict(restored.state_dict())
        # Assert: the same history, hence the same ε, after every round
        assert restored.history == continuous.history == reloaded.history
    eps_cont = epsilon_from_history(continuous.history, delta=DELTA, accountant=name)
    eps_rows = epsilon_from_history(ledger_rows, delta=DELTA, accountant=name)
    if name == "rdp":
        assert eps_rows == eps_cont  # exact
    else:
        assert abs(eps_rows - eps_cont) <= PRV_EPS_ERROR  # PRV: within its error band (here exact too)
    assert continuous.history == [(1.0, 0.02, 10), (1.3, 0.02, 4), (1.0, 0.02, 5), (1.0, 0.01, 3)]


def test_unmerged_rows_give_the_merged_epsilon_bit_for_bit() -> None:
    # the reservation ε (computed from ledger rows + the next round) equals what the Opacus
    # accountant reports after stepping: client/round.py checks this with rel_tol 1e-6
    rows = [(1.0, 0.02, 5), (1.0, 0.02, 5)]
    for name in ACCOUNTANTS:
        a = epsilon_from_history(rows, delta=DELTA, accountant=name)
        b = epsilon_from_history([(1.0, 0.02, 10)], delta=DELTA, accountant=name)
        assert a == b


# -------------------------------------------------------------- default δ
@pytest.mark.parametrize("n, delta", [(1, 0.1), (9, 0.01), (10, 0.01), (212, 4e-4), (303, 3e-4), (920, 1e-4),
                                      (1000, 1e-4), (123, 8e-4), (200, 5e-4)])
def test_default_delta_examples(n: int, delta: float) -> None:
    assert default_delta(n) == delta


@settings(max_examples=300, deadline=None, derandomize=True)
@given(n=st.integers(min_value=1, max_value=10**15))
def test_default_delta_is_strictly_below_one_over_n(n: int) -> None:
    d = default_delta(n)
    exact = Fraction(d)  # the float's exact value
    assert exact < Fraction(1, n)
    assert exact <= Fraction(1, 10 * n) * (1 + Fraction(1, 10**12))  # rounded down (float ulp aside)
    assert exact > Fraction(1, 20 * n)  # ... by less than a factor 2
    assert f"{d:.0e}" == f"{d:e}".replace(".000000", "")  # one significant digit


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_default_delta_rejects_bad_n(n: int) -> None:
    with pytest.raises(ValueError, match="n \\(number of records\\)"):
        default_delta(n)
