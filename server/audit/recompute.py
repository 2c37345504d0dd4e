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

* under-report, FAIL: reported ε below dp-accounting's OPTIMISTIC PLD estimate (a lower bound of the true ε:
  privacy losses rounded down to the grid), first on the 1e-3 grid, then on the 10x finer grid
  (``FINE_PLD_DISCRETIZATION_INTERVAL``) when the value falls between the coarse bounds;
* within the grid's uncertainty, WARN: reported ε between the fine grid's optimistic and pessimistic PLD (the
  grid cannot tell whether it is below the true ε); at or above the pessimistic PLD (an upper bound): fine;
* the RDP companion figure more than 1 % below dp-accounting's RDP (whose orders include
  Opacus'), FAIL; if dp-accounting had to exclude a fractional order that did not converge
  (its RDP is then larger than the full-order value) the figure is judged against PLD instead;
* conservative, WARN: reported ε more than ``CONSERVATIVE_RTOL`` (2 %) above dp-accounting's RDP;
* over budget, FAIL: reported ε above the budget in force, or PLD more than 1 % above it;
* a release without DP (``mode=none``, allowed by the site's own file), WARN: ε = ∞ from that row on, reported
  as ∞ (a later finite ε is under-reported); it is not counted as a budget excess, it is stated;
* a central row whose stated sample is smaller than the federation (``sampled`` < ``available``), FAIL: with a
  fixed sample of m < N sites, neighbouring federations can swap one site's term for another's (sensitivity
  2C), which Flower's accounting (sensitivity C) does not cover.

Mechanism families (how a row becomes a ``dp_accounting`` event): :mod:`server.audit.mechanisms`; ε of a
composed history and the verdict on a reported value: :mod:`server.audit.epsilons`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from common.privacy.entry import LedgerEntry, statement_copies
from common.privacy.reference import PLD_VALUE_DISCRETIZATION_INTERVAL
from server.audit.epsilons import (FINE_PLD_DISCRETIZATION_INTERVAL, Step, cumulative_epsilons, judge_reported,
                                   rdp_orders_excluded)
from server.audit.mechanisms import MECHANISMS, MechanismFamily, fixed_sample, row_mode
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

UNDER_REPORT_RTOL = 0.01  # the RDP companion figure more than 1 % below dp-accounting's RDP: under-reported
CONSERVATIVE_RTOL = 0.02  # reported ε more than 2 % above dp-accounting RDP: conservative (WARN)
BUDGET_RTOL = 0.01  # PLD more than 1 % above the budget: exceeded (reported ε: any amount)



def thresholds() -> dict[str, float]:
    return {"under_report_rtol": UNDER_REPORT_RTOL, "conservative_rtol": CONSERVATIVE_RTOL,
            "budget_rtol": BUDGET_RTOL, "pld_value_discretization_interval": PLD_VALUE_DISCRETIZATION_INTERVAL,
            "fine_pld_value_discretization_interval": FINE_PLD_DISCRETIZATION_INTERVAL}


# ------------------------------------------------------------------------ per site
_SITE_COMPOSE, _SITE_STATES = ("reserve",), ("reserve", "confirm", "decline")
_SERVER_COMPOSE, _SERVER_STATES = ("trained",), ("trained", "declined")


def _pct(a: float, b: float) -> str:
    return f"{abs(a - b) / b * 100:.1f}%" if b else "n/a"


def _compose_row(row: LedgerEntry, mode: str, prefix: list[Step], composed: set[tuple[str, int]], server: bool,
                 finding: Callable[[str, str, LedgerEntry, str], None]) -> bool:
    """Add a spending row's mechanism to ``prefix``; True if the history can no longer be recomputed."""
    if mode not in MECHANISMS:
        finding(FAIL, "recompute", row, f"unknown mechanism mode {mode!r}: ε cannot be recomputed "
                                        f"(known: {sorted(MECHANISMS)}); later rows are left unchecked")
        return True
    if mode == "none":
        finding(WARN, "no-dp", row, "released WITHOUT differential privacy (mode=none; the site's own file allowed "
                                    "it): ε = ∞ from this round on")
    elif row.noise_multiplier is None or row.sample_rate is None:
        finding(FAIL, "recompute", row, "trained without a logged DP mechanism (no σ or q, and no statement that "
                                        "DP was off): no ε bounds it; later rows are left unchecked")
        return True
    fixed = fixed_sample(row) if mode == "central" else None
    if fixed is not None:
        finding(FAIL, "recompute", row, f"central release with a fixed sample of {fixed[0]} of {fixed[1]} sites: "
                                        "neighbouring federations can swap one site's term for another's "
                                        "(sensitivity 2C), which the accounted ε (sensitivity C) does not cover")
    if server and (row.federation_id, row.round) in composed:  # a replayed round is spent once
        return False
    composed.add((row.federation_id, row.round))
    if row.steps > 0 or mode == "none":
        prefix.append((mode, float(row.noise_multiplier or 0.0), float(row.sample_rate or 1.0), max(1, row.steps)))
    return False


def _judge_row(row: LedgerEntry, prefix: list[Step], server: bool,
               finding: Callable[[str, str, LedgerEntry, str], None]) -> tuple[str, float, float]:
    """(status, PLD ε, RDP ε) of one row that states an ε, with its findings."""
    pld, rdp = cumulative_epsilons(prefix, row.delta)
    verdict, reference = ("no-dp", pld) if math.isinf(pld) and math.isinf(row.epsilon) else judge_reported(
        row.epsilon, pld, prefix, row.delta)
    status = {"uncertain": "within-grid"}.get(verdict, verdict)
    if verdict == "under-reported":
        finding(FAIL, "recompute", row,
                f"UNDER-REPORTED: reported ε={row.epsilon:.4f} ({row.accountant or '?'}) is below dp-accounting's "
                f"optimistic PLD ε={reference:.4f} (a lower bound of the true ε) at δ={row.delta:g} over "
                f"{len(prefix)} logged mechanism(s)")
    elif verdict == "uncertain":
        finding(WARN, "recompute", row,
                f"reported ε={row.epsilon:.4f} is below dp-accounting's pessimistic PLD ε={reference:.4f} on the "
                f"fine grid but not below its optimistic value: the grid cannot tell whether it is under-reported")
    if math.isinf(pld):
        return status, pld, rdp
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
    return status, pld, rdp


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
            broken = _compose_row(row, mode, prefix, composed, server, finding)
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
        status, pld, rdp = _judge_row(row, prefix, server, finding)
        unbounded = math.isinf(pld)  # after a release without DP: stated, not a budget excess
        budget = rr.budget
        if budget is not None and not unbounded and (row.epsilon > budget * (1 + 1e-9)
                                                      or pld > budget * (1 + BUDGET_RTOL)):
            status = "over-budget"
            audit.ever_exceeded = True
            finding(FAIL, "budget", row, f"BUDGET EXCEEDED: ε={row.epsilon:.4f} reported, {pld:.4f} by PLD, "
                                         f"lifetime budget {budget:g}")
        audit.rows.append(_with(rr, pld_epsilon=pld, rdp_epsilon=rdp, status=status))
    _summarise(audit, rows, prefix, states)
    audit.released_without_dp = any(step[0] == "none" for step in prefix)
    copies = [(statement_copies(r.reason), r) for r in rows if r.event in compose]
    k, row = max(copies, key=lambda c: c[0], default=(1, None))
    if k > 1 and row is not None:  # the site's own file allowed copies (duplicate-records = "allow")
        finding(WARN, "group-privacy", row, f"the site's file allows training records that are copies of one another "
                                            f"(duplicate-records = allow), up to {k} of one record: a person with {k} "
                                            f"records is protected as a group of {k} (for (ε, δ)-DP about {k}ε), "
                                            "not by the ε stated")
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
