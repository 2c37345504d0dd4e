"""Bracketing search for the smallest x whose (non-increasing) cost fits under a target.

Pure numerics, no privacy math: :func:`common.privacy.accountant.calibrate_noise_multiplier`
hands it ``σ -> ε(prior history + this round at σ)``. Every returned value was *evaluated*
and found feasible, so the answer is safe even where the cost function is only roughly
monotone (numerical accountants are); "smallest" holds to the relative precision ``rtol``.

Method: bracket by doubling/halving from ``start``, then shrink ``[below, value]`` with a
secant step in log-log space (ε(σ) is close to a power law), nudged so that two evaluations
usually close the bracket; a step that fails to halve the bracket's log-width is replaced
by a geometric bisection, so the search never does worse than bisection by much.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["NoFeasibleValue", "SearchResult", "smallest_feasible"]

MAX_EVALUATIONS = 200  # hard stop; a correct search needs ~5-25 evaluations
CAP_PROBE_AFTER = 4  # doublings without success before `high` itself is tried (early "unreachable")


class NoFeasibleValue(ValueError):
    """Even ``high`` costs more than the target; ``cost_at_high`` says by how much."""

    def __init__(self, message: str, *, cost_at_high: float) -> None:
        super().__init__(message)
        self.cost_at_high = cost_at_high


@dataclass(frozen=True)
class SearchResult:
    value: float  # smallest feasible x found: cost(value) <= target (evaluated)
    below: float | None  # largest infeasible x evaluated (cost > target); None: `low` was feasible
    cost: float  # cost(value)
    evaluations: int  # how many times the cost function was called


def _secant(lo: float, f_lo: float, hi: float, f_hi: float, target: float) -> float | None:
    """Root of log(cost) - log(target) on the line through both ends in log-log space."""
    if not (f_lo > 0 and f_hi > 0 and math.isfinite(f_lo) and math.isfinite(f_hi)):
        return None
    g_lo, g_hi = math.log(f_lo / target), math.log(f_hi / target)
    if not g_lo > g_hi:
        return None
    x_lo, x_hi = math.log(lo), math.log(hi)
    return math.exp(x_lo + g_lo * (x_hi - x_lo) / (g_lo - g_hi))


def smallest_feasible(
    cost: Callable[[float], float],
    *,
    target: float,
    start: float,
    low: float,
    high: float,
    rtol: float,
) -> SearchResult:
    """Smallest ``x`` in ``[low, high]`` with ``cost(x) <= target``, to relative precision ``rtol``.

    Parameters
    ----------
    cost : callable
        Non-increasing in ``x`` (up to numerical noise); called at most ``MAX_EVALUATIONS`` times.
    target : float
        Feasibility threshold (> 0).
    start : float
        First point tried (clipped into ``[low, high]``); a good guess saves evaluations.
    low, high : float
        Search range, ``0 < low <= high``. If ``cost(low) <= target`` the answer is ``low``.
    rtol : float
        On return ``value <= below * (1 + rtol)`` unless ``below`` is None.

    Returns
    -------
    SearchResult

    Raises
    ------
    NoFeasibleValue
        If ``cost(high) > target``.
    """
    if not (0 < low <= high and math.isfinite(high)):
        raise ValueError(f"search range must satisfy 0 < low <= high < inf, got low={low}, high={high}")
    if not (target > 0 and rtol > 0):
        raise ValueError(f"target and rtol must be > 0, got target={target}, rtol={rtol}")
    calls = 0

    def f(x: float) -> float:
        nonlocal calls
        calls += 1
        if calls > MAX_EVALUATIONS:
            raise RuntimeError(f"search did not converge in {MAX_EVALUATIONS} evaluations (target={target})")
        v = float(cost(x))
        if math.isnan(v):
            raise ValueError(f"cost({x!r}) is NaN: cannot search")
        return v

    def infeasible(v_high: float) -> NoFeasibleValue:
        return NoFeasibleValue(f"cost at the upper end {high!r} is {v_high!r} > target {target!r}",
                               cost_at_high=v_high)

    x = min(max(start, low), high)
    v = f(x)
    lo: float | None = None
    hi: float | None = None
    f_lo = f_hi = math.nan
    if v <= target:
        hi, f_hi = x, v
        while lo is None:  # walk down until infeasible (or the floor)
            if hi <= low:
                return SearchResult(value=hi, below=None, cost=f_hi, evaluations=calls)
            x = max(hi / 2, low)
            v = f(x)
            if v <= target:
                hi, f_hi = x, v
            else:
                lo, f_lo = x, v
    else:
        lo, f_lo = x, v
        doublings = 0
        while hi is None:  # walk up until feasible (or give up at the cap)
            if lo >= high:
                raise infeasible(f_lo)
            doublings += 1
            if doublings == CAP_PROBE_AFTER and lo * 2 < high:
                v = f(high)
                if v > target:
                    raise infeasible(v)
                hi, f_hi = high, v
                break
            x = min(lo * 2, high)
            v = f(x)
            if v <= target:
                hi, f_hi = x, v
            else:
                lo, f_lo = x, v

    ratio = 1.0 + rtol
    done = ratio * (1 + 1e-12)  # float slack: hi / (hi / ratio) may round above ratio
    width_before = math.log(hi / lo)
    stalled = False
    while hi / lo > done:
        est = _secant(lo, f_lo, hi, f_hi, target)
        if est is None or stalled:
            x = math.sqrt(lo * hi)  # geometric bisection
        elif est >= hi / ratio:
            x = hi / ratio  # root just below hi: one evaluation can close the bracket
        elif est <= lo * ratio:
            x = lo * ratio
        else:
            x = min(est * math.sqrt(ratio), hi / ratio)  # lean above the root: next step closes from below
        v = f(x)
        if v <= target:
            hi, f_hi = x, v
        else:
            lo, f_lo = x, v
        width = math.log(hi / lo)
        stalled = width > 0.5 * width_before and not stalled  # bisect after one poor step, then retry secant
        width_before = width
    return SearchResult(value=hi, below=lo, cost=f_hi, evaluations=calls)
