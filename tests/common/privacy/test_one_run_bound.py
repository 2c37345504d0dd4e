"""The one-run audit's statistic (Steinke, Nasr & Jagielski 2023) against independent computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from common.privacy.one_run import (
    audit_scores,
    default_grid,
    epsilon_lower_bound,
    guess_from_scores,
    p_value,
)


def _tail_exhaustive(r: int, u: int, p: float) -> float:
    """P[Binomial(r, p) >= u] by summing over every one of the 2^r right/wrong patterns."""
    if u <= 0:
        return 1.0
    total = 0.0
    for pattern in itertools.product((0, 1), repeat=r):
        c = sum(pattern)
        if c >= u:
            total += p**c * (1 - p) ** (r - c)
    return total


def _tail_comb(r: int, u: int, p: float) -> float:
    """P[Binomial(r, p) >= u] with exact binomial coefficients (no shared code with the module)."""
    if u <= 0:
        return 1.0
    return sum(math.comb(r, k) * p**k * (1 - p) ** (r - k) for k in range(u, r + 1))


def _p_value_reference(m: int, r: int, v: int, eps: float, delta: float, tail=_tail_comb) -> float:
    """The theorem's right-hand side with the max over ALL i in 1..m, as stated."""
    p = math.exp(eps) / (1 + math.exp(eps))
    f = {u: tail(r, u, p) for u in range(0, v + 1)}  # f(u) = 1 for u <= 0
    excess = max((f.get(v - i, 1.0) - f[v]) / i for i in range(1, m + 1))
    f_v = f[v]
    return min(1.0, f_v + 2 * m * delta * excess)


@pytest.mark.parametrize("m,r,v", [(10, 10, 10), (10, 8, 6), (12, 9, 9), (20, 10, 3), (10, 6, 0)])
@pytest.mark.parametrize("eps", [0.0, 0.3, 1.0, 2.5])
@pytest.mark.parametrize("delta", [0.0, 1e-3, 0.02])
def test_p_value_matches_an_exhaustive_computation(m, r, v, eps, delta):
    expected = _p_value_reference(m, r, v, eps, delta, tail=_tail_exhaustive)
    assert p_value(m=m, guesses=r, correct=v, epsilon=eps, delta=delta) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("m,r,v,delta", [(1000, 100, 93, 1e-5), (1000, 500, 300, 4e-4), (300, 300, 250, 1e-4)])
def test_p_value_matches_exact_binomial_sums_for_large_r(m, r, v, delta):
    for eps in (0.5, 1.5, 3.0):
        expected = _p_value_reference(m, r, v, eps, delta)
        assert p_value(m=m, guesses=r, correct=v, epsilon=eps, delta=delta) == pytest.approx(expected, rel=1e-7)


def test_pure_dp_all_correct_has_a_closed_form():
    # δ = 0, v = r: p-value = p_ε^r, so ε̂ = logit(α^(1/r))
    for r in (5, 20, 100, 1000):
        p = 0.05 ** (1 / r)
        assert epsilon_lower_bound(m=1000, guesses=r, correct=r, delta=0.0) == pytest.approx(
            math.log(p / (1 - p)), abs=2e-6)


# (m, r, v, δ) -> ε̂ at 95 %, computed with scipy.stats.binom and a plain bisection (outside this repo)
PINNED = [
    ((1000, 100, 100, 4e-4), 2.102177272375392),
    ((1000, 100, 100, 1e-5), 3.4653763478110453),
    ((1000, 500, 450, 1e-5), 1.946011938968532),
    ((1000, 200, 180, 1e-5), 1.7962850706709343),
    ((100, 50, 45, 0.0), 1.393604122506329),
    ((1000, 1000, 1000, 1e-6), 5.8063965458021105),
]


@pytest.mark.parametrize("args,expected", PINNED)
def test_lower_bound_pinned_values(args, expected):
    m, r, v, delta = args
    assert epsilon_lower_bound(m=m, guesses=r, correct=v, delta=delta) == pytest.approx(expected, abs=2e-6)


