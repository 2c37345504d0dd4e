"""The bracketing search behind noise calibration, on synthetic cost functions (fast)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.privacy.search import NoFeasibleValue, smallest_feasible


def power_law(c: float, a: float):
    return lambda x: c / x**a


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    root=st.floats(0.31, 5000.0),
    a=st.floats(0.3, 3.0),
    start=st.floats(0.3, 1e4),
    rtol=st.sampled_from([0.001, 0.005, 0.01]),
)
def test_bracket_invariants_on_power_laws(root: float, a: float, start: float, rtol: float) -> None:
    # Prepare: cost(root) == target exactly (up to rounding)
    target = 2.0
    cost = power_law(target * root**a, a)
    # Execute
    res = smallest_feasible(cost, target=target, start=start, low=0.3, high=1e4, rtol=rtol)
    # Assert: returned point was evaluated feasible, the bracket is tight, and the answer is near the root
    assert cost(res.value) <= target and res.cost == cost(res.value)
    assert res.below is not None and cost(res.below) > target
    assert res.value <= res.below * (1 + rtol) * (1 + 1e-9)
    assert res.below < root * (1 + 1e-9) and res.value >= root * (1 - 1e-9)
    assert res.evaluations <= 30


def test_secant_needs_few_evaluations_for_a_smooth_cost() -> None:
    res = smallest_feasible(power_law(3.0, 1.0), target=1.0, start=1.0, low=0.3, high=1e4, rtol=0.005)
    assert res.value == pytest.approx(3.0, rel=0.006)
    assert res.evaluations <= 7  # bisection from [2, 4] alone would need 7 more after bracketing


def test_step_function_still_converges() -> None:
    # a cost with a jump (no secant information): falls back to bisection
    res = smallest_feasible(lambda x: 10.0 if x < 7.3 else 0.5, target=1.0, start=1.0, low=0.3, high=1e4, rtol=0.005)
    assert 7.3 <= res.value <= 7.3 * 1.005 and res.below < 7.3


def test_floor_is_returned_when_feasible() -> None:
    res = smallest_feasible(lambda x: 0.1, target=1.0, start=2.0, low=0.3, high=1e4, rtol=0.005)
    assert res.value == 0.3 and res.below is None


def test_zero_cost_is_feasible() -> None:
    res = smallest_feasible(lambda x: 0.0 if x >= 5 else math.inf, target=1.0, start=1.0, low=0.3, high=1e4,
                            rtol=0.005)
    assert 5 <= res.value <= 5 * 1.005


def test_infeasible_raises_with_the_cost_at_the_cap() -> None:
    calls: list[float] = []

    def cost(x: float) -> float:
        calls.append(x)
        return 1.0 + 1.0 / x

    with pytest.raises(NoFeasibleValue) as info:
        smallest_feasible(cost, target=1.0, start=1.0, low=0.3, high=1e4, rtol=0.005)
    assert info.value.cost_at_high == pytest.approx(1.0001)
    assert len(calls) <= 5  # the cap is probed early instead of doubling all the way


def test_nan_cost_is_an_error() -> None:
    with pytest.raises(ValueError, match="NaN"):
        smallest_feasible(lambda x: math.nan, target=1.0, start=1.0, low=0.3, high=10, rtol=0.01)


@pytest.mark.parametrize("kw", [dict(low=0.0), dict(low=5.0, high=1.0), dict(rtol=0.0), dict(target=0.0)])
def test_bad_arguments(kw: dict) -> None:
    args = dict(target=1.0, start=1.0, low=0.3, high=10.0, rtol=0.01) | kw
    with pytest.raises(ValueError):
        smallest_feasible(lambda x: 1 / x, **args)
