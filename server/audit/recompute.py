"""Independent recomputation of every site's cumulative ε, and its budget, from the logged mechanisms.

The training reports ε from Opacus' PRV accountant (RDP beside it). The audit recomputes each
reported value with Google's ``dp_accounting`` (PLD and RDP), which the training never uses,
from nothing but the mechanism each ledger row logs:

* a **site ledger**: every ``reserve`` row is one composed mechanism (reserved = spent); every
  reserve, confirm and decline row states the cumulative ε up to it, and each is checked
  against the history composed so far;
* a **server ledger** (when the site's own ledger is not at hand): every ``trained`` row,
  once per (federation, round); this is only the history this server saw, so the recomputed
  ε is a lower bound of the site's lifetime ε: under-reporting is still caught, conservatism
  is not judged.

Checks (thresholds are module constants, shown in every report):

* under-report, FAIL: reported ε more than ``UNDER_REPORT_RTOL`` (1 %) below the PLD value; a
  suspected case is recomputed on a 10x finer PLD grid before it is called (the 1e-3 grid's
  pessimistic rounding can exceed a tight PRV value at small ε);
* the RDP companion figure more than 1 % below dp-accounting's RDP (whose orders include
  Opacus'), FAIL; if dp-accounting had to exclude a fractional order that did not converge
  (its RDP is then larger than the full-order value) the figure is judged against PLD instead;
* conservative, WARN: reported ε more than ``CONSERVATIVE_RTOL`` (2 %) above dp-accounting's RDP;
* over budget, FAIL: reported ε above the budget in force, or PLD more than 1 % above it.

Mechanism families (``MECHANISMS``) map a row to a ``dp_accounting`` event:

* ``"sample-level"``: DP-SGD at a site, Poisson-subsampled Gaussian, ``steps`` times;
* ``"central"``: site-level DP by the server (Flower's fixed-clipping wrapper): one Gaussian
  release per round, no amplification by sampling (the row's ``m/N`` sample rate is for the
  record only). Such rows state their assumption in ``reason`` (``mode=central; ...;
  sampling=no-amplification``, :func:`common.privacy.central.parse_assumption`).

A row names its family in a ``mode`` field or in that statement; rows with neither are
sample-level. An unknown family, or a central row claiming any sampling other than
``no-amplification``, fails the audit rather than being guessed.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dp_accounting
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from common.privacy.entry import LedgerEntry
from common.privacy.reference import PLD_VALUE_DISCRETIZATION_INTERVAL, dp_event
from server.audit.model import FAIL, WARN, Finding, RoundRow, SiteAudit

__all__ = [
    "BUDGET_RTOL",
    "CONSERVATIVE_RTOL",
    "FINE_PLD_DISCRETIZATION_INTERVAL",
    "MECHANISMS",
    "UNDER_REPORT_RTOL",
    "MechanismFamily",
    "cumulative_epsilons",
    "rdp_orders_excluded",
    "recompute_site",
    "row_mode",
    "thresholds",
]

UNDER_REPORT_RTOL = 0.01  # reported ε more than 1 % below PLD: under-reported (FAIL)
CONSERVATIVE_RTOL = 0.02  # reported ε more than 2 % above dp-accounting RDP: conservative (WARN)
BUDGET_RTOL = 0.01  # PLD more than 1 % above the budget: exceeded (reported ε: any amount)
FINE_PLD_DISCRETIZATION_INTERVAL = PLD_VALUE_DISCRETIZATION_INTERVAL / 10  # confirms a suspected under-report
_RELATION = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
_CACHE_SIZE = 4096  # memoised accountant states (by history prefix): re-audits and copies cost nothing


@dataclass(frozen=True)
class MechanismFamily:
    """How the rows of one privacy mode become ``dp_accounting`` events, and what their ε means."""

    name: str
    relation: str  # neighbouring relation and sampling assumption, in words (printed in reports)
    event: Callable[[Any], dp_accounting.DpEvent]  # ledger row -> the event of that row's mechanism


def _dpsgd_event(row: Any) -> dp_accounting.DpEvent:
    return dp_event([(float(row.noise_multiplier), float(row.sample_rate), int(row.steps))])


def _central_event(row: Any) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(float(row.noise_multiplier)),
                                             int(row.steps))


MECHANISMS: dict[str, MechanismFamily] = {
    "sample-level": MechanismFamily(
        "sample-level",
        "sample-level DP of one site's dataset; neighbouring datasets differ by adding or removing one "
        "record; DP-SGD with Poisson sampling at rate q (Opacus: q = 1/len(loader)), per-sample clipping "
        "to C and Gaussian noise σ·C per step",
        _dpsgd_event),
    "central": MechanismFamily(
        "central",
        "site-level DP of the federation's training (server-side noise): neighbouring federations differ by "
        "adding or removing ONE SITE with all its records; one Gaussian release per round, noise σ·C on the sum of "
        "updates clipped to C, equal weights; no amplification by sampling is claimed; the server is trusted",
        _central_event),
}


def row_mode(row: Any) -> str:
    """The mechanism family of a row: its ``mode`` field, else the ``mode=`` of its stated assumption,
    else sample-level. A central row that claims amplification by sampling is returned as
    ``"central/<sampling>"``, which no family accounts (the audit fails rather than guess)."""
    mode = str(getattr(row, "mode", "") or "")
    reason = str(getattr(row, "reason", "") or "")
    if not mode and reason.startswith("mode="):
        from common.privacy.central import parse_assumption

        stated = parse_assumption(reason)
        mode = stated.get("mode", "")
        if mode == "central" and stated.get("sampling", "no-amplification") != "no-amplification":
            mode = f"central/{stated.get('sampling')}"
    return mode or "sample-level"


def thresholds() -> dict[str, float]:
    return {"under_report_rtol": UNDER_REPORT_RTOL, "conservative_rtol": CONSERVATIVE_RTOL,
            "budget_rtol": BUDGET_RTOL, "pld_value_discretization_interval": PLD_VALUE_DISCRETIZATION_INTERVAL}


# ------------------------------------------------------------------ memoised accountants
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
    return MECHANISMS[mode].event(LedgerEntry(site="-", round=0, event="trained", noise_multiplier=sigma,
                                              sample_rate=q, steps=steps))


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


def _fine_pld(prefix: Sequence[Step], delta: float) -> float:
    key = (("fine",), *prefix), float(delta)
    if key not in _EPS:
        acc = PLDAccountant(_RELATION, value_discretization_interval=FINE_PLD_DISCRETIZATION_INTERVAL)
        for step in prefix:
            acc.compose(_event(step))
        _remember(_EPS, key, (float(acc.get_epsilon(delta)), math.nan))
    return _EPS[key][0]


def _confirmed_pld(reported: float, pld: float, prefix: Sequence[Step], delta: float) -> float:
    """The PLD value to judge ``reported`` by, once it looks under-reported on the coarse grid.

    The pessimistic grid overstates each composed privacy loss by less than one interval, so
    the tight value is above ``pld - steps * interval``. If ``reported`` is under-reported even
    against that floor, the coarse value stands; otherwise the 10x finer grid decides.
    """
    floor = pld - sum(step[3] for step in prefix) * PLD_VALUE_DISCRETIZATION_INTERVAL
    if reported < floor * (1 - UNDER_REPORT_RTOL):
        return pld
    return _fine_pld(prefix, delta)


# ------------------------------------------------------------------------ per site
_SITE_COMPOSE, _SITE_STATES = ("reserve",), ("reserve", "confirm", "decline")
_SERVER_COMPOSE, _SERVER_STATES = ("trained",), ("trained", "declined")


def _pct(a: float, b: float) -> str:
    return f"{abs(a - b) / b * 100:.1f}%" if b else "n/a"


def recompute_site(audit: SiteAudit, rows: Sequence[LedgerEntry], *, budget_for: Callable[[int], float | None],
                   ledger_label: str) -> list[Finding]:
    """Recompute ``audit.site``'s ε row by row; fill ``audit`` (rows, spend, budget); return findings.

    Parameters
    ----------
    audit : SiteAudit
        Its ``source`` says whether ``rows`` are the site's own ledger or the server's rows.
    rows : sequence of LedgerEntry
        That site's rows, in seq order.
    budget_for : callable
        seq -> the lifetime budget in force at that row (None if unknown).
    ledger_label : str
        Names the file in findings.
    """
    site, server = audit.site, audit.source == "server ledger"
    compose, states = (_SERVER_COMPOSE, _SERVER_STATES) if server else (_SITE_COMPOSE, _SITE_STATES)
    audit.history_complete = not server
    findings: list[Finding] = []
    prefix: list[Step] = []
    composed: set[tuple[str, int]] = set()
    broken = False

    def finding(level: str, check: str, row: LedgerEntry, message: str) -> None:
        findings.append(Finding(level, check, f"{site} round {row.round} (seq {row.seq}): {message}", site=site,
                                round=row.round, seq=row.seq, ledger=ledger_label))

    for row in rows:
        if row.event not in states:
            continue
        mode = row_mode(row)
        if row.event in compose and not broken:
            if mode not in MECHANISMS:
                finding(FAIL, "recompute", row, f"unknown mechanism mode {mode!r}: ε cannot be recomputed "
                                                f"(known: {sorted(MECHANISMS)}); later rows are left unchecked")
                broken = True
            elif row.noise_multiplier is None or row.sample_rate is None:
                finding(FAIL, "recompute", row, "trained without a logged DP mechanism (no σ or q; DP off?): no "
                                                "ε bounds it; later rows are left unchecked")
                broken = True
            elif not (server and (row.federation_id, row.round) in composed):  # a replayed round is spent once
                composed.add((row.federation_id, row.round))
                if row.steps > 0:
                    prefix.append((mode, float(row.noise_multiplier), float(row.sample_rate), int(row.steps)))
        rr = RoundRow(seq=int(row.seq or 0), round=row.round, federation_id=row.federation_id, run_id=row.run_id,
                      event=row.event, mode=mode, noise_multiplier=row.noise_multiplier, sample_rate=row.sample_rate,
                      steps=row.steps, max_grad_norm=row.max_grad_norm, delta=row.delta, accountant=row.accountant,
                      reported_epsilon=row.epsilon, reported_epsilon_rdp=row.epsilon_rdp, pld_epsilon=None,
                      rdp_epsilon=None, budget=budget_for(int(row.seq or 0)), status="unchecked")
        if broken or row.delta is None or row.epsilon is None:
            if not broken and row.epsilon is not None:
                finding(WARN, "recompute", row, "states ε without δ: it cannot be checked")
            elif not broken and row.event in compose:
                finding(WARN, "recompute", row, "states no ε (or no δ): nothing to check it against")
            audit.rows.append(rr)
            continue
        pld, rdp = cumulative_epsilons(prefix, row.delta)
        status = "ok"
        if row.epsilon < pld * (1 - UNDER_REPORT_RTOL):
            pld = _confirmed_pld(row.epsilon, pld, prefix, row.delta)  # rule out the grid's pessimism first
            if row.epsilon < pld * (1 - UNDER_REPORT_RTOL):
                status = "under-reported"
                finding(FAIL, "recompute", row,
                        f"UNDER-REPORTED: reported ε={row.epsilon:.4f} ({row.accountant or '?'}) is "
                        f"{_pct(row.epsilon, pld)} below dp-accounting PLD ε={pld:.4f} at δ={row.delta:g} "
                        f"over {len(prefix)} logged mechanism(s)")
        # the RDP figure: against dp-accounting's RDP (its orders include Opacus'), or against PLD when
        # dp-accounting had to drop an order (its RDP may then exceed a correct Opacus value)
        ref, ref_name = (pld, "PLD") if rdp_orders_excluded(prefix) else (rdp, "RDP")
        if row.epsilon_rdp is not None and row.epsilon_rdp < ref * (1 - UNDER_REPORT_RTOL):
            status = "under-reported"
            finding(FAIL, "recompute", row,
                    f"UNDER-REPORTED RDP figure: ε_rdp={row.epsilon_rdp:.4f} is {_pct(row.epsilon_rdp, ref)} below "
                    f"dp-accounting {ref_name} ε={ref:.4f} at δ={row.delta:g}")
        elif row.epsilon_rdp is not None and row.epsilon_rdp < rdp * (1 - UNDER_REPORT_RTOL):
            finding(WARN, "recompute", row,
                    f"RDP figure ε_rdp={row.epsilon_rdp:.4f} is {_pct(row.epsilon_rdp, rdp)} below dp-accounting's "
                    f"RDP ε={rdp:.4f} (which dropped non-converging fractional orders, so it may be high), but not "
                    f"below PLD ε={pld:.4f}")
        if status == "ok" and not server and row.epsilon > rdp * (1 + CONSERVATIVE_RTOL):
            status = "conservative"
            finding(WARN, "recompute", row,
                    f"conservative: reported ε={row.epsilon:.4f} is {_pct(row.epsilon, rdp)} above dp-accounting "
                    f"RDP ε={rdp:.4f} (more spent than the logged mechanisms explain)")
        budget = rr.budget
        if budget is not None and (row.epsilon > budget * (1 + 1e-9) or pld > budget * (1 + BUDGET_RTOL)):
            status = "over-budget"
            audit.ever_exceeded = True
            finding(FAIL, "budget", row, f"BUDGET EXCEEDED: ε={row.epsilon:.4f} reported, {pld:.4f} by PLD, "
                                         f"lifetime budget {budget:g}")
        audit.rows.append(_with(rr, pld_epsilon=pld, rdp_epsilon=rdp, status=status))
    _summarise(audit, rows, prefix, states)
    return findings


def _with(row: RoundRow, **changes: Any) -> RoundRow:
    from dataclasses import replace

    return replace(row, **changes)


def _summarise(audit: SiteAudit, rows: Sequence[LedgerEntry], prefix: list[Step], states: tuple[str, ...]) -> None:
    stated = [r for r in rows if r.event in states]
    audit.deltas = sorted({r.delta for r in stated if r.delta is not None})
    audit.accountants = sorted({r.accountant for r in stated if r.accountant})
    modes = sorted({row_mode(r) for r in stated}) or ["sample-level"]
    audit.mode = ", ".join(modes)
    audit.relation = " | ".join(MECHANISMS[m].relation if m in MECHANISMS else f"{m}: unknown" for m in modes)
    targets = [r.target_epsilon for r in stated if r.target_epsilon is not None]
    audit.target_epsilon = targets[-1] if targets else None
    with_eps = [r for r in audit.rows if r.reported_epsilon is not None]
    audit.spent_reported = with_eps[-1].reported_epsilon if with_eps else (None if audit.rows else 0.0)
    last_delta = next((r.delta for r in reversed(stated) if r.delta is not None), None)
    if last_delta is not None and not any(r.status == "unchecked" and r.reported_epsilon is not None
                                          for r in audit.rows):
        audit.spent_pld, audit.spent_rdp = cumulative_epsilons(prefix, last_delta)
    server = audit.source == "server ledger"
    trained = {(r.federation_id, r.round) for r in stated if r.event == ("trained" if server else "reserve")}
    audit.rounds_trained = len(trained) if server else sum(r.event == "reserve" for r in stated)
    declines = [r for r in stated if r.event == ("declined" if server else "decline")]
    audit.rounds_declined = len(declines)
    audit.declined = [{"federation_id": r.federation_id, "round": r.round, "reason": r.reason} for r in declines]
    budgets = [r.budget for r in audit.rows if r.budget is not None]
    if audit.epsilon_budget is None and budgets:
        audit.epsilon_budget = budgets[-1]
    if audit.epsilon_budget is not None:
        spent = max(x for x in (audit.spent_reported, audit.spent_pld, 0.0) if x is not None)
        audit.remaining = audit.epsilon_budget - spent
    if any(math.isinf(x) for x in (audit.spent_reported or 0.0, audit.spent_pld or 0.0)):
        audit.remaining = None
