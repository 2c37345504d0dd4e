"""Independent recomputation of ε with Google's ``dp_accounting`` (0.6): PLD and RDP.

Used by tests and the audit to cross-check the Opacus accountants of
:mod:`common.privacy.accountant`; it shares no code with them (not even history
validation), so a bug in one shows up as a disagreement.

Mechanism and relation
----------------------
A history ``[(σ, q, steps), ...]`` becomes the ``dp_accounting`` event
``ComposedDpEvent([SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(σ)), steps), ...])``:
Poisson-subsampled Gaussian, noise std σ times the sensitivity (the clipping norm), exactly
what Opacus' DP-SGD runs. Both accountants use ``NeighboringRelation.ADD_OR_REMOVE_ONE``
(add/remove one record), the relation of Opacus' accountants:

* PLD (``dp_accounting.pld.PLDAccountant``): for a Poisson-subsampled Gaussian it builds the
  privacy-loss distribution of the REMOVE and of the ADD direction separately
  (``privacy_loss_distribution._pld_for_subsampled_mechanism``), composes each, and reports
  ``max(ε_remove, ε_add)``. Pessimistic discretisation: an upper bound, tight up to the
  value discretisation interval.
* RDP (``dp_accounting.rdp.RdpAccountant``): RDP of the sampled Gaussian (Mironov et al.
  2019), converted with Canonne-Kamath-Steinke 2020 Prop. 12 (the same formula as Opacus).
  With Opacus' orders (``RDPAccountant.DEFAULT_ALPHAS``) it should reproduce Opacus' RDP.

All ε are (ε, δ)-DP at the δ the caller passes.

Precision and speed of the PLD
------------------------------
``PLD_VALUE_DISCRETIZATION_INTERVAL = 1e-3``: on 1000 steps at ε≈1.8 it is within 0.04 %
of the 1e-4 result and takes ~0.1-0.2 s (1e-4: ~1-2 s), so a 1 % comparison is meaningful
for ε ≳ 0.5. The pessimistic rounding error grows with the number of compositions and
dominates tiny ε (σ=100, q=0.01, 1000 steps: 0.024 at 1e-3, 0.0074 at 1e-5): pass a finer
interval to compare there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import dp_accounting
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

__all__ = ["PLD_VALUE_DISCRETIZATION_INTERVAL", "dp_event", "epsilon_dp_accounting_rdp", "epsilon_pld",
           "epsilon_pld_bounds"]

PLD_VALUE_DISCRETIZATION_INTERVAL = 1e-3  # PLD grid; see module docstring for the precision/speed trade
_RELATION = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE  # Opacus' relation


def dp_event(history: Sequence[Sequence[Any]]) -> dp_accounting.DpEvent:
    """The ``dp_accounting`` event of a DP-SGD history of ``(σ, q, steps)`` entries (in order).

    Raises
    ------
    ValueError
        For an entry that is not (σ > 0, 0 < q <= 1, integer steps >= 0).
    """
    events: list[dp_accounting.DpEvent] = []
    for i, entry in enumerate(history):
        sigma, q, steps = entry
        if not (math.isfinite(sigma) and sigma > 0 and 0 < q <= 1 and int(steps) == steps >= 0):
            raise ValueError(f"history[{i}] = {entry!r}: need σ > 0, 0 < q <= 1, integer steps >= 0")
        if steps:
            gaussian = dp_accounting.GaussianDpEvent(float(sigma))
            events.append(dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(float(q), gaussian), int(steps)))
    return dp_accounting.ComposedDpEvent(events)


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def epsilon_pld(
    history: Sequence[Sequence[Any]],
    *,
    delta: float,
    value_discretization_interval: float = PLD_VALUE_DISCRETIZATION_INTERVAL,
) -> float:
    """ε of ``history`` at ``delta`` by ``dp_accounting``'s PLD accountant (add/remove, max of both).

    Parameters
    ----------
    history : sequence of (noise_multiplier, sample_rate, num_steps)
    delta : float
        In (0, 1).
    value_discretization_interval : float
        PLD grid; smaller is tighter and slower.

    Returns
    -------
    float
        ε >= 0 (0.0 for an empty history).
    """
    _check_delta(delta)
    accountant = PLDAccountant(_RELATION, value_discretization_interval=value_discretization_interval)
    accountant.compose(dp_event(history))
    return float(accountant.get_epsilon(delta))


def epsilon_pld_bounds(history: Sequence[Sequence[Any]], *, delta: float,
                       value_discretization_interval: float) -> tuple[float, float]:
    """(optimistic, pessimistic) ε of ``history`` by dp_accounting's PLD on the given grid (add/remove).

    The pessimistic estimate rounds every privacy loss UP to the grid (an upper bound of the true ε); the
    optimistic one rounds DOWN (``pessimistic_estimate=False``; privacy-buckets discretisation): a lower bound.
    A reported ε below the optimistic value is certainly under-reported; between the two the grid cannot tell.

    Parameters
    ----------
    history : sequence of (noise_multiplier, sample_rate, num_steps)
        Poisson-subsampled Gaussian steps; ``sample_rate = 1`` is a plain Gaussian release.
    delta : float
        In (0, 1).
    value_discretization_interval : float
        The grid; the two bounds close in as it shrinks (and the cost grows).
    """
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    _check_delta(delta)
    bounds = []
    for pessimistic in (False, True):
        total = None
        for i, (sigma, q, steps) in enumerate(history):
            if not (math.isfinite(sigma) and sigma > 0 and 0 < q <= 1 and int(steps) == steps >= 0):
                raise ValueError(f"history[{i}] = {(sigma, q, steps)!r}: need σ > 0, 0 < q <= 1, integer steps >= 0")
            if not steps:
                continue
            one = pld_lib.from_gaussian_mechanism(
                standard_deviation=float(sigma), sampling_prob=float(q), pessimistic_estimate=pessimistic,
                value_discretization_interval=value_discretization_interval, use_connect_dots=pessimistic,
                neighboring_relation=_RELATION).self_compose(int(steps))
            total = one if total is None else total.compose(one)
        bounds.append(0.0 if total is None else max(0.0, float(total.get_epsilon_for_delta(delta))))
    return bounds[0], bounds[1]


def epsilon_dp_accounting_rdp(
    history: Sequence[Sequence[Any]],
    *,
    delta: float,
    orders: Sequence[float] | None = None,
) -> float:
    """ε of ``history`` at ``delta`` by ``dp_accounting``'s RDP accountant (add/remove).

    Parameters
    ----------
    history : sequence of (noise_multiplier, sample_rate, num_steps)
    delta : float
        In (0, 1).
    orders : sequence of float, optional
        RDP orders; default ``dp_accounting``'s own (1.1 ... 1024). Pass
        ``opacus.accountants.RDPAccountant.DEFAULT_ALPHAS`` to compare with Opacus' RDP.

    Returns
    -------
    float
        ε >= 0 (0.0 for an empty history).
    """
    _check_delta(delta)
    accountant = RdpAccountant(orders=None if orders is None else list(orders), neighboring_relation=_RELATION)
    accountant.compose(dp_event(history))
    return float(accountant.get_epsilon(delta))
