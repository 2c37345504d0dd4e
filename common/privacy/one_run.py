"""One-run privacy auditing statistics (Steinke, Nasr & Jagielski, NeurIPS 2023): pure math, no torch.

The game
--------
m audit examples ("canaries") are each included in the training set independently with
probability 1/2 (``S_i = +1`` in, ``-1`` out); everything else in the dataset is fixed. After one
training run the auditor, looking only at what the mechanism released, makes ``r`` guesses
``T_i in {-1, +1}`` and abstains (``T_i = 0``) on the other ``m - r``; ``v`` of the guesses are
correct. Here the auditor guesses IN for the ``k+`` highest scores and OUT for the ``k-`` lowest,
so ``r = k+ + k-`` is fixed before the run.

The theorem (their main result for approximate DP)
--------------------------------------------------
If the mechanism is (ε, δ)-DP with respect to adding/removing one canary, then for every v

    P[W >= v]  <=  f(v) + 2·m·δ · max_{1 <= i <= m} ( f(v - i) - f(v) ) / i,
    f(u) := P[ Binomial(r, p_ε) >= u ],   p_ε := e^ε / (1 + e^ε),

where W is the number of correct guesses. The right-hand side is the p-value of observing
``v`` correct guesses under the null hypothesis "(ε, δ)-DP" (:func:`p_value`). For ``i > v``
the term is ``(1 - f(v)) / i``, smaller than at ``i = v``, so the maximum runs over ``1..v``.

The lower bound
---------------
``epsilon_lower_bound`` returns the largest ε̂ such that every ε in [0, ε̂) is rejected at level
``1 - confidence``: the first crossing of the p-value over the level, never a later one. If the
mechanism is in truth (ε*, δ)-DP with ε* < ε̂, the test of ε* rejected, which happens with
probability at most ``1 - confidence``. For ``2mδ <= 1`` the p-value is non-decreasing in ε
(its derivative in p is ``r·[(1 - c/i*)·b(v-1) + (c/i*)·b(v-i*-1)] >= 0``, ``c = 2mδ``,
``b`` the Binomial(r-1, p) pmf), so the first crossing is the only one.

Several choices of (k+, k-)
---------------------------
:func:`audit_scores` tries a small grid fixed in advance and reports the best; each bound is
computed at level ``(1 - confidence) / len(grid)`` (Bonferroni), so the reported maximum holds at
``confidence`` overall: the conservative way to take a maximum over several tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

__all__ = [
    "AuditStatistic",
    "Guesses",
    "audit_scores",
    "default_grid",
    "epsilon_lower_bound",
    "guess_from_scores",
    "p_value",
]

_EPS_STEP = 0.05  # scan step of the first-crossing search (then bisection inside the bracket)
_EPS_MAX = 60.0  # no finite audit with m <= 10^6 canaries certifies more than this
_EPS_TOL = 1e-6  # bisection tolerance on ε


@dataclass(frozen=True)
class Guesses:
    """One set of guesses: ``k_plus`` guessed IN, ``k_minus`` guessed OUT, ``correct`` of them right."""

    k_plus: int
    k_minus: int
    correct: int

    @property
    def guesses(self) -> int:
        return self.k_plus + self.k_minus


@dataclass(frozen=True)
class AuditStatistic:
    """The best lower bound over a grid of guesses, Bonferroni-corrected."""

    epsilon_lower_bound: float  # ε̂: holds at ``confidence`` over the whole grid
    best: Guesses  # the (k+, k-) that gave it
    per_guess: tuple[tuple[Guesses, float], ...]  # every grid point and its corrected bound
    m: int  # canaries
    delta: float  # δ of the null hypothesis
    confidence: float  # overall confidence
    level_per_test: float  # (1 - confidence) / len(grid)


def _check_counts(m: int, guesses: int, correct: int) -> None:
    for name, value in (("m", m), ("guesses", guesses), ("correct", correct)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {value!r}")
    if not 0 <= correct <= guesses <= m:
        raise ValueError(f"need 0 <= correct <= guesses <= m; got correct={correct}, guesses={guesses}, m={m}")


def _binomial_pmf(r: int, epsilon: float) -> np.ndarray:
    """P[Binomial(r, e^ε/(1+e^ε)) = k] for k = 0..r, in log space (stable for large ε)."""
    k = np.arange(r + 1, dtype=np.float64)
    log_p = -math.log1p(math.exp(-epsilon))  # log(e^ε/(1+e^ε))
    log_1mp = -epsilon + log_p  # log(1/(1+e^ε))
    log_pmf = gammaln(r + 1) - gammaln(k + 1) - gammaln(r - k + 1) + k * log_p + (r - k) * log_1mp
    return np.exp(log_pmf)


def p_value(*, m: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """P-value of ``correct`` right guesses out of ``guesses`` if the mechanism is (ε, δ)-DP.

    Parameters
    ----------
    m : int
        Canaries, each included independently with probability 1/2.
    guesses : int
        r, the guesses made (abstentions excluded).
    correct : int
        v, the correct guesses.
    epsilon : float
        ε >= 0 of the null hypothesis.
    delta : float
        δ in [0, 1] of the null hypothesis.

    Returns
    -------
    float
        ``f(v) + 2mδ · max_i (f(v-i) - f(v)) / i`` (see module docstring), clipped to 1.
    """
    _check_counts(m, guesses, correct)
    if not (epsilon >= 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be finite and >= 0, got {epsilon!r}")
    if not 0 <= delta <= 1:
        raise ValueError(f"delta must be in [0, 1], got {delta!r}")
    r, v = int(guesses), int(correct)
    if v == 0:
        return 1.0
    pmf = _binomial_pmf(r, float(epsilon))
    tail = np.cumsum(pmf[::-1])[::-1]  # tail[u] = P[B >= u], u = 0..r
    f_v = float(tail[v]) if v <= r else 0.0
    # f(v - i) - f(v) = P[v - i <= B < v] for i = 1..v
    i = np.arange(1, v + 1)
    between = tail[v - i] - f_v
    excess = float(np.max(between / i)) if delta > 0 else 0.0
    return min(1.0, f_v + 2.0 * m * float(delta) * max(excess, 0.0))


def epsilon_lower_bound(*, m: int, guesses: int, correct: int, delta: float, confidence: float = 0.95) -> float:
    """Largest ε̂ such that (ε, δ)-DP is rejected at level ``1 - confidence`` for every ε in [0, ε̂).

    Parameters
    ----------
    m, guesses, correct : int
        As in :func:`p_value`.
    delta : float
        δ of the hypotheses tested.
    confidence : float
        In (0, 1); 0.95 = a 95 % lower bound.

    Returns
    -------
    float
        ε̂ >= 0; 0.0 when even ε = 0 is not rejected (for instance with no correct guess).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    level = 1.0 - confidence

    def rejected(eps: float) -> bool:
        return p_value(m=m, guesses=guesses, correct=correct, epsilon=eps, delta=delta) <= level

    if not rejected(0.0):
        return 0.0
    lo = 0.0
    while lo + _EPS_STEP <= _EPS_MAX and rejected(lo + _EPS_STEP):  # first crossing, scanned
        lo += _EPS_STEP
    hi = lo + _EPS_STEP
    if hi > _EPS_MAX:
        return lo
    while hi - lo > _EPS_TOL:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rejected(mid) else (lo, mid)
    return lo


