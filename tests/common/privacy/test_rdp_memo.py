"""The RDP memo (common/privacy/rdp_memo.py) changes no number: ε and calibrated σ are bit-identical with it and
without it, for both accountants; and it is what the accountants actually use."""

from __future__ import annotations

import pytest
from opacus.accountants.analysis import rdp as opacus_rdp

from common.privacy import accountant, rdp_memo
from common.privacy.accountant import calibrate_noise_multiplier, epsilon_from_history

HISTORIES = [
    [(1.1, 1 / 8, 24)],
    [(0.9, 1 / 16, 160), (2.0, 1.0, 1)],  # a DP-SGD history then one central release
    [(1.3, 0.01, 1000)],
]


def _without_memo(monkeypatch, compute):
    """``compute()`` with Opacus' original function and our ε cache emptied (so nothing is remembered)."""
    assert rdp_memo.install() and rdp_memo.installed()
    with monkeypatch.context() as m:
        m.setattr(opacus_rdp, "_compute_rdp", opacus_rdp._compute_rdp.__wrapped__)
        accountant._epsilon.cache_clear()
        try:
            return compute()
        finally:
            accountant._epsilon.cache_clear()


@pytest.mark.parametrize("name", ["rdp", "prv"])
@pytest.mark.parametrize("history", HISTORIES)
def test_epsilon_is_bit_identical_with_and_without_the_memo(monkeypatch, name, history):
    accountant._epsilon.cache_clear()
    with_memo = epsilon_from_history(history, delta=1e-4, accountant=name)
    again = (accountant._epsilon.cache_clear(), epsilon_from_history(history, delta=1e-4, accountant=name))[1]
    without = _without_memo(monkeypatch, lambda: epsilon_from_history(history, delta=1e-4, accountant=name))
    assert with_memo == again == without


def test_calibration_is_bit_identical_with_and_without_the_memo(monkeypatch):
    kwargs = dict(target_epsilon=4.0, delta=4e-4, sample_rate=1 / 8, steps=8, accountant="prv",
                  prior_history=[(1.05, 1 / 8, 16)])
    accountant._epsilon.cache_clear()
    with_memo = calibrate_noise_multiplier(**kwargs)
    without = _without_memo(monkeypatch, lambda: calibrate_noise_multiplier(**kwargs))
    assert with_memo == without


def test_both_accountants_go_through_the_memo():
    accountant._epsilon.cache_clear()
    epsilon_from_history([(1.7, 1 / 5, 10)], delta=1e-5, accountant="rdp")
    first = rdp_memo.memo_info()
    accountant._epsilon.cache_clear()
    epsilon_from_history([(1.7, 1 / 5, 20)], delta=1e-5, accountant="prv")  # PRV sizes its domain by RDP
    second = rdp_memo.memo_info()
    assert first is not None and first.misses > 0
    assert second.hits > first.hits  # the same (q, σ, α) again: answered from the memo


def test_install_is_idempotent_and_refuses_an_unknown_signature(monkeypatch):
    assert rdp_memo.install() and rdp_memo.install()
    wrapped = opacus_rdp._compute_rdp
    assert not hasattr(wrapped.__wrapped__, "cache_info")  # wrapped once, not twice
    monkeypatch.setattr(opacus_rdp, "_compute_rdp", lambda q, sigma, order, extra=0: 0.0)
    assert rdp_memo.install() is False and not rdp_memo.installed()  # Opacus left as it is
