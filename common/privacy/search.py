"""Bracketing search for the smallest x whose (non-increasing) cost fits under a target.

Pure numerics, no privacy math: :func:`common.privacy.accountant.calibrate_noise_multiplier`
hands it ``σ -> ε(prior history + this round at σ)``. Every returned value was *evaluated*
and found feasible, so the answer is safe even where the cost function is only roughly
monotone (numerical accountants are); "smallest" holds to the relative precision ``rtol``.

Method: bracket by doubling/halving from ``start``, then shrink ``[below, value]`` with
secant steps in log-log space through the two evaluations nearest the target (ε(σ) is
smooth, close to a power law), nudged so that two evaluations usually close the bracket; after two steps in a row that fail to halve the bracket's
log-width comes one geometric bisection, so the search never does worse than bisection by much.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["NoFeasibleValue", "SearchResult", "smallest_feasible"]

MAX_EVALUATIONS = 200  # hard stop; a correct search needs ~5-25 evaluations
POOR_STEPS_BEFORE_BISECTION = 2  # safeguard: never much worse than bisection
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


def _secant(points: list[tuple[float, float]], target: float) -> float | None:
    """Root of log(cost/target) vs log(x) on the line through the two points nearest the root.

    Nearest = smallest |log(cost/target)|; those are usually the two latest evaluations, so this
    is a true secant step (fast when the curve bends, unlike regula falsi on the bracket ends).
    """
    logs = [(abs(g), math.log(x), g) for x, g in
            ((x, math.log(v / target)) for x, v in points if 0 < v < math.inf)]
    if len(logs) < 2:
        return None
    (_, x1, g1), (_, x2, g2) = sorted(logs)[:2]
    if x1 == x2 or g1 == g2:
        return None
    return math.exp(x1 - g1 * (x2 - x1) / (g2 - g1))


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
    points: list[tuple[float, float]] = []  # every (x, cost(x)) evaluated

    def f(x: float) -> float:
        if len(points) >= MAX_EVALUATIONS:
            raise RuntimeError(f"search did not converge in {MAX_EVALUATIONS} evaluations (target={target})")
        v = float(cost(x))
        if math.isnan(v):
            raise ValueError(f"cost({x!r}) is NaN: cannot search")
        points.append((x, v))
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
                return SearchResult(value=hi, below=None, cost=f_hi, evaluations=len(points))
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
    poor_steps = 0  # consecutive secant steps that did not halve the bracket's log-width
    while hi / lo > done:
        est = _secant(points, target)
        if est is None or poor_steps >= POOR_STEPS_BEFORE_BISECTION:
            x = math.sqrt(lo * hi)  # geometric bisection
            poor_steps = 0
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
        poor_steps = poor_steps + 1 if width > 0.5 * width_before else 0
        width_before = width
    return SearchResult(value=hi, below=lo, cost=f_hi, evaluations=len(points))