@pytest.mark.parametrize("m,r,v,delta", [(1000, 100, 95, 1e-5), (1000, 40, 40, 4e-4), (200, 100, 80, 1e-3)])
def test_lower_bound_is_the_first_crossing_of_the_level(m, r, v, delta):
    eps = epsilon_lower_bound(m=m, guesses=r, correct=v, delta=delta)
    assert eps > 0
    assert _p_value_reference(m, r, v, eps, delta) <= 0.05
    assert _p_value_reference(m, r, v, eps + 1e-4, delta) > 0.05
    for e in np.linspace(0, eps, 25):  # every smaller ε is rejected too
        assert _p_value_reference(m, r, v, float(e), delta) <= 0.05


def test_edge_cases():
    assert epsilon_lower_bound(m=1000, guesses=100, correct=0, delta=1e-5) == 0.0
    assert epsilon_lower_bound(m=1000, guesses=0, correct=0, delta=1e-5) == 0.0
    assert epsilon_lower_bound(m=1000, guesses=100, correct=50, delta=0.0) == 0.0  # chance level proves nothing
    for delta in (0.0, 1e-7):  # all m guesses correct: finite, and growing with m
        bounds = [epsilon_lower_bound(m=m, guesses=m, correct=m, delta=delta) for m in (10, 30, 100, 300, 1000)]
        assert all(math.isfinite(b) and b > 0 for b in bounds)
        assert all(a < b for a, b in zip(bounds, bounds[1:]))
    with pytest.raises(ValueError):
        p_value(m=10, guesses=11, correct=3, epsilon=1.0, delta=0.0)
    with pytest.raises(ValueError):
        epsilon_lower_bound(m=10, guesses=5, correct=5, delta=0.0, confidence=1.0)


@pytest.mark.parametrize("m,r,v,delta", [(1000, 100, 90, 1e-5), (1000, 300, 200, 4e-4), (50, 50, 45, 0.01)])
def test_p_value_is_non_decreasing_in_epsilon_when_2m_delta_at_most_1(m, r, v, delta):
    assert 2 * m * delta <= 1
    ps = [p_value(m=m, guesses=r, correct=v, epsilon=e, delta=delta) for e in np.linspace(0, 8, 161)]
    assert all(b >= a - 1e-12 for a, b in zip(ps, ps[1:]))


def test_guesses_count_top_and_bottom_and_break_ties_by_index():
    scores = [5.0, -3.0, 0.0, 0.0, 2.0, -1.0]
    included = [True, False, True, False, False, False]
    g = guess_from_scores(scores, included, k_plus=2, k_minus=2)  # IN: 0, 4; OUT: 5, 1
    assert (g.k_plus, g.k_minus, g.correct, g.guesses) == (2, 2, 3, 4)
    g = guess_from_scores(scores, included, k_plus=3, k_minus=0)  # ties at 0.0: index 2 before 3
    assert g.correct == 2


def test_grid_maximum_is_bonferroni_corrected():
    rng = np.random.default_rng(7)
    included = rng.random(1000) < 0.5
    scores = included * 3.0 + rng.normal(size=1000)
    grid = default_grid(1000)
    stat = audit_scores(scores, included, delta=1e-5)
    assert stat.level_per_test == pytest.approx(0.05 / len(grid))
    manual = []
    for k_plus, k_minus in grid:
        g = guess_from_scores(scores, included, k_plus=k_plus, k_minus=k_minus)
        manual.append(epsilon_lower_bound(m=1000, guesses=g.guesses, correct=g.correct, delta=1e-5,
                                          confidence=1 - 0.05 / len(grid)))
    assert stat.epsilon_lower_bound == pytest.approx(max(manual))
    assert stat.epsilon_lower_bound > 1.0  # a strong signal is detected ...
    single = epsilon_lower_bound(m=1000, guesses=stat.best.guesses, correct=stat.best.correct, delta=1e-5)
    assert stat.epsilon_lower_bound < single  # ... and the correction costs something


def test_scores_independent_of_membership_rarely_give_a_positive_bound():
    # the null ε = 0 is true here: a positive bound is a false alarm, at most 5 % of the time
    rng = np.random.default_rng(11)
    alarms = 0
    for _ in range(200):
        included = rng.random(200) < 0.5
        alarms += audit_scores(rng.normal(size=200), included, delta=0.0).epsilon_lower_bound > 0
    assert alarms <= 10