def guess_from_scores(scores: Sequence[float], included: Sequence[bool], *, k_plus: int, k_minus: int) -> Guesses:
    """Guess IN for the ``k_plus`` highest scores and OUT for the ``k_minus`` lowest; count the correct ones.

    Ties are broken by canary index (a stable sort), never by membership.
    """
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(included, dtype=bool)
    if s.shape != inc.shape or s.ndim != 1:
        raise ValueError(f"scores {s.shape} and included {inc.shape} must be equally long vectors")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > len(s):
        raise ValueError(f"need k_plus, k_minus >= 0 and k_plus + k_minus <= m={len(s)}")
    order = np.argsort(-s, kind="stable")  # highest first
    top, bottom = order[:k_plus], order[len(s) - k_minus:]
    correct = int(inc[top].sum()) + int((~inc[bottom]).sum())
    return Guesses(k_plus=int(k_plus), k_minus=int(k_minus), correct=correct)


def default_grid(m: int) -> tuple[tuple[int, int], ...]:
    """(k+, k-) pairs fixed before the run: r/m in {1, 2, 5, 10, 20, 50} %, split evenly or all IN."""
    out: list[tuple[int, int]] = []
    for frac in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5):
        r = max(1, int(round(frac * m)))
        for pair in ((r - r // 2, r // 2), (r, 0)):
            if pair not in out:
                out.append(pair)
    return tuple(out)


def audit_scores(scores: Sequence[float], included: Sequence[bool], *, delta: float, confidence: float = 0.95,
                 grid: Sequence[tuple[int, int]] | None = None) -> AuditStatistic:
    """Best Bonferroni-corrected ε lower bound over a grid of (k+, k-) guesses.

    Parameters
    ----------
    scores : sequence of float
        Membership score per canary; higher = more likely IN.
    included : sequence of bool
        The coin flips S (True = IN); used only to count correct guesses.
    delta : float
        δ of the null hypothesis (the δ the accounted ε is stated at).
    confidence : float
        Overall confidence of the reported bound.
    grid : sequence of (k+, k-), optional
        Fixed before looking at the scores; :func:`default_grid` by default.

    Returns
    -------
    AuditStatistic
    """
    m = len(scores)
    pairs = tuple(grid) if grid is not None else default_grid(m)
    if not pairs:
        raise ValueError("grid must hold at least one (k_plus, k_minus) pair")
    level = (1.0 - confidence) / len(pairs)
    results = []
    for k_plus, k_minus in pairs:
        g = guess_from_scores(scores, included, k_plus=k_plus, k_minus=k_minus)
        eps = epsilon_lower_bound(m=m, guesses=g.guesses, correct=g.correct, delta=delta, confidence=1.0 - level)
        results.append((g, eps))
    best_guess, best_eps = max(results, key=lambda item: item[1])
    return AuditStatistic(epsilon_lower_bound=best_eps, best=best_guess, per_guess=tuple(results), m=m,
                          delta=float(delta), confidence=float(confidence), level_per_test=level)
