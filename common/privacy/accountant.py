"""Opacus privacy accountants: factory, ε of a mechanism history, noise calibration.

What every ε here means
-----------------------
Sample-level (ε, δ)-differential privacy of ONE site's dataset under the **add/remove-one**
neighbouring relation (two datasets are neighbours when one is the other plus one record),
for the mechanism Opacus runs in DP-SGD: at each step every record joins the batch
independently with probability ``q`` (Poisson sampling, ``sample_rate``; a site uses
``q = 1/ceil(max-records / batch-size)``, :func:`plan_steps`), per-sample gradients are
clipped to norm ``C`` and summed, and Gaussian noise of standard deviation ``σ·C`` is added
(``σ`` = ``noise_multiplier``). ``C`` does not enter ε. ``δ`` is the δ the caller passes: a
site uses ``default_delta(max-records) < 1/max-records`` unless it configures one. The
guarantee is stated for datasets of at most ``max-records`` rows (a public bound the site
declares). ε composes over the whole history handed in — every round of every run that the
site's ledger holds — so it never resets between rounds or runs.

A release under ``privacy-mode = "central"`` enters a site's history as ``(σ/2, 1.0, 1)``:
one Gaussian release, no sampling; σ/2 because the server clips the site's WHOLE update to
C, and one record more or less can move the clipped update anywhere in that ball
(sensitivity 2C).

History format
--------------
Opacus' own: a list of ``(noise_multiplier, sample_rate, num_steps)`` tuples, in order.
:func:`normalize_history` validates it and merges adjacent entries with equal ``(σ, q)``,
which is exactly the bookkeeping of Opacus' ``IAccountant.step``: a restored accountant
therefore holds the same history as one that stepped through every round, and both give
bit-identical ε.

Accountants (registry ``_ACCOUNTANTS``)
---------------------------------------
* ``"prv"``: ``opacus.accountants.PRVAccountant`` (Gopi et al. 2021): numerical composition
  of the privacy-loss random variable of the Poisson-subsampled Gaussian in the *remove*
  direction (``(1-q)·N(0,σ²) + q·N(1,σ²)`` vs ``N(0,σ²)``). We report the upper end of its
  error band (``eps_error = PRV_EPS_ERROR`` absolute, ``delta_error = δ/1000``): an upper
  bound, tight to about 0.01. dp_accounting's PLD, which composes the add AND the remove
  direction and reports the larger, agrees within 1 % on the pinned cases
  (``tests/common/privacy``): the add direction does not dominate for this mechanism.
* ``"rdp"``: ``opacus.accountants.RDPAccountant`` (Mironov et al. 2019, sampled Gaussian,
  add/remove; RDP -> (ε, δ) by Balle et al. 2020 Thm 21): a looser upper bound (+5-35 %).
* ``"gdp"`` is refused: a central-limit approximation that can report ε below the truth.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Opacus is imported where an accountant is made: evaluation-only processes never need it
    from opacus.accountants import IAccountant

from common.privacy.search import NoFeasibleValue, smallest_feasible

__all__ = [
    "ACCOUNTANTS",
    "BudgetExhausted",
    "CALIBRATION_RTOL",
    "CALIBRATION_START",
    "MAX_NOISE_MULTIPLIER",
    "MIN_NOISE_MULTIPLIER",
    "Mechanism",
    "PRV_EPS_ERROR",
    "calibrate_noise_multiplier",
    "default_delta",
    "epsilon_from_history",
    "make_accountant",
    "normalize_history",
    "StepPlan",
    "plan_steps",
]

Mechanism = tuple[float, float, int]  # (noise_multiplier σ, sample_rate q, num_steps)

PRV_EPS_ERROR = 0.01  # Opacus' default: absolute width of PRV's ε error band (we report its upper end)
CALIBRATION_RTOL = 0.005  # calibrated σ is within 0.5 % of the smallest σ meeting the target
MIN_NOISE_MULTIPLIER = 0.3  # calibration floor: below it PRV gets very slow (>10 s) and ε is huge anyway
MAX_NOISE_MULTIPLIER = 1e4  # calibration cap: if σ = 1e4 cannot meet the target, nothing useful can
CALIBRATION_START = 1.0  # first σ tried: typical DP-SGD σ lie in [0.5, 3], one doubling/halving away


@dataclass(frozen=True)
class _AccountantSpec:
    class_name: str  # the Opacus accountant class, in opacus.accountants
    epsilon_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to get_epsilon(delta, **kwargs)

    @property
    def cls(self) -> type[IAccountant]:
        import opacus.accountants

        from common.privacy import rdp_memo

        rdp_memo.install()  # Opacus' per-order RDP, computed once per process: same numbers, ~10x less time
        return getattr(opacus.accountants, self.class_name)


_ACCOUNTANTS: dict[str, _AccountantSpec] = {
    "prv": _AccountantSpec("PRVAccountant", {"eps_error": PRV_EPS_ERROR}),
    "rdp": _AccountantSpec("RDPAccountant"),
}
_REFUSED: dict[str, str] = {
    "gdp": "Opacus' GaussianAccountant (GDP) is a central-limit approximation that can report ε BELOW "
           "the true bound (by 2-39 % in our checks); it must never be used to enforce or report a budget",
}
ACCOUNTANTS: tuple[str, ...] = tuple(_ACCOUNTANTS)


class BudgetExhausted(RuntimeError):
    """No noise level lets the requested steps fit in the remaining privacy budget."""

    def __init__(self, message: str, *, spent_epsilon: float, target_epsilon: float) -> None:
        super().__init__(message)
        self.spent_epsilon = spent_epsilon  # ε of the prior history alone
        self.target_epsilon = target_epsilon  # the budget that could not be met


def _spec(name: str) -> _AccountantSpec:
    if name in _REFUSED:
        raise ValueError(f"accountant {name!r} is refused: {_REFUSED[name]}. Use one of {ACCOUNTANTS}.")
    if name not in _ACCOUNTANTS:
        raise ValueError(f"unknown accountant {name!r}: expected one of {ACCOUNTANTS}")
    return _ACCOUNTANTS[name]


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, Real) or not 0.0 < float(delta) < 1.0:
        raise ValueError(f"delta must be a number in (0, 1), got {delta!r}")
    return float(delta)


def _real(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def normalize_history(history: Sequence[Sequence[Any]]) -> list[Mechanism]:
    """Validated copy of ``history`` as an Opacus accountant stepping through it would hold it.

    Parameters
    ----------
    history : sequence of (noise_multiplier, sample_rate, num_steps)
        σ > 0 finite, 0 < q <= 1, num_steps an integer >= 0 (0-step entries are dropped: no
        mechanism ran).

    Returns
    -------
    list of (float, float, int)
        Adjacent entries with equal (σ, q) merged, as ``IAccountant.step`` does.

    Raises
    ------
    ValueError
        Naming the offending entry and why it cannot be accounted.
    """
    out: list[Mechanism] = []
    for i, entry in enumerate(history):
        where = f"history[{i}] = {entry!r}"
        if isinstance(entry, (str, bytes)) or not hasattr(entry, "__len__") or len(entry) != 3:
            raise ValueError(f"{where}: expected (noise_multiplier, sample_rate, num_steps)")
        sigma = _real(entry[0], f"{where}: noise_multiplier")
        q = _real(entry[1], f"{where}: sample_rate")
        steps = entry[2]
        if sigma <= 0:
            raise ValueError(f"{where}: noise_multiplier must be > 0 (σ = 0 is no noise: ε = ∞)")
        if not 0 < q <= 1:
            raise ValueError(f"{where}: sample_rate must be in (0, 1] (it is a probability)")
        if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 0:
            raise ValueError(f"{where}: num_steps must be an integer >= 0")
        if steps == 0:
            continue
        if out and out[-1][0] == sigma and out[-1][1] == q:
            out[-1] = (sigma, q, out[-1][2] + int(steps))
        else:
            out.append((sigma, q, int(steps)))
    return out


def make_accountant(name: str, *, history: Sequence[Sequence[Any]] = ()) -> IAccountant:
    """A fresh Opacus accountant restored to ``history`` (through its own ``load_state_dict``).

    Parameters
    ----------
    name : str
        ``"prv"`` or ``"rdp"``; ``"gdp"`` is refused (see module docstring).
    history : sequence of (noise_multiplier, sample_rate, num_steps)
        What was already spent; normalised by :func:`normalize_history`.

    Returns
    -------
    opacus.accountants.IAccountant
        Ready to hand to ``PrivacyEngine`` (``engine.accountant = acc``): its ``step`` continues
        the history, so ε never resets.
    """
    spec = _spec(name)
    accountant = spec.cls()
    accountant.load_state_dict({"history": normalize_history(history), "mechanism": spec.cls.mechanism()})
    return accountant


def epsilon_from_history(history: Sequence[Sequence[Any]], *, delta: float, accountant: str) -> float:
    """ε spent by ``history`` at ``delta`` (add/remove-one, sample level; see module docstring).

    Parameters
    ----------
    history : sequence of (noise_multiplier, sample_rate, num_steps)
    delta : float
        In (0, 1).
    accountant : str
        ``"prv"`` (upper end of PRV's band) or ``"rdp"``.

    Returns
    -------
    float
        ε >= 0 (0.0 for an empty history). May be ``inf`` when PRV cannot bound a huge ε.
    """
    _spec(accountant)
    return _epsilon(tuple(normalize_history(history)), _check_delta(delta), accountant)


@functools.lru_cache(maxsize=4096)
def _epsilon(history: tuple[Mechanism, ...], delta: float, accountant: str) -> float:
    """:func:`epsilon_from_history` of a normalised history: a pure function of its arguments, so each process
    computes it once per (history, δ, accountant); sites of one federation share their histories (same σ, q,
    steps), and a site's round asks for the same ε several times (plan, reservation, Opacus' own check)."""
    spec = _spec(accountant)
    acc = make_accountant(accountant, history=history)
    if not acc.history:
        return 0.0
    try:
        eps = float(acc.get_epsilon(delta, **spec.epsilon_kwargs))
    except (RuntimeError, ValueError) as exc:
        raise RuntimeError(f"{accountant.upper()} accountant could not bound ε for {len(acc.history)} history "
                           f"entries at δ={delta!r}: {exc}") from exc
    if math.isnan(eps):
        raise RuntimeError(f"{accountant.upper()} accountant returned NaN for history {acc.history!r}, δ={delta!r}")
    return max(0.0, eps)  # ε is defined as the smallest NON-negative ε; a negative bound implies ε = 0


def default_delta(n: int) -> float:
    """δ strictly below 1/n: ``1/(10 n)`` rounded DOWN to one significant digit.

    Examples: n=303 -> 3e-4, n=1000 -> 1e-4, n=1 -> 0.1. Exact integer arithmetic, so the result is
    never rounded up past 1/(10 n).
    """
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"n (number of records) must be an integer >= 1, got {n!r}")
    denominator = 10 * int(n)  # δ <= 1 / denominator
    digits = len(str(denominator))  # 10**(digits-1) <= denominator < 10**digits
    mantissa = 10**digits // denominator  # in 1..10: leading digit of 1/denominator, rounded down
    return float(f"{mantissa}e-{digits}")


@dataclass(frozen=True)
class StepPlan:
    """The DP-SGD steps of one round, from public facts only (never from the rows a site holds)."""

    steps_per_epoch: int  # k = ceil(max_records / batch_size): Poisson batches per local epoch
    epochs: int  # local epochs
    max_records: int  # the site's declared bound on its training rows

    @property
    def sample_rate(self) -> float:
        """q = 1/k: each record joins each batch with this probability."""
        return 1.0 / self.steps_per_epoch

    @property
    def steps(self) -> int:
        """k x epochs: exactly the steps the loader yields (``client.train.poisson_loader``)."""
        return self.steps_per_epoch * self.epochs

    @property
    def expected_batch_size(self) -> float:
        """max_records x q: the mean-gradient normaliser of DP-SGD, public (Opacus would use int(n q), private)."""
        return self.max_records / self.steps_per_epoch


def plan_steps(*, max_records: int, batch_size: int, epochs: int) -> StepPlan:
    """The round's steps and sample rate for a site that declared ``max_records`` (a public bound).

    Opacus derives ``q = 1/len(loader)`` and runs ``int(1/q)`` steps per epoch, which is ``k - 1`` for
    k in {93, 99, 105, ...} (floating point): the loader is built with exactly ``k`` steps instead.

    Raises
    ------
    ValueError
        For a non-positive bound, batch size or epoch count.
    """
    for name, value in (("max_records", max_records), ("batch_size", batch_size), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return StepPlan(steps_per_epoch=-(-int(max_records) // int(batch_size)), epochs=int(epochs),
                    max_records=int(max_records))


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "prv",
    prior_history: Sequence[Sequence[Any]] = (),
) -> float:
    """Smallest σ such that ``prior_history + [(σ, sample_rate, steps)]`` has ε <= target.

    The same accountant (and the same :func:`epsilon_from_history`) that enforces and reports
    the budget is used to calibrate: the returned σ was evaluated and meets the target, and
    some σ' >= σ/(1 + ``CALIBRATION_RTOL``) (σ/1.005) was evaluated and does not. If even
    ``MIN_NOISE_MULTIPLIER`` meets the target, that floor is returned. Typically 5-7 accountant
    evaluations (secant search, :mod:`common.privacy.search`).

    Parameters
    ----------
    target_epsilon : float
        Total ε allowed after these steps (> 0), at ``delta``.
    delta : float
        In (0, 1).
    sample_rate : float
        Poisson sampling rate q in (0, 1] (a site: 1/ceil(max-records / batch-size)).
    steps : int
        DP-SGD steps to be taken at σ (>= 1).
    accountant : str
        ``"prv"`` (default) or ``"rdp"``.
    prior_history : sequence of (noise_multiplier, sample_rate, num_steps)
        Already spent (ε composes over it and the new steps).

    Returns
    -------
    float
        σ (noise multiplier).

    Raises
    ------
    BudgetExhausted
        If the prior history alone reaches the target, or no σ <= ``MAX_NOISE_MULTIPLIER``
        lets the steps fit in what is left.
    """
    _spec(accountant)
    delta = _check_delta(delta)
    target = _real(target_epsilon, "target_epsilon")
    if target <= 0:
        raise ValueError(f"target_epsilon must be > 0, got {target_epsilon!r}")
    q = _real(sample_rate, "sample_rate")
    if not 0 < q <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    prior = normalize_history(prior_history)
    spent = epsilon_from_history(prior, delta=delta, accountant=accountant)
    if spent >= target:
        raise BudgetExhausted(
            f"prior history alone spends ε={spent:.4g} >= target ε={target:g} (δ={delta:g}, {accountant.upper()}): "
            "no further DP steps fit in the budget", spent_epsilon=spent, target_epsilon=target)

    def cost(sigma: float) -> float:
        return epsilon_from_history([*prior, (sigma, q, int(steps))], delta=delta, accountant=accountant)

    try:
        found = smallest_feasible(cost, target=target, start=CALIBRATION_START, low=MIN_NOISE_MULTIPLIER,
                                  high=MAX_NOISE_MULTIPLIER, rtol=CALIBRATION_RTOL)
    except NoFeasibleValue as exc:
        floor = f" ({accountant.upper()} cannot certify ε below ~{PRV_EPS_ERROR} more than the " \
                "prior spend: its error band)" if accountant == "prv" else ""
        raise BudgetExhausted(
            f"{steps} steps at q={q:g} do not fit: prior ε={spent:.4g}, target ε={target:g} (δ={delta:g}); even "
            f"σ={MAX_NOISE_MULTIPLIER:g} gives ε={exc.cost_at_high:.4g}{floor}",
            spent_epsilon=spent, target_epsilon=target) from exc
    return found.value
