"""ε of a composed history by ``dp_accounting`` (PLD and RDP), memoised by history prefix, and the verdict on a
reported ε: under-reported below the OPTIMISTIC PLD estimate (a lower bound of the true ε), uncertain between
the optimistic and pessimistic estimates of the fine grid, fine at or above the pessimistic one (an upper bound).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import types
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import dp_accounting
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from common.privacy.reference import PLD_VALUE_DISCRETIZATION_INTERVAL, epsilon_pld_bounds
from server.audit.mechanisms import MECHANISMS

__all__ = ["FINE_PLD_DISCRETIZATION_INTERVAL", "Step", "cumulative_epsilons", "judge_reported", "pld_bounds",
           "rdp_orders_excluded"]

FINE_PLD_DISCRETIZATION_INTERVAL = PLD_VALUE_DISCRETIZATION_INTERVAL / 10  # decides a value between coarse bounds
_RELATION = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
_CACHE_SIZE = 4096  # memoised accountant states (by history prefix): re-audits and copies cost nothing

Step = tuple[str, float, float, int]  # (mode, σ, q, steps): one composed row
_STATES: OrderedDict[tuple[Step, ...], tuple[PLDAccountant, RdpAccountant, bool]] = OrderedDict()
_EPS: OrderedDict[tuple[tuple[Step, ...], float], tuple[float, float]] = OrderedDict()


def _remember(cache: OrderedDict, key: Any, value: Any) -> Any:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return value


class _Excluded(logging.Handler):
    """Counts dp-accounting's "failed to converge ... Excluding this order" notes."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "Excluding this order" in record.getMessage()


@contextlib.contextmanager
def _quiet_absl():
    """Silence dp-accounting's RDP notes about fractional orders it excludes, and count them.

    An excluded order only makes dp-accounting's RDP ε larger; but then it may exceed Opacus'
    RDP (which computes every order), so the RDP companion figure is judged against PLD instead.
    """
    absl = logging.getLogger("absl")
    level, propagate, handler = absl.level, absl.propagate, _Excluded()
    absl.setLevel(logging.WARNING)
    absl.propagate = False
    absl.addHandler(handler)
    try:
        yield handler
    finally:
        absl.removeHandler(handler)
        absl.setLevel(level)
        absl.propagate = propagate


def _event(step: Step) -> dp_accounting.DpEvent:
    mode, sigma, q, steps = step
    return MECHANISMS[mode].event(types.SimpleNamespace(noise_multiplier=sigma, sample_rate=q, steps=steps))


def _state(prefix: tuple[Step, ...]) -> tuple[PLDAccountant, RdpAccountant, bool]:
    """PLD and RDP accountants that composed ``prefix`` (and whether RDP excluded an order), built on
    the longest memoised prefix."""
    if prefix in _STATES:
        _STATES.move_to_end(prefix)
        return _STATES[prefix]
    known = next((i for i in range(len(prefix) - 1, -1, -1) if prefix[:i] in _STATES), 0)
    if known:
        pld, rdp, excluded = _STATES[prefix[:known]]
        pld, rdp = copy.deepcopy(pld), copy.deepcopy(rdp)
    else:
        pld = PLDAccountant(_RELATION, value_discretization_interval=PLD_VALUE_DISCRETIZATION_INTERVAL)
        rdp, excluded = RdpAccountant(neighboring_relation=_RELATION), False
    for i in range(known, len(prefix)):
        event = _event(prefix[i])
        pld.compose(event)
        with _quiet_absl() as notes:
            rdp.compose(event)
        excluded = excluded or notes.count > 0
        _remember(_STATES, prefix[:i + 1], (pld, rdp, excluded))
        if i + 1 < len(prefix):
            pld, rdp = copy.deepcopy(pld), copy.deepcopy(rdp)
    return _STATES[prefix]


def cumulative_epsilons(prefix: Sequence[Step], delta: float) -> tuple[float, float]:
    """(PLD ε, RDP ε) by ``dp_accounting`` of the composed ``prefix`` at ``delta`` (0, 0 when empty)."""
    prefix = tuple(prefix)
    if not prefix:
        return 0.0, 0.0
    key = (prefix, float(delta))
    if key in _EPS:
        return _EPS[key]
    pld, rdp, _ = _state(prefix)
    with _quiet_absl():
        return _remember(_EPS, key, (float(pld.get_epsilon(delta)), float(rdp.get_epsilon(delta))))


def rdp_orders_excluded(prefix: Sequence[Step]) -> bool:
    """Whether dp-accounting's RDP had to exclude a fractional order while composing ``prefix``."""
    return bool(prefix) and _state(tuple(prefix))[2]


def pld_bounds(prefix: Sequence[Step], delta: float, interval: float) -> tuple[float, float]:
    """(optimistic, pessimistic) PLD ε of ``prefix`` on grid ``interval`` (memoised; ∞ after a no-DP step)."""
    key = (("bounds", interval), *prefix), float(delta)
    if key not in _EPS:
        if any(step[0] == "none" for step in prefix):
            bounds = (math.inf, math.inf)
        else:  # central rows are plain Gaussian releases: q = 1
            history = [(s, q if mode == "sample-level" else 1.0, n) for mode, s, q, n in prefix]
            bounds = epsilon_pld_bounds(history, delta=delta, value_discretization_interval=interval)
        _remember(_EPS, key, bounds)
    return _EPS[key]


def judge_reported(reported: float, pessimistic: float, prefix: Sequence[Step], delta: float) -> tuple[str, float]:
    """``("ok" | "uncertain" | "under-reported", reference ε)`` for a reported ε below the coarse pessimistic PLD.

    Below the coarse grid's optimistic PLD (a lower bound of the true ε): under-reported. Otherwise the fine grid
    decides: below its optimistic value under-reported, below its pessimistic value uncertain (WARN), else fine.
    """
    if reported >= pessimistic:
        return "ok", pessimistic
    optimistic, _ = pld_bounds(prefix, delta, PLD_VALUE_DISCRETIZATION_INTERVAL)
    if reported < optimistic:
        return "under-reported", optimistic
    fine_optimistic, fine_pessimistic = pld_bounds(prefix, delta, FINE_PLD_DISCRETIZATION_INTERVAL)
    if reported < fine_optimistic:
        return "under-reported", fine_optimistic
    return ("uncertain", fine_pessimistic) if reported < fine_pessimistic else ("ok", fine_pessimistic)
